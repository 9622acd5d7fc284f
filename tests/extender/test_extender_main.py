"""``flexnpu extender``: --help, and bad settings exit non-zero with one line naming the problem."""

from __future__ import annotations

import asyncio

import pytest

from flexnpu.extender import main as extender_main
from flexnpu.extender.main import main
from flexnpu.extender.settings import ExtenderSettings, parse_listen
from flexnpu.settings import load_settings


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "--node-cache-capable" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--policy", "worstfit"], "policy='worstfit'"),
        (["--listen", "8888"], "listen='8888'"),
        (["--max-body-bytes", "lots"], "--max-body-bytes"),
        (["--units-per-card", "0"], "units_per_card"),
        (["--node-cache-capable", "maybe"], "--node-cache-capable"),
        (["--api-server", ""], "KUBERNETES_SERVICE_HOST"),
    ],
)
def test_bad_settings_exit_with_one_line(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err


def test_settings_from_environment_and_file(tmp_path: pytest.TempPathFactory) -> None:
    path = tmp_path / "extender.yaml"  # type: ignore[operator]
    path.write_text("policy: spread\nlease-name: from-file\n")
    settings = load_settings(
        ExtenderSettings,
        flags={"policy": "binpack"},
        env={"FLEXNPU_EXTENDER_NAMESPACE": "ops"},
        file=path,
        env_prefix="FLEXNPU_EXTENDER_",
    )
    assert (settings.policy, settings.lease_name, settings.namespace) == ("binpack", "from-file", "ops")
    assert parse_listen("[::]:9000") == ("::", 9000)


async def test_the_heap_is_frozen_only_once_the_caches_synced(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def freeze() -> int:
        calls.append("freeze")
        return 1

    monkeypatch.setattr(extender_main, "freeze_startup_heap", freeze)
    synced = asyncio.Event()
    task = asyncio.create_task(extender_main._freeze_when_synced(synced))
    await asyncio.sleep(0)
    assert calls == [] and not task.done()
    synced.set()
    await asyncio.wait_for(task, 5)
    assert calls == ["freeze"]
