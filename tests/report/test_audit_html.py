"""The audit's report.html: order, escaping, every check and plot drawn, self-contained."""

from __future__ import annotations

import re
from collections import Counter
from html.parser import HTMLParser
from typing import Any

import pytest

from bastion.report import render

from .conftest import HOSTILE, rich_audit_document


@pytest.fixture(scope="module")
def page() -> str:
    return render(rich_audit_document(), "html")


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def test_untrusted_text_is_escaped_everywhere(page: str) -> None:
    parser = _Tags()
    parser.feed(page)
    assert {t for t, _ in parser.tags} & {"script", "iframe", "object", "embed", "link"} == set()
    assert [(t, a) for t, a in parser.tags if any(k.startswith("on") for k in a)] == []
    assert "&lt;script&gt;alert(" in page
    # Every image is an inline data URI, nothing is fetched.
    sources = [a.get("src") or "" for t, a in parser.tags if t == "img"]
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "default-src 'none'" in page  # the CSP forbids scripts and requests


def test_sections_come_in_the_order_a_reader_needs(page: str) -> None:
    order = [page.index(f'id="{s}"') for s in ("scorecard", "findings", "not-run", "checks",
                                                "setup")]
    assert order == sorted(order)


def test_findings_are_ordered_by_severity_suppressed_last(page: str) -> None:
    findings = page[page.index('id="findings"'):page.index('id="not-run"')]
    severities = re.findall(r'class="sev sev-(\w+)"', findings)
    assert severities == ["critical", "high", "high", "medium", "info"]
    classes = re.findall(r'<div class="finding ([^"]+)"', findings)
    assert [("suppressed" in c) for c in classes] == [False] * 4 + [True]
    assert findings.count("<strong>Fix:</strong>") == 5


def test_scorecard_shows_every_cell_with_its_status(page: str) -> None:
    card = page[page.index('id="scorecard"'):page.index('id="findings"')]
    doc = rich_audit_document()
    statuses = Counter(c["status"] for c in doc["scorecard"]["cells"])
    statuses.update(t["status"] for t in doc["scorecard"]["threats"])
    shown = Counter(re.findall(r'<span class="chip st-([a-z-]+)"', card))
    assert shown == Counter({s.replace("/", "").replace("_", "-"): n
                             for s, n in statuses.items()})
    for t in doc["scorecard"]["threats"]:
        assert t["title"].replace("&", "&amp;") in card


def test_every_check_has_a_section_with_status_metrics_and_reason(page: str) -> None:
    doc = rich_audit_document()
    for c in doc["checks"]:
        start = page.index(f'id="check-{c["name"]}"')
        section = page[start:page.index("</article>", start)]
        assert f"st-{c['status'].replace('_', '-')}" in section
        for m in c["metrics"].values():
            assert m["label"] in section
        if c["status"] == "not_run":
            assert c["reason"] in section and c["enable"] in section
    evasion = page[page.index('id="check-evasion"'):page.index('id="check-extraction"')]
    assert "0.155 – 0.245" in evasion and "clopper-pearson" in evasion  # 95% interval, method
    assert "123,456 queries" in evasion


def test_every_plot_is_drawn(page: str) -> None:
    doc = rich_audit_document()
    plots = [p for c in doc["checks"] for p in c["plots"]]
    charts = [p for p in plots if p["kind"] != "images"]
    cells = [cell for p in plots if p["kind"] == "images" for row in p["images"]
             for cell in row["cells"]]
    assert page.count('<svg class="chart"') == len(charts)
    assert len(re.findall(r"<img ", page)) == len(cells) - 1  # one cell has a bad shape
    assert "an image must be H×W, H×W×C or C×H×W, got shape [3]" in page


def test_chart_ids_are_unique_in_the_page(page: str) -> None:
    ids = re.findall(r'\bid="([^"]+)"', page)
    assert [i for i, n in Counter(ids).items() if n > 1] == []
    for ref in re.findall(r'href="#([^"]+)"', page):
        assert ref in ids, ref


def test_same_document_gives_the_same_page(page: str) -> None:
    a, b = page, render(rich_audit_document(), "html")
    strip = re.compile(r'\bc\d+-')  # chart id prefixes count up within a process
    assert strip.sub("", a) == strip.sub("", b)


def test_a_minimal_document_renders(minimal_doc: dict[str, Any]) -> None:
    page = render(minimal_doc, "html")
    assert "No findings" in page and 'id="not-run"' not in page
    assert HOSTILE not in page
