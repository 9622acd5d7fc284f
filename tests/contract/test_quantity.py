"""Quantities as the API server writes them: every component reads extended resources through whole_quantity."""

from __future__ import annotations

import pytest

from flexnpu.errors import ValidationError
from flexnpu.quantity import whole_quantity


@pytest.mark.parametrize(
    ("raw", "value"),
    [(3, 3), ("3", "3"), ("2000", 2000), ("2k", 2000), ("16Ki", 16384), ("1e3", 1000), ("+7", 7), ("0", 0)],
)
def test_whole_quantities_in_every_canonical_form(raw: object, value: object) -> None:
    assert whole_quantity(raw, "huawei.com/vnpu-memory") == int(str(value))


@pytest.mark.parametrize("raw", ["1500m", "0.5", "-1", "abc", "", "1e400", float("nan"), True, None, [], "9" * 80])
def test_not_a_whole_quantity_names_the_field(raw: object) -> None:
    with pytest.raises(ValidationError) as caught:
        whole_quantity(raw, "huawei.com/vnpu")
    assert "huawei.com/vnpu" in str(caught.value)


def test_past_the_limit_is_refused() -> None:
    assert whole_quantity("1k", "x", limit=1000) == 1000
    with pytest.raises(ValidationError, match="at most 1000"):
        whole_quantity("1001", "x", limit=1000)
