"""``bastion scan --format html``: files and findings on a page, names escaped, in Chromium."""

from __future__ import annotations

import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from typer.testing import CliRunner

from bastion.cli import scan as scan_cli

from .conftest import HOSTILE, typer_app

PAYLOAD = b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00idq\x01\x85R."



def _files(tmp_path: Path) -> list[Path]:
    archive = tmp_path / "checkpoint.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr(f"weights/{HOSTILE}.pkl", PAYLOAD)
        z.writestr("weights/ok.npy", b"")
    clean = tmp_path / "clean.npy"
    np.save(clean, np.zeros(3))
    return [archive, clean]


def test_scan_writes_an_html_page(tmp_path: Path,
                                  check_page: Callable[..., list[Any]]) -> None:
    out = tmp_path / "scan.html"
    res = CliRunner().invoke(typer_app(scan_cli.register), [
        "scan", *map(str, _files(tmp_path)), "--format", "html", "--out", str(out)])
    assert res.exit_code == 1, res.output
    assert f"wrote html report {out}" in " ".join(res.output.split())
    page = out.read_text()
    assert "<script" not in page and "&lt;script&gt;" in page
    assert re.search(r"st-failed[^<]*<span[^>]*>✗</span> unsafe", page)
    finding = page[page.index("<h2>Findings</h2>"):]
    assert "os.system" in finding and "sev-critical" in finding
    assert f"checkpoint.zip!weights/{HOSTILE}.pkl".replace("<", "&lt;").replace(
        ">", "&gt;").replace('"', "&#34;") in finding
    assert page.count("↳") >= 1  # the archive's members, indented under it
    check_page(out)


def test_scan_html_to_stdout_for_a_clean_file(tmp_path: Path) -> None:
    clean = _files(tmp_path)[1]
    res = CliRunner().invoke(typer_app(scan_cli.register), ["scan", str(clean), "--format", "html"])
    assert res.exit_code == 0, res.output
    assert res.output.startswith("<!DOCTYPE html>")
    assert "nothing that would run code on load" in res.output
