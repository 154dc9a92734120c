"""A re-audit campaign: every due version of a small registry, each audit a unit of work."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from bastion.artifacts.registry import Registry
from bastion.audit.campaign import given_models, registry_due, run_campaign
from bastion.audit.config import AuditConfig
from bastion.audit.executor import InProcessExecutor, RayExecutor
from bastion.errors import ConfigurationError, InputError
from bastion.models.zoo import small_mlp

SETTINGS = {"evasion": {"max_samples": 16, "steps": 3, "max_queries": 20, "curve_points": 2}}


@pytest.fixture()
def registry(audit_files, tmp_path, monkeypatch):
    """A local registry holding two demo-size models, neither audited yet."""
    other = tmp_path / "other.pt"
    torch.manual_seed(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.trace(small_mlp(64, 10), torch.rand(2, 1, 8, 8)).save(str(other))
    meta, blobs = f"sqlite:///{tmp_path / 'reg.db'}", (tmp_path / "blobs").as_uri()
    with Registry(meta, blobs, actor="alice") as reg:
        reg.push("digits", audit_files["model"])
        reg.push("untrained", other)
    monkeypatch.setenv("BASTION_REGISTRY_METADATA_URL", meta)
    monkeypatch.setenv("BASTION_REGISTRY_STORAGE_URL", blobs)
    monkeypatch.setenv("BASTION_ACTOR", "alice")
    return AuditConfig(test=audit_files["test"], settings=SETTINGS, only=("artifact", "evasion"))


def _metrics(path):
    doc = json.loads(path.read_text())
    return {c["name"]: c["metrics"] for c in doc["checks"]}


def test_every_due_version_is_audited_on_ray_workers_and_a_rerun_resumes(
    registry, tmp_path, ray_cluster
) -> None:
    items = registry_due()
    assert [(i.source, i.folder) for i in items] == [
        ("registry://digits@1", "digits-v1"),
        ("registry://untrained@1", "untrained-v1"),
    ]
    out = tmp_path / "campaign"
    first = run_campaign(registry, items, out=out, executor=RayExecutor())
    assert [r.status for r in first.rows] == ["audited", "audited"]
    assert all((out / i.folder / "report.json").exists() for i in items)
    summary = json.loads((out / "campaign.json").read_text())
    assert summary["counts"] == {"models": 2, "audited": 2, "reused": 0, "error": 0}
    assert [m["verdict"] for m in summary["models"]] == [r.verdict for r in first.rows]
    table = (out / "campaign.md").read_text()
    assert "| model | version | verdict | findings | report |" in table
    assert "| digits | 1 |" in table and str(out / "digits-v1" / "report.json") in table
    # the untrained model is far less accurate than the trained one
    clean = [
        _metrics(out / i.folder / "report.json")["evasion"]["clean_accuracy"]["value"]
        for i in items
    ]
    assert clean[0] > clean[1] + 0.3

    # an interrupted campaign: one audit's report is missing; the rerun does only that one,
    # in-process, and gets the metrics the worker got
    before = _metrics(out / "untrained-v1" / "report.json")
    (out / "untrained-v1" / "report.json").unlink()
    second = run_campaign(registry, items, out=out, executor=InProcessExecutor())
    assert [r.status for r in second.rows] == ["reused", "audited"]
    assert _metrics(out / "untrained-v1" / "report.json") == before


def test_a_model_that_cannot_be_audited_is_an_error_row_and_the_rest_finish(
    registry, audit_files, tmp_path
) -> None:
    items = given_models([str(audit_files["model"]), str(tmp_path / "missing.pt")])
    campaign = run_campaign(registry, items, out=tmp_path / "c")
    assert [r.status for r in campaign.rows] == ["audited", "error"]
    assert "missing.pt" in (campaign.rows[1].error or "")
    assert "error" in (tmp_path / "c" / "campaign.md").read_text()


def test_given_models_get_distinct_folders_and_an_empty_campaign_is_refused(tmp_path) -> None:
    items = given_models(["a/model.pt", "b/model.pt", "registry://x@prod"])
    assert [i.folder for i in items] == ["model", "model-2", "x-prod"]
    with pytest.raises(InputError, match="no models"):
        run_campaign(AuditConfig(), [], out=tmp_path)


def test_registry_due_without_a_registry_says_what_to_set(monkeypatch) -> None:
    for var in ("BASTION_REGISTRY_URL", "BASTION_REGISTRY_METADATA_URL"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ConfigurationError, match="BASTION_REGISTRY_URL"):
        registry_due()


def test_audit_registry_due_on_the_command_line(registry, tmp_path) -> None:
    from typer.testing import CliRunner

    from bastion.cli.main import app

    out = tmp_path / "cli-campaign"
    args = [
        "audit",
        "--registry-due",
        "--test",
        str(registry.test),
        "--checks",
        "artifact,evasion",
        "--out",
        str(out),
        "--format",
        "json",
        "-q",
    ]
    config = tmp_path / "audit.yaml"
    config.write_text(
        "checks:\n  evasion: {max_samples: 16, steps: 3, max_queries: 20, curve_points: 2}\n"
    )
    result = CliRunner().invoke(app, [*args, "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "Re-audit campaign" in result.output and "digits" in result.output
    summary = json.loads((out / "campaign.json").read_text())
    assert [m["status"] for m in summary["models"]] == ["audited", "audited"]
    again = CliRunner().invoke(app, [*args, "--config", str(config)])
    assert again.exit_code == 0 and again.output.count("reused") == 2
    both = CliRunner().invoke(app, [*args, "--model", "x.pt"])
    assert both.exit_code == 2 and "not both" in both.output
