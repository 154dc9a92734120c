"""Report renderers, exit codes and the ``bastion scan`` command."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from bastion.artifacts.scan import (
    FileScan,
    Finding,
    ScanReport,
    Severity,
    Verdict,
    render_json,
    render_sarif,
    scan_paths,
)
from bastion.cli import scan as scan_cli

PAYLOAD = b"\x80\x02cos\ngetcwd\n)R."


def _file(verdict: Verdict) -> FileScan:
    return FileScan(path="x", format="pickle", verdict=verdict, severity=Severity.NONE)


@pytest.mark.parametrize(("verdicts", "code"), [
    ([Verdict.CLEAN, Verdict.SKIPPED], 0),
    ([Verdict.CLEAN, Verdict.UNSAFE, Verdict.ERROR], 1),
    ([Verdict.CLEAN, Verdict.ERROR], 2),
    ([Verdict.SKIPPED], 3),
    ([], 3),
])
def test_exit_codes(verdicts: list[Verdict], code: int) -> None:
    assert ScanReport(tuple(_file(v) for v in verdicts)).exit_code == code


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "good.pkl").write_bytes(pickle.dumps({"w": [1.0]}))
    (tmp_path / "bad.bin").write_bytes(PAYLOAD)
    (tmp_path / "notes.txt").write_text("hello\n")
    return tmp_path


def test_json_and_sarif_carry_the_findings(folder: Path) -> None:
    report = scan_paths([folder])
    doc = json.loads(render_json(report))
    assert doc["exit_code"] == 1 and doc["counts"] == {"clean": 1, "unsafe": 1, "error": 0,
                                                       "skipped": 1}
    bad = next(f for f in doc["files"] if f["path"].endswith("bad.bin"))
    assert bad["findings"][0] == {"operator": "GLOBAL", "module": "os", "name": "getcwd",
                                  "position": 2, "severity": "critical",
                                  "why": bad["findings"][0]["why"]}
    sarif = json.loads(render_sarif(report))
    assert sarif["version"] == "2.1.0"
    run = sarif["runs"][0]
    assert [r["ruleId"] for r in run["results"]] == ["bastion-scan/global"]
    assert run["results"][0]["level"] == "error"
    props = run["tool"]["driver"]["rules"][0]["properties"]
    assert "AML.T0010.003" in props["atlas"] and "AML.T0011.000" in props["atlas"]
    assert props["owasp"] == ["ML06"]


def test_finding_target_and_dict() -> None:
    f = Finding("REDUCE", "os", "getcwd", 7, Severity.HIGH, "why")
    assert f.target == "os.getcwd" and f.to_dict()["severity"] == "high"


def _app() -> typer.Typer:
    app = typer.Typer()
    scan_cli.register(app)

    @app.callback()
    def _root() -> None:
        """Test root."""

    return app


def test_cli_exit_codes_and_output(folder: Path) -> None:
    runner = CliRunner()
    unsafe = runner.invoke(_app(), ["scan", str(folder)])
    assert unsafe.exit_code == 1 and "os.getcwd" in unsafe.output and "unsafe" in unsafe.output
    clean = runner.invoke(_app(), ["scan", str(folder / "good.pkl"), "--format", "json"])
    assert clean.exit_code == 0 and json.loads(clean.output)["counts"]["clean"] == 1
    nothing = runner.invoke(_app(), ["scan", str(folder / "notes.txt")])
    assert nothing.exit_code == 3
    (folder / "cut.pkl").write_bytes(b"\x80\x04\x95")
    error = runner.invoke(_app(), ["scan", str(folder / "cut.pkl"), str(folder / "good.pkl")])
    assert error.exit_code == 2 and "error" in error.output
    missing = runner.invoke(_app(), ["scan", str(folder / "nope.pt")])
    assert missing.exit_code == 2 and "no such file" in missing.output


def test_cli_writes_sarif_to_a_file(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "reports" / "scan.sarif"
    result = CliRunner().invoke(_app(), ["scan", str(folder / "bad.bin"), "-f", "sarif",
                                         "--out", str(out), "--max-depth", "2"])
    assert result.exit_code == 1
    assert json.loads(out.read_text())["runs"][0]["results"][0]["properties"]["name"] == "getcwd"
