"""Every HTML report in headless Chromium at 1280 and 600 px: no script errors, no network
requests, nothing cut off horizontally (measured in the browser)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from bastion.report import write_report

from .conftest import rich_audit_document


def test_the_audit_report_renders_cleanly_at_both_widths(
        check_page: Callable[..., list[Any]], minimal_doc: dict[str, Any],
        tmp_path: Path) -> None:
    rich = write_report(rich_audit_document(), tmp_path / "rich", formats=["html"])["html"]
    small = write_report(minimal_doc, tmp_path / "small", formats=["html"])["html"]
    for path in (rich, small):
        check_page(path)


def test_the_harness_catches_errors_requests_and_overflow(
        browser: Any, tmp_path: Path) -> None:
    """The checks above can fail: a page with each fault is caught."""
    bad = tmp_path / "bad.html"
    bad.write_text(
        "<!DOCTYPE html><html><head><meta name='viewport' content='width=device-width'></head>"
        "<body><script>undefined_function()</script>"
        "<img src='http://127.0.0.1:9/x.png'>"
        "<div style='width:900px'>wide</div></body></html>")
    r = browser.load(bad, width=600)
    assert any("undefined_function" in e for e in r.errors)
    assert r.requests == ["http://127.0.0.1:9/x.png"]
    assert r.scroll_width > 600
    assert any("right edge" in o for o in r.overflowing)
