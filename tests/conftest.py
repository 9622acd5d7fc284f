"""Project-wide test options: end-to-end tests against a real cluster are opt-in."""

from __future__ import annotations

import os

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--e2e",
        action="store_true",
        default=False,
        help="run tests marked e2e (they need FLEXNPU_E2E_KUBECONFIG pointing at a real cluster)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--e2e") or os.environ.get("FLEXNPU_E2E_KUBECONFIG"):
        return
    skip = pytest.mark.skip(reason="e2e: pass --e2e and set FLEXNPU_E2E_KUBECONFIG")
    for item in items:
        if "e2e" in item.keywords:
            item.add_marker(skip)
