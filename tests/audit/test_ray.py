"""Audits on Ray: a two-node cluster on loopback that this module starts once (a head with one
CPU and a second node with one CPU and the custom resource ``node2``, so work can be pinned to
the second node), shared by every test here and stopped at the end.

The same report as in-process (bit-identical metrics for a fixed seed); a worker killed mid-
audit is retried and the report is complete; a check whose worker always dies is an ``error``
with the cause while the rest finish; results are saved on the driver, so a rerun resumes.
"""

from __future__ import annotations

import operator
from pathlib import Path

import pytest
import ray  # the dev extra installs it: pip install -e '.[dev]'

from bastion.audit.config import AuditConfig, AuditThreat
from bastion.audit.contract import CATALOGUE
from bastion.audit.document import validate_document
from bastion.audit.executor import InProcessExecutor, RayExecutor, UnitFailed
from bastion.audit.runner import run_audit

HERE = Path(__file__).parent
FAST = {"evasion": {"max_samples": 48, "steps": 5, "max_queries": 30, "curve_points": 3}}


@pytest.fixture(scope="module")
def cluster(ray_cluster):
    """The session's two-node cluster (``ray_cluster``, tests/audit/conftest.py), with the
    fault checks in the catalogue while this module runs."""
    import _faults

    for cls in _faults.FAULT_CHECKS:
        CATALOGUE[cls.name] = cls
    try:
        yield ray_cluster
    finally:
        for cls in _faults.FAULT_CHECKS:
            CATALOGUE.pop(cls.name, None)


def _stable(doc) -> list[dict]:
    return [{k: v for k, v in c.items() if k != "seconds"} for c in doc["checks"]]


def _checks(doc) -> dict[str, dict]:
    return {c["name"]: c for c in doc["checks"]}


def _config(files, out, **changes) -> AuditConfig:
    base = AuditConfig(model=str(files["model"]), train=files["train"], test=files["test"],
                       out=out, threat=AuditThreat(eps=0.1), settings=FAST)
    return base.with_overrides(**changes)


def test_ray_map_keeps_order_sends_shared_once_and_bounds_retries(cluster, tmp_path) -> None:
    import _faults

    ex = RayExecutor(max_retries=1)
    assert ex.map(operator.mul, [1, 2, 3], shared=7) == [7, 14, 21]
    assert ex.name == "ray[2]"
    marker = str(tmp_path / "died")
    assert ex.map(_faults.square_or_die_once, [0, 1, 2], shared=marker) == [0, 1, 4]
    assert Path(marker).exists()  # unit 1 killed its worker once and was retried
    out = ex.map(_faults.square_or_always_die, [0, 1, 2], errors="return")
    assert out[0] == 0 and out[2] == 4
    assert isinstance(out[1], UnitFailed) and out[1].attempts == 2
    assert out[1].cause.startswith("worker died")
    bad = ex.map(int, ["1", "x"], errors="return")  # an exception is not retried
    assert bad[1] == UnitFailed(1, "ValueError: invalid literal for int() with base 10: 'x'", 1)
    with pytest.raises(ValueError, match="invalid literal"):
        ex.map(int, ["x"])


def test_an_audit_on_ray_gives_the_in_process_report(cluster, audit_files, tmp_path) -> None:
    only = ("artifact", "data", "evasion", "membership")
    ref = run_audit(_config(audit_files, tmp_path / "ref", only=only), formats=("json",),
                    executor=InProcessExecutor()).document
    doc = run_audit(_config(audit_files, tmp_path / "ray", only=only), formats=("json",),
                    executor=RayExecutor()).document
    assert doc["environment"]["executor"] == "ray[2]"
    assert _stable(doc) == _stable(ref)


def test_a_worker_killed_on_the_second_node_is_retried_and_the_report_is_complete(
        cluster, audit_files, tmp_path) -> None:
    node2 = next(n["NodeID"] for n in ray.nodes() if n["Alive"] and "node2" in n["Resources"])
    marker = tmp_path / "killed"
    config = _config(audit_files, tmp_path / "out",
                     settings={"kill-once": {"marker": str(marker)}})
    doc = run_audit(config, checks=("artifact", "data", "kill-once"), formats=("json",),
                    executor=RayExecutor(resources={"node2": 0.5})).document
    validate_document(doc)
    checks = _checks(doc)
    assert marker.exists()  # the first attempt did kill its worker
    assert checks["kill-once"]["status"] == "passed"
    assert checks["kill-once"]["summary"] == f"survived on node {node2}"
    assert checks["data"]["status"] == "passed" and checks["artifact"]["status"] == "passed"


def test_a_check_whose_worker_always_dies_is_an_error_and_a_rerun_resumes(
        cluster, audit_files, tmp_path) -> None:
    out = tmp_path / "out"
    outcome = run_audit(_config(audit_files, out, settings={}), checks=("data", "always-dies"),
                        formats=("json",), executor=RayExecutor(max_retries=1))
    checks = _checks(outcome.document)
    assert checks["always-dies"]["status"] == "error"
    assert checks["always-dies"]["reason"].startswith("its task failed after 2 attempt(s): "
                                                      "worker died")
    assert checks["data"]["status"] == "passed"
    # the driver saved what finished: a rerun reuses it and never saves the error
    assert [p.name.split("-")[0] for p in (out / "checks").glob("*.json")] == ["data"]
    again = run_audit(_config(audit_files, out, settings={}), checks=("data",), formats=("json",),
                      executor=RayExecutor())
    assert again.reused == ("data",)
