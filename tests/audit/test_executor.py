"""The executors: in-process, a local process pool, Ray (on a local cluster the module starts).

Every executor gives the units' results in the units' order, sends ``shared`` once, turns a
unit's exception into a :class:`UnitFailed` with ``errors="return"``, and reruns a unit whose
worker died (bounded). The fault units live in ``_faults`` (importable by workers by name).
"""

from __future__ import annotations

import operator
import sys
from pathlib import Path

import pytest

from bastion.audit.executor import (
    InProcessExecutor,
    ProcessPoolExecutor,
    UnitFailed,
    WorkerDied,
    make_executor,
)
from bastion.errors import ConfigurationError

HERE = Path(__file__).parent


@pytest.fixture
def faults(monkeypatch):
    monkeypatch.syspath_prepend(str(HERE))  # spawned workers inherit sys.path
    import _faults

    return _faults


def test_make_executor_parses_every_spelling_and_refuses_others() -> None:
    assert make_executor("in-process").name == "in-process"
    assert make_executor("processes:3").name == "process-pool[3]"
    assert make_executor("processes").name.startswith("process-pool[")
    for bad in ("threads", "processes:0", "processes:x", "ray://nohost", "ray:/h:1"):
        with pytest.raises(ConfigurationError):
            make_executor(bad)


def test_without_ray_the_ray_executor_says_what_to_install(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(ConfigurationError, match=r"pip install 'bastion-ml\[ray\]'"):
        make_executor("ray")
    assert make_executor("processes:2").name == "process-pool[2]"  # the others still work


def test_in_process_map_keeps_order_passes_shared_and_reports_failures() -> None:
    ex = InProcessExecutor()
    seen: list[int] = []
    assert ex.map(operator.mul, [1, 2, 3], shared=10, on_result=lambda i, r: seen.append(i)
                  ) == [10, 20, 30]
    assert seen == [0, 1, 2]
    out = ex.map(int, ["4", "x", "6"], errors="return")
    assert out[0] == 4 and out[2] == 6
    assert out[1] == UnitFailed(1, "ValueError: invalid literal for int() with base 10: 'x'", 1)
    with pytest.raises(ValueError, match="invalid literal"):
        ex.map(int, ["x"])


def test_process_pool_matches_in_process_and_retries_a_dead_worker(faults, tmp_path) -> None:
    ex = ProcessPoolExecutor(2, max_retries=1)
    marker = str(tmp_path / "died")
    got: dict[int, int] = {}
    out = ex.map(faults.square_or_die_once, [0, 1, 2, 3], shared=marker,
                 on_result=lambda i, r: got.setdefault(i, r))
    assert out == [0, 1, 4, 9]
    assert Path(marker).exists()  # unit 1 did kill its worker once
    assert got == {0: 0, 1: 1, 2: 4, 3: 9}
    failed = ex.map(faults.square_or_always_die, [0, 1, 2], errors="return")
    assert failed[0] == 0 and failed[2] == 4
    assert isinstance(failed[1], UnitFailed) and failed[1].attempts == 2
    assert failed[1].cause.startswith("worker died")
    with pytest.raises(WorkerDied):
        ProcessPoolExecutor(2, max_retries=0).map(faults.square_or_always_die, [1])
    bad = ex.map(int, ["1", "y"], errors="return")
    assert bad[0] == 1 and isinstance(bad[1], UnitFailed) and bad[1].cause.startswith(
        "ValueError")


def _stable(doc) -> list[dict]:
    """The checks without their timings (the part two executors must agree on)."""
    return [{k: v for k, v in c.items() if k != "seconds"} for c in doc["checks"]]


FAST = {"evasion": {"max_samples": 48, "steps": 5, "max_queries": 30, "curve_points": 3}}


def _audit(files, out, executor, **changes):
    from bastion.audit.config import AuditConfig, AuditThreat
    from bastion.audit.runner import run_audit

    config = AuditConfig(model=str(files["model"]), train=files["train"], test=files["test"],
                         out=out, threat=AuditThreat(eps=0.1), settings=FAST,
                         only=("artifact", "data", "evasion", "membership"))
    return run_audit(config.with_overrides(**changes), executor=executor, formats=("json",))


def test_an_audit_on_a_process_pool_gives_the_in_process_report(audit_files, tmp_path) -> None:
    # the model is TorchScript (not picklable): workers reload it from its shipped bytes
    ref = _audit(audit_files, tmp_path / "ref", InProcessExecutor()).document
    pool = _audit(audit_files, tmp_path / "pool", ProcessPoolExecutor(2)).document
    assert pool["environment"]["executor"] == "process-pool[2]"
    assert [c["status"] for c in ref["checks"]].count("not_run") == 3
    assert _stable(pool) == _stable(ref)
    # results were saved by the driver as they arrived: a rerun reuses every one of them
    again = _audit(audit_files, tmp_path / "pool", ProcessPoolExecutor(2))
    assert set(again.reused) == {"artifact", "data", "evasion", "membership"}


def test_the_cli_refuses_a_bad_executor_and_says_what_to_install_for_ray(
        audit_files, tmp_path, monkeypatch) -> None:
    from typer.testing import CliRunner

    from bastion.cli.main import app

    def run(*extra: str):
        return CliRunner().invoke(app, ["audit", "--model", str(audit_files["model"]), "--test",
                                        str(audit_files["test"]), "--out", str(tmp_path), "-q",
                                        *extra])

    bad = run("--executor", "threads")
    assert bad.exit_code == 2 and "unknown executor 'threads'" in bad.output
    assert "Traceback" not in bad.output
    gpus = run("--executor", "processes:2", "--gpus-per-task", "1")
    assert gpus.exit_code == 2 and "--gpus-per-task needs --executor ray" in gpus.output
    monkeypatch.setitem(sys.modules, "ray", None)
    no_ray = run("--executor", "ray")
    assert no_ray.exit_code == 2 and "pip install 'bastion-ml[ray]'" in no_ray.output
    assert not (tmp_path / "report.json").exists()
