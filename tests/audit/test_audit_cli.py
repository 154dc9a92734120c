"""``bastion audit`` and ``bastion report render``, invoked in-process."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from bastion.audit.document import load_document
from bastion.cli.main import app

runner = CliRunner()
FAST = ["--eps", "0.2", "--checks", "artifact,evasion"]


@pytest.fixture()
def fast_config(tmp_path):
    cfg = tmp_path / "audit.yaml"
    cfg.write_text("checks:\n  evasion: {max_samples: 32, steps: 5, max_queries: 20, "
                   "curve_points: 2}\n")
    return cfg


def _run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_audit_writes_a_valid_report_and_fail_on_gates(audit_files, tmp_path, fast_config
                                                        ) -> None:
    out = tmp_path / "audit"
    args = ["audit", "--model", audit_files["model"], "--test", audit_files["test"],
            "--out", out, "--config", fast_config, "-q", "--format", "json", *FAST]
    result = _run(*args)
    assert result.exit_code == 0, result.output
    assert "Scorecard" in result.output and "data" in result.output
    doc = load_document(out / "report.json")
    checks = {c["name"]: c for c in doc["checks"]}
    assert checks["data"]["status"] == "not_run"
    assert checks["evasion"]["status"] == "failed"  # eps 0.2 breaks the digits MLP
    result = _run(*args, "--fail-on", "medium")
    assert result.exit_code == 1
    assert "at or above --fail-on medium" in result.output
    assert "reused saved results of artifact, evasion" in result.output
    assert f"replaced the earlier {out / 'report.json'}" in result.output.replace("\n", "")
    result = _run(*args, "--fail-on", "critical")
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    ("extra", "yaml", "message"),
    [
        ([], "threat:\n  acess: scores\n", "unknown key 'acess' in threat"),
        ([], "colour: red\n", "unknown key 'colour'"),
        ([], "checks:\n  evasion: {max_sample: 3}\n", "unknown setting 'max_sample'"),
        ([], "checks:\n  evasoin: {}\n", "unknown check 'evasoin'"),
        (["--access", "root"], "", "access must be white-box, scores or labels"),
        (["--fail-on", "severe"], "", "--fail-on 'severe': use a severity"),
        (["--checks", "nope"], "", "unknown check 'nope'"),
    ],
)
def test_bad_configuration_is_refused_with_exit_2(audit_files, tmp_path, extra, yaml, message
                                                  ) -> None:
    cfg = tmp_path / "audit.yaml"
    cfg.write_text(yaml or "{}\n")
    result = _run("audit", "--model", audit_files["model"], "--test", audit_files["test"],
                  "--out", tmp_path / "out", "--config", cfg, "-q", *extra)
    assert result.exit_code == 2, result.output
    assert message in result.output.replace("\n", " ")
    assert "Traceback" not in result.output
    assert not (tmp_path / "out" / "report.json").exists()


def test_config_file_alone_runs_the_audit(audit_files, tmp_path) -> None:
    cfg = tmp_path / "audit.yaml"
    cfg.write_text(
        f"model: {audit_files['model']}\ntest: {audit_files['test']}\nout: run\nseed: 3\n"
        "threat: {norm: l2, eps: 0.5, access: scores, query_budget: 2000}\n"
        "checks:\n  only: [evasion]\n  evasion: {max_samples: 16, max_queries: 20, "
        "curve_points: 2}\n")
    result = _run("audit", "--config", cfg, "-q", "--format", "json")
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "run" / "report.json").read_text())
    assert doc["seed"] == 3
    assert doc["threat_model"]["access"] == "scores" and doc["threat_model"]["norm"] == "l2"
    ev = next(c for c in doc["checks"] if c["name"] == "evasion")
    assert ev["settings"]["attacks"] == ["square"]  # score access: a score-based attack


def test_report_render_rerenders_and_never_overwrites_silently(audit_files, tmp_path,
                                                               fast_config) -> None:
    out = tmp_path / "audit"
    assert _run("audit", "--model", audit_files["model"], "--test", audit_files["test"],
                "--out", out, "--config", fast_config, "-q", "--format", "json",
                *FAST).exit_code == 0
    target = tmp_path / "again.json"
    result = _run("report", "render", out / "report.json", "--format", "json", "--out", target)
    assert result.exit_code == 0, result.output
    assert json.loads(target.read_text())["checks"] == load_document(out / "report.json")[
        "checks"]
    result = _run("report", "render", out / "report.json", "--format", "json", "--out", target)
    assert result.exit_code == 2 and "--force" in result.output
    (tmp_path / "bad.json").write_text('{"schema": "bastion.audit/1"}')
    result = _run("report", "render", tmp_path / "bad.json", "--format", "json")
    assert result.exit_code == 2 and "not a valid bastion.audit/1 document" in result.output
