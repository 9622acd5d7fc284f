"""The slot file name of the contract (flexnpu.names.slot_file) is the one flexnpud creates (shim.grant.shm)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from flexnpu import names
from flexnpu.shim.grant import shm


@given(
    st.one_of(
        st.text(max_size=200, alphabet=st.characters(exclude_categories=())),
        st.from_regex(r"[A-Za-z0-9._-]{1,140}", fullmatch=True),
    )
)
def test_slot_file_names_agree_with_the_daemons(flexnpu_id: str) -> None:
    assert names.slot_file(flexnpu_id) == shm.slot_name(flexnpu_id)


def test_unsafe_ids_are_hashed_and_safe_ones_kept() -> None:
    assert names.slot_file("dra.uid-1.npu.2") == "slot-dra.uid-1.npu.2.shm"
    for hostile in ("", ".hidden", "\ud800", "\udcff", "../../etc/passwd", "a/b", "x" * 129, "caf\u00e9"):
        name = names.slot_file(hostile)
        assert name.startswith("slot-h") and len(name) == len("slot-h") + 16 + len(".shm"), (hostile, name)
