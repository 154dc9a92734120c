"""``bastion audit --baseline/--suppressions/--sign-key/--format`` and the example CI workflow,
whose ``bastion`` commands are run here in order, as the workflow runs them."""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from bastion.audit.document import load_document
from bastion.cli.main import app

runner = CliRunner()
WORKFLOW = Path(__file__).resolve().parents[2] / "examples" / "bastion-audit-ci.yml"
FAST_CONFIG = (
    "threat:\n  eps: 0.2\n"
    "checks:\n  evasion: {max_samples: 32, steps: 5, max_queries: 20, curve_points: 2}\n"
)


def _run(*args: object) -> object:
    return runner.invoke(app, [str(a) for a in args])


def _workflow_commands() -> tuple[dict[str, str], list[str]]:
    wf = yaml.safe_load(WORKFLOW.read_text())
    env = {k: str(v) for k, v in wf["env"].items()}
    runs = [s["run"] for s in wf["jobs"]["audit"]["steps"] if "run" in s]
    return env, [r for r in runs if r.startswith("bastion ")]


def test_the_example_workflow_commands_run_in_order(audit_files: dict[str, Path],
                                                    tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    env, commands = _workflow_commands()
    assert [c.split()[1] for c in commands] == ["audit", "report"]
    monkeypatch.chdir(tmp_path)
    Path(env["CONFIG"]).write_text(FAST_CONFIG)
    for name, role in (("MODEL", "model"), ("TRAIN", "train"), ("TEST", "test")):
        Path(env[name]).parent.mkdir(parents=True, exist_ok=True)
        Path(env[name]).write_bytes(audit_files[role].read_bytes())
    # the last release's audit, committed as the baseline
    base = Path(env["BASELINE"]).parent
    first = _run("audit", "--config", env["CONFIG"], "--model", env["MODEL"], "--test",
                 env["TEST"], "--out", base, "-q", "--format", "json",
                 "--checks", "artifact,evasion")
    assert first.exit_code == 0, first.output
    Path("bastion-suppressions.yaml").write_text("[]\n")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    for command in commands:
        argv = [os.path.expandvars(a) for a in shlex.split(command)][1:]
        result = runner.invoke(app, [*argv, "-q"] if argv[0] == "audit" else argv)
        # the audit may fail the job only on NEW high findings; the diff step always runs
        assert result.exit_code in (0, 1), result.output
        if argv[0] == "audit":
            audit_result = result
    out = Path("audit")
    assert {p.name for p in out.iterdir()} >= {
        "report.json", "report.sarif", "report.junit.xml", "report.cdx.json", "diff.md"
    }
    doc = load_document(out / "report.json")
    new = doc["baseline"]["summary"]["new"]
    new_high = [f for c in doc["checks"] for f in c["findings"]
                if f["severity"] in ("high", "critical")
                and f["fingerprint"] not in {g["fingerprint"] for c2 in
                                             load_document(base / "report.json")["checks"]
                                             for g in c2["findings"]}]
    assert audit_result.exit_code == (1 if new_high else 0), audit_result.output
    assert new >= len(new_high)
    assert "what changed" in (out / "diff.md").read_text()


def test_audit_with_baseline_suppressions_and_signature(audit_files: dict[str, Path],
                                                        tmp_path: Path) -> None:
    from bastion.artifacts.signing import generate_keypair

    cfg = tmp_path / "audit.yaml"
    cfg.write_text(FAST_CONFIG)
    common = ["audit", "--model", audit_files["model"], "--test", audit_files["test"],
              "--config", cfg, "-q", "--checks", "artifact,evasion"]
    first = _run(*common, "--out", tmp_path / "a1", "--format", "json")
    assert first.exit_code == 0, first.output
    doc1 = load_document(tmp_path / "a1" / "report.json")
    ev = [f for c in doc1["checks"] for f in c["findings"] if c["name"] == "evasion"]
    assert ev, "eps 0.2 must break the digits MLP"
    # the same findings again: nothing new, so new:high passes while high fails
    sup = tmp_path / "sup.yaml"
    sup.write_text(
        f"- fingerprint: {ev[0]['fingerprint']}\n  reason: accepted for the demo\n"
        "  owner: alice\n  expires: 2999-01-01\n"
        "- fingerprint: 0123456789abcdef\n  reason: old\n  owner: bob\n  expires: 2999-01-01\n"
    )
    priv, pub = generate_keypair("ed25519", tmp_path / "k", tmp_path / "k.pub")
    second = _run(*common, "--out", tmp_path / "a2", "--baseline", tmp_path / "a1",
                  "--suppressions", sup, "--sign-key", priv, "--fail-on", "new:high",
                  "--format", "json,sarif")
    assert second.exit_code == 0, second.output
    said = " ".join(second.output.split())  # the console folds long lines
    assert "1 applied, 0 expired, 1 stale" in said
    assert "0 new" in said and "signed the report" in said
    doc2 = load_document(tmp_path / "a2" / "report.json")
    marked = [f for c in doc2["checks"] for f in c["findings"] if f.get("suppressed")]
    assert [f["fingerprint"] for f in marked] == [ev[0]["fingerprint"]]
    sarif = json.loads((tmp_path / "a2" / "report.sarif").read_text())
    assert any(r.get("suppressions") for r in sarif["runs"][0]["results"])
    ok = _run("verify-audit", tmp_path / "a2", "--model", audit_files["model"], "--key", pub)
    assert ok.exit_code == 0, ok.output
    # without the baseline, new:high is refused with the reason; a bad suppressions file too
    r = _run(*common, "--out", tmp_path / "a3", "--fail-on", "new:high")
    assert r.exit_code == 2 and "--baseline" in " ".join(r.output.split())
    assert not (tmp_path / "a3").exists()  # refused before any check ran
    bad = tmp_path / "bad.yaml"
    bad.write_text("- fingerprint: nothex\n")
    r = _run(*common, "--out", tmp_path / "a4", "--suppressions", bad)
    assert r.exit_code == 2 and "suppression 1" in " ".join(r.output.split())
    assert not (tmp_path / "a4").exists()  # refused before any check ran
