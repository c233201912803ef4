"""``segloop serve`` flags -> `ServerSettings` (the server itself is tested in tests/integration)."""

from __future__ import annotations

from pathlib import Path

import pytest

from segloop.cli import build_parser
from segloop.cli.common import CommandError
from segloop.cli.serve_command import settings_from_args
from segloop.server import ServerSettings


def settings(*argv: str) -> ServerSettings:
    return settings_from_args(build_parser().parse_args(["serve", *argv]))


def test_job_priority_and_score_passes_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SEGLOOP_JOB_IDLE_CLASS", raising=False)
    monkeypatch.delenv("SEGLOOP_SCORE_SYNC_PASSES", raising=False)
    default = settings("--data", str(tmp_path))
    assert default.job_idle_class is True and default.score_sync_passes == 16
    s = settings("--data", str(tmp_path), "--job-priority", "nice", "--score-sync-passes", "0")
    assert s.job_idle_class is False and s.score_sync_passes == 0
    assert settings("--data", str(tmp_path), "--job-priority", "idle").job_idle_class is True


def test_flags_override_environment_and_unset_flags_keep_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEGLOOP_JOB_IDLE_CLASS", "0")
    monkeypatch.setenv("SEGLOOP_SCORE_SYNC_PASSES", "3")
    from_env = settings("--data", str(tmp_path))
    assert from_env.job_idle_class is False and from_env.score_sync_passes == 3
    flags = settings("--data", str(tmp_path), "--job-priority", "idle", "--score-sync-passes", "5")
    assert flags.job_idle_class is True and flags.score_sync_passes == 5


def test_bad_values_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--data", str(tmp_path), "--job-priority", "realtime"])
    assert "invalid choice" in capsys.readouterr().err
    with pytest.raises(CommandError, match="need --dicomweb"):
        settings("--data", str(tmp_path), "--dicomweb-filter", "modality=CT")
    from segloop.server import SettingsError

    with pytest.raises(SettingsError, match="score_sync_passes"):
        settings("--data", str(tmp_path), "--score-sync-passes", "-1").resolve()


def test_inference_nice_flag_environment_and_range(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from segloop.server import SettingsError

    monkeypatch.delenv("SEGLOOP_INFERENCE_NICE", raising=False)
    assert settings("--data", str(tmp_path)).inference_nice == 5
    assert settings("--data", str(tmp_path), "--inference-nice", "0").inference_nice == 0
    monkeypatch.setenv("SEGLOOP_INFERENCE_NICE", "5")
    assert settings("--data", str(tmp_path)).inference_nice == 5
    assert settings("--data", str(tmp_path), "--inference-nice", "3").inference_nice == 3
    with pytest.raises(SettingsError, match="inference nice"):
        settings("--data", str(tmp_path), "--inference-nice", "20").resolve()
    with pytest.raises(SettingsError, match="inference threads"):
        settings("--data", str(tmp_path), "--inference-threads", "0").resolve()


def test_passive_openmp_is_preferred_unless_the_user_chose() -> None:
    from segloop.openmp import prefer_passive_openmp

    env: dict[str, str] = {"PATH": "/bin"}
    assert prefer_passive_openmp(env) is True and env["OMP_WAIT_POLICY"] == "PASSIVE"
    for chosen in ({"OMP_WAIT_POLICY": "ACTIVE"}, {"GOMP_SPINCOUNT": "300000"}):
        env = dict(chosen)
        assert prefer_passive_openmp(env) is False and env == chosen  # left as the user set it


def test_every_command_sets_the_policy_before_torch_loads(tmp_path: Path) -> None:
    """Not only serve: train, emulate, select... spin-wait 5x slower on shared cores otherwise."""
    import os
    import subprocess
    import sys

    code = ("import os, sys; from segloop.cli import main; main(['emulate', '--out', sys.argv[1]]); "
            "print(os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "o")], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["PASSIVE", "False"]  # set, and torch not yet loaded when it was
    env["OMP_WAIT_POLICY"] = "ACTIVE"
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "o")], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split()[0] == "ACTIVE"


def test_inference_pool_threads_run_at_the_configured_nice() -> None:
    import os
    import threading

    from segloop.server.workers import WorkerPool

    if not hasattr(os, "getpriority"):
        pytest.skip("no per-thread priorities here")

    def nice_of_this_thread() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    base = nice_of_this_thread()
    for nice in (0, 7):
        pool = WorkerPool(1, 0, nice=nice)
        try:
            assert pool.submit(nice_of_this_thread).result() == max(base, nice)
        finally:
            pool.shutdown()


def test_no_mirror_flag(tmp_path: Path) -> None:
    assert settings("--data", str(tmp_path)).mirror is True
    assert settings("--data", str(tmp_path), "--no-mirror").mirror is False
