"""render / write_report over the audit document: schema, formats, atomic writes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from bastion.errors import ConfigurationError, InputError
from bastion.report import RENDERERS, render, validate_document, write_report
from bastion.report.document import schema


def test_every_sample_validates_against_the_schema(audit_doc: dict[str, Any],
                                                   minimal_doc: dict[str, Any]) -> None:
    validator = jsonschema.Draft202012Validator(schema())
    for doc in (audit_doc, minimal_doc):
        assert list(validator.iter_errors(doc)) == []
        validate_document(doc)


def test_an_invalid_document_is_refused_naming_the_place(audit_doc: dict[str, Any]) -> None:
    audit_doc["checks"][1]["status"] = "maybe"
    with pytest.raises(InputError, match=r"checks/1/status"):
        render(audit_doc, "html")
    with pytest.raises(InputError, match=r"not a bastion\.audit/1 document"):
        render({"schema": "bastion.audit/0"}, "md")
    with pytest.raises(InputError, match=r"not a bastion\.audit/1 document"):
        validate_document([1, 2])


def test_unknown_format_names_the_choices(minimal_doc: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError, match="cyclonedx, html, json, junit, md, sarif"):
        render(minimal_doc, "pdf")


def test_json_is_the_document_with_non_finite_numbers_as_null(
        audit_doc: dict[str, Any]) -> None:
    audit_doc["checks"][1]["metrics"]["robust_accuracy"]["value"] = float("nan")
    out = json.loads(render(audit_doc, "json", validate=False))
    assert out["checks"][1]["metrics"]["robust_accuracy"]["value"] is None
    assert out["checks"][0] == audit_doc["checks"][0]
    assert out["scorecard"] == audit_doc["scorecard"]


def test_write_report_writes_every_format_atomically(minimal_doc: dict[str, Any],
                                                     tmp_path: Path) -> None:
    paths = write_report(minimal_doc, tmp_path / "out")
    assert {k: p.name for k, p in paths.items()} == {
        "json": "report.json", "html": "report.html", "md": "report.md"}
    assert json.loads(paths["json"].read_text()) == minimal_doc
    assert paths["html"].read_text().startswith("<!DOCTYPE html>")
    assert "Bastion audit" in paths["md"].read_text()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "report.html", "report.json", "report.md"]  # no temporary files left


def test_a_failing_renderer_leaves_nothing_half_written(
        minimal_doc: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(doc: dict[str, Any]) -> str:
        raise RuntimeError("boom")

    monkeypatch.setitem(RENDERERS, "broken", broken)
    (tmp_path / "report.json").write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        write_report(minimal_doc, tmp_path, formats=("json", "broken"))
    assert (tmp_path / "report.json").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_other_formats_register_in_renderers(minimal_doc: dict[str, Any], tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(RENDERERS, "txt", lambda doc: doc["verdict"]["status"] + "\n")
    paths = write_report(minimal_doc, tmp_path, formats=["txt"])
    assert paths["txt"] == tmp_path / "report.txt"
    assert paths["txt"].read_text() == "passed\n"
    assert render(minimal_doc, "txt") == "passed\n"
