"""Fixtures of the native tests: one build of libflexnpu and the fakes per session, a fresh pod per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from native_helpers import Pod, build, make_pod, missing_toolchain


@pytest.fixture(scope="session")
def native_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    reason = missing_toolchain()
    if reason:
        pytest.skip(reason)
    out = tmp_path_factory.mktemp("native-build")
    build(out, "all", "fakes")
    return out


@pytest.fixture
def pod(tmp_path: Path, native_build: Path) -> Iterator[Pod]:
    p = make_pod(tmp_path, native_build)
    yield p
    p.close()


@pytest.fixture
def pod_without_daemon(tmp_path: Path, native_build: Path) -> Iterator[Pod]:
    p = make_pod(tmp_path, native_build, with_daemon=False)
    yield p
    p.close()
