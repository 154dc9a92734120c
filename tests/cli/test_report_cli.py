"""``bastion report diff`` and ``bastion verify-audit`` end to end through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from bastion.cli.main import app

from ..audit._docs import finding, make_doc

runner = CliRunner()


def _write(path: Path, doc: dict) -> Path:
    path.write_text(json.dumps(doc))
    return path


def test_report_diff_as_table_json_and_markdown(tmp_path: Path) -> None:
    old = _write(tmp_path / "old.json", make_doc(robust=(0.62, 0.59, 0.65)))
    new = _write(tmp_path / "new.json", make_doc(
        robust=(0.37, 0.34, 0.40),
        evasion_findings=[finding("evasion", "gradient-masking", "high", title="masked <b>")],
    ))
    table = runner.invoke(app, ["report", "diff", str(old), str(new)])
    assert table.exit_code == 0, table.output
    assert "new" in table.output and "fixed" in table.output and "regression" in table.output
    as_json = runner.invoke(app, ["report", "diff", str(old), str(new), "--format", "json"])
    data = json.loads(as_json.stdout)
    assert data["summary"] == {"new": 1, "fixed": 1, "unchanged": 1, "regressions": 1}
    md = tmp_path / "diff.md"
    written = runner.invoke(app, ["report", "diff", str(old), str(new), "--format", "md",
                                  "--out", str(md)])
    assert written.exit_code == 0 and "wrote" in written.output
    text = md.read_text()
    assert "evasion.gradient-masking" in text and "masked \\<b\\>" in text  # escaped


def test_report_diff_fail_on_new_findings_only(tmp_path: Path) -> None:
    old = _write(tmp_path / "old.json", make_doc())
    same = _write(tmp_path / "same.json", make_doc())
    worse = _write(tmp_path / "worse.json", make_doc(evasion_findings=[
        finding("evasion", "low-robust-accuracy", "high"),
        finding("artifact", "unsafe-import", "critical"),
    ]))
    assert runner.invoke(app, ["report", "diff", str(old), str(same), "--fail-on", "high"]
                         ).exit_code == 0
    r = runner.invoke(app, ["report", "diff", str(old), str(worse), "--fail-on", "high"])
    assert r.exit_code == 1 and "1 new finding" in r.output


def test_report_diff_bad_input_is_a_clear_error(tmp_path: Path) -> None:
    not_json = tmp_path / "x.json"
    not_json.write_text("{")
    other = _write(tmp_path / "other.json", {"schema": "something/1"})
    good = _write(tmp_path / "good.json", make_doc())
    for args, message in [
        ([str(not_json), str(good)], "not JSON"),
        ([str(other), str(good)], "not a bastion audit report"),
        ([str(tmp_path / "missing.json"), str(good)], "cannot read"),
        ([str(good), str(good), "--format", "xml"], "use table, json or md"),
    ]:
        r = runner.invoke(app, ["report", "diff", *args])
        assert r.exit_code == 2 and message in r.output, r.output
        assert "Traceback" not in r.output


def test_verify_audit_names_what_failed(tmp_path: Path) -> None:
    from bastion.artifacts.signing import generate_keypair
    from bastion.audit.attest import sign_audit

    model = tmp_path / "model.pt"
    model.write_bytes(b"weights")
    audit = tmp_path / "audit"
    audit.mkdir()
    _write(audit / "report.json", make_doc(model_bytes=b"weights"))
    priv, pub = generate_keypair("ecdsa-p256", tmp_path / "k", tmp_path / "k.pub")
    sign_audit(audit, priv)
    ok = runner.invoke(app, ["verify-audit", str(audit), "--model", str(model), "--key", str(pub)])
    assert ok.exit_code == 0 and "verified" in ok.output, ok.output
    other = tmp_path / "other.pt"
    other.write_bytes(b"x")
    swapped = runner.invoke(app, ["verify-audit", str(audit), "--model", str(other),
                                  "--key", str(pub)])
    assert swapped.exit_code == 1 and "model" in swapped.output
    (audit / "report.json").write_text((audit / "report.json").read_text().replace("0.42", "0.99"))
    edited = runner.invoke(app, ["verify-audit", str(audit), "--model", str(model),
                                 "--key", str(pub)])
    assert edited.exit_code == 1 and "report" in edited.output and "edited" in edited.output
