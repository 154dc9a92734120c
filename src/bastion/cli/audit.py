"""``bastion audit`` (assess a model against every threat, one report) and
``bastion report render`` (re-render a report.json).

Exit codes: 0 the audit ran (whatever it found), 1 a finding at or above ``--fail-on``,
2 bad input or options, 130 interrupted (finished checks are kept and a rerun resumes).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from bastion.cli._common import (
    EXECUTOR_HELP,
    EXIT_ERROR,
    GPUS_HELP,
    console,
    err_console,
    fail,
    handle_errors,
    parse_executor,
    parse_floats,
    parse_shape,
)

__all__ = ["print_audit", "register"]

_STATUS_STYLE = {"passed": "green", "failed": "bold red", "not_run": "dim", "error": "yellow",
                 "partial": "yellow", "incomplete": "yellow", "n/a": "dim"}
_SEVERITY_STYLE = {"critical": "bold red", "high": "red", "medium": "yellow", "low": "cyan",
                   "info": "dim"}


def register(app: typer.Typer, report_app: typer.Typer) -> None:
    """Add ``audit`` to the app and ``render`` to the ``report`` group."""
    app.command("audit")(audit_cmd)
    report_app.command("render")(render_cmd)


def audit_cmd(
    model: list[str] | None = typer.Option(
        None, "--model", "-m",
        help="Model file (any format load_model takes; scanned before loading), "
        "registry://name@alias-or-version, or an http(s) endpoint (black box). Repeat it for "
        "a campaign: each model audited into OUT/<name>/, plus OUT/campaign.json and .md."),
    registry_due: bool = typer.Option(
        False, "--registry-due", help="A re-audit campaign: audit every version `bastion "
        "registry audit-due` lists (the registry of $BASTION_REGISTRY_URL, or "
        "$BASTION_REGISTRY_METADATA_URL and ..._STORAGE_URL); a rerun skips finished audits."),
    max_age: str = typer.Option(
        "30d", "--max-age", help="With --registry-due: an older audit is due again."),
    train: Path | None = typer.Option(
        None, "--train", help=".npz (x, y) training set, or a .csv/.parquet table with named "
        "columns (--label names its label column): the member set; enables membership, "
        "data and poisoning checks."),
    test: Path | None = typer.Option(
        None, "--test", help=".npz (x, y) test set, or a .csv/.parquet table with named "
        "columns (as --train)."),
    contract: Path | None = typer.Option(
        None, "--contract", help="Data contract of the table (bastion data infer-contract): "
        "its rules (ranges, integer, categories, one-hot, immutable, costs) bound every "
        "attack, and the data check validates the data against it."),
    label: str | None = typer.Option(
        None, "--label", help="The tables' label column (default y, label, target or class, "
        "else the last column)."),
    sensitive_column: str | None = typer.Option(
        None, "--sensitive-column", help="A table's sensitive column (name or index): the "
        "inversion check infers it from the model's answers (attribute inference)."),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Report folder (default bastion-audit/); finished checks are "
        "kept in OUT/checks/ and a rerun resumes."),
    config: Path | None = typer.Option(
        None, "--config", "-c", help="audit.yaml: threat model and per-check settings."),
    seed: int | None = typer.Option(None, "--seed", help="Fixes every random choice (default 0)."),
    fresh: bool = typer.Option(False, "--fresh", help="Redo every check; ignore saved results."),
    fail_on: str | None = typer.Option(
        None, "--fail-on", help="Exit 1 when a finding at or above this severity exists "
        "(info, low, medium, high, critical)."),
    access: str | None = typer.Option(
        None, "--access", help="Attacker access: white-box, scores or labels."),
    query_budget: int | None = typer.Option(
        None, "--query-budget", min=1, help="Queries the attacker may send (default 10000)."),
    norm: str | None = typer.Option(None, "--norm", help="Perturbation norm: linf or l2."),
    eps: float | None = typer.Option(
        None, "--eps", help="Perturbation budget (default per data domain: images 8/255 L∞, "
        "tabular 0.1 of the range)."),
    sensitive: list[str] | None = typer.Option(
        None, "--sensitive", help="Data role whose membership is sensitive (repeatable; "
        "default train)."),
    time_budget: float | None = typer.Option(
        None, "--time-budget", help="Seconds; checks not started by then are not_run."),
    checks: str | None = typer.Option(
        None, "--checks", help="Comma-separated checks to run (the others are reported "
        "not_run)."),
    skip: str | None = typer.Option(None, "--skip", help="Comma-separated checks to skip."),
    api_key_env: str | None = typer.Option(
        None, "--api-key-env", help="Environment variable holding the remote endpoint's key."),
    signature_key: Path | None = typer.Option(
        None, "--signature-key", help="Public key to verify the model's signature bundle."),
    factory: str | None = typer.Option(
        None, "--factory", help="module:function building the nn.Module of a state_dict."),
    input_shape: str | None = typer.Option(
        None, "--input-shape", help="Shape of one input, e.g. 1,28,28 (default: from the data)."),
    num_classes: int | None = typer.Option(None, "--num-classes", help="Number of classes."),
    bounds: str | None = typer.Option(None, "--bounds", help="Valid input range low,high."),
    trust_pickle: bool = typer.Option(
        False, "--trust-pickle", help="Load pickle-based files that did not scan clean."),
    device: str | None = typer.Option(None, "--device", help="auto, cpu or cuda."),
    formats: list[str] = typer.Option(
        ["json,html,md"], "--format",
        help="Report formats to write, comma-separated or repeated: json, html, md, sarif, "
        "junit, cyclonedx."),
    baseline: Path | None = typer.Option(
        None, "--baseline", help="An earlier report.json: the report records what is new, "
        "fixed and unchanged, and --fail-on new:SEVERITY fails only on new findings."),
    suppressions: Path | None = typer.Option(
        None, "--suppressions", help="bastion-suppressions.yaml: accepted risks (fingerprint, "
        "reason, owner, expires); default ./bastion-suppressions.yaml when it exists."),
    sign_key: Path | None = typer.Option(
        None, "--sign-key", help="Private key (Ed25519 or ECDSA P-256): also write a signed "
        "in-toto attestation binding the report to the model's files."),
    executor: str = typer.Option("in-process", "--executor", help=EXECUTOR_HELP),
    gpus_per_task: float = typer.Option(0.0, "--gpus-per-task", help=GPUS_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Audit a model against every threat and write one report (json, html, md)."""
    _audit(**locals())


@handle_errors
def _audit(**o: Any) -> None:
    from bastion.audit.config import AuditConfig, load_config
    from bastion.audit.runner import run_audit

    base = load_config(o["config"]) if o["config"] is not None else AuditConfig()
    model_options: dict[str, Any] = {}
    if o["factory"]:
        model_options["factory"] = o["factory"]
    if o["input_shape"]:
        model_options["input_shape"] = list(parse_shape(o["input_shape"]) or ())
    if o["num_classes"] is not None:
        model_options["num_classes"] = o["num_classes"]
    if o["bounds"]:
        model_options["bounds"] = list(parse_floats(o["bounds"], "--bounds", 2))
    if o["trust_pickle"]:
        model_options["trust_pickle"] = True
    if o["device"]:
        model_options["device"] = o["device"]

    def split(v: str | None) -> tuple[str, ...] | None:
        return tuple(s.strip() for s in v.split(",") if s.strip()) if v else None

    models = list(o["model"] or [])
    campaign = o["registry_due"] or len(models) > 1
    config = base.with_overrides(
        model=None if campaign else (models[0] if models else None), train=o["train"],
        test=o["test"], out=o["out"], seed=o["seed"],
        fail_on=o["fail_on"], access=o["access"], query_budget=o["query_budget"],
        norm=o["norm"], eps=o["eps"], sensitive=tuple(o["sensitive"]) if o["sensitive"] else None,
        time_budget_s=o["time_budget"], only=split(o["checks"]), skip=split(o["skip"]),
        api_key_env=o["api_key_env"], signature_key=o["signature_key"],
        contract=o["contract"], label=o["label"], model_options=model_options)
    if o["sensitive_column"] is not None:
        from dataclasses import replace

        inversion = {**config.settings.get("inversion", {}),
                     "sensitive_column": o["sensitive_column"]}
        config = replace(config, settings={**config.settings, "inversion": inversion})
    from bastion.audit.share import SharingOptions

    share = SharingOptions.from_cli(o["baseline"], o["suppressions"], o["sign_key"])
    if config.fail_on and config.fail_on.lower().startswith("new:") and share.baseline is None:
        raise fail(f"--fail-on {config.fail_on} needs --baseline OLD.json to know what is new")
    executor = parse_executor(o["executor"], o["gpus_per_task"])
    if campaign:
        _campaign(config, models, o, executor)
        return
    outcome = run_audit(config, fresh=o["fresh"], progress=not o["quiet"],
                        formats=formats_of(o["formats"]), finalize=share.finalize,
                        executor=executor, gpus_per_task=o["gpus_per_task"])
    print_audit(outcome.document)
    if outcome.reused:
        console.print(f"reused saved results of {', '.join(outcome.reused)} "
                      f"(from {config.out / 'checks'}; --fresh redoes them)")
    for p in outcome.replaced:
        console.print(f"replaced the earlier {p}")
    console.print("wrote " + ", ".join(str(p) for p in outcome.written.values()))
    _report_sharing(share, outcome.document, config.out)
    exit_on_findings(outcome.document, config.fail_on, baseline=share.baseline)


def _campaign(config: Any, models: list[str], o: dict[str, Any], executor: Any) -> None:
    """``--registry-due`` or several ``--model``: every model audited as a unit of work."""
    from rich.table import Table

    from bastion.audit.campaign import given_models, registry_due, run_campaign

    if o["registry_due"] and models:
        raise fail("give either --registry-due or models (--model), not both")
    items = registry_due(o["max_age"]) if o["registry_due"] else given_models(models)
    if not items:
        console.print("nothing to re-audit")
        return
    out = o["out"] or Path("bastion-campaign")
    result = run_campaign(config, items, out=out, fresh=o["fresh"],
                          formats=formats_of(o["formats"]),
                          executor=executor, gpus_per_task=o["gpus_per_task"])
    table = Table(title="Re-audit campaign")
    for col in ("model", "version", "status", "verdict", "findings", "report"):
        table.add_column(col, overflow="fold")
    for r in result.rows:
        table.add_row(escape(r.name), "-" if r.version is None else str(r.version), r.status,
                      _styled(r.verdict or "error"), str(r.findings),
                      escape(r.report or r.error or ""))
    console.print(table)
    console.print("wrote " + ", ".join(str(p) for p in result.written), highlight=False)
    if any(r.status == "error" for r in result.rows):
        raise typer.Exit(EXIT_ERROR)
    for r in result.rows:
        if r.report:
            exit_on_findings(json.loads(Path(r.report).read_text(encoding="utf-8")),
                             config.fail_on)


def formats_of(values: list[str] | str) -> tuple[str, ...]:
    """``--format`` values: comma-separated and/or repeated; json is always written."""
    items = [values] if isinstance(values, str) else values
    names = tuple(dict.fromkeys(s.strip() for v in items for s in v.split(",") if s.strip()))
    return names if "json" in names else ("json", *names)


def _report_sharing(share: Any, doc: dict[str, Any], out: Path) -> None:
    """Say what the suppressions and the baseline did, and sign the report when asked."""
    from rich.markup import escape

    rep = share.suppression_report
    if rep is not None:
        console.print(f"suppressions ({escape(str(share.suppressions_source))}): "
                      f"{len(rep.applied)} applied, {len(rep.expired)} expired, "
                      f"{len(rep.stale)} stale", highlight=False)
        for s in rep.expired:
            err_console.print(f"[yellow]expired[/] suppression {s.fingerprint} (owner "
                              f"{escape(s.owner)}, expired {s.expires}): the finding counts "
                              "again", highlight=False)
        for s in rep.stale:
            err_console.print(f"[yellow]stale[/] suppression {s.fingerprint} (owner "
                              f"{escape(s.owner)}) matches no finding; remove it",
                              highlight=False)
    if "baseline" in doc:
        b = doc["baseline"]["summary"]
        console.print(f"against the baseline: {b['new']} new, {b['fixed']} fixed, "
                      f"{b['unchanged']} unchanged finding(s), {b['regressions']} metric "
                      "regression(s)", highlight=False)
    signed = share.sign(out)
    if signed is not None:
        console.print(f"signed the report: {escape(str(signed))}", highlight=False)


def exit_on_findings(doc: dict[str, Any], fail_on: str | None, *,
                     baseline: dict[str, Any] | None = None) -> None:
    """``--fail-on [new:]SEVERITY``: exit 1 naming the (new) unsuppressed findings at or above
    it."""
    if fail_on is None:
        return
    from bastion.audit.baseline import failing_findings, parse_fail_on

    gate = parse_fail_on(fail_on)
    hits = failing_findings(doc, gate, baseline=baseline)
    if hits:
        which = "new finding(s)" if gate.new_only else "finding(s)"
        err_console.print(f"{len(hits)} {which} at or above --fail-on {fail_on}: "
                          + ", ".join(sorted({f['id'] for f in hits})), highlight=False)
        raise typer.Exit(1)


def print_audit(doc: dict[str, Any]) -> None:
    """The scorecard, the checks and the findings of an audit document, on the console."""
    from rich.table import Table

    card = doc["scorecard"]
    table = Table(title="Scorecard")
    table.add_column("threat")
    for p in card["practices"]:
        table.add_column(p.replace("_", " "), justify="center")
    for row in card["threats"]:
        cells = [c for c in card["cells"] if c["threat"] == row["threat"]]
        table.add_row(row["title"], *(_styled(c["status"]) for c in cells))
    console.print(table)
    checks = Table(title="Checks")
    for col in ("check", "status", "seconds", "summary / reason"):
        checks.add_column(col)
    for c in doc["checks"]:
        text = c["summary"] or c["reason"] or ""
        if c["status"] == "not_run" and c.get("enable"):
            text += f" — to enable: {c['enable']}"
        checks.add_row(c["name"], _styled(c["status"]), f"{c['seconds']:.1f}", text)
    console.print(checks)
    from bastion.audit.document import SEVERITIES

    findings = sorted((f for c in doc["checks"] for f in c["findings"]),
                      key=lambda f: -SEVERITIES.index(f["severity"]))
    for f in findings:
        style = _SEVERITY_STYLE[f["severity"]]
        console.print(f"[{style}]{f['severity']:>8}[/] {f['id']}: {f['title']}", highlight=False)
    v = doc["verdict"]
    console.print(f"verdict: {_styled(v['status'])} · highest severity {v['max_severity']}")


def _styled(status: str) -> str:
    style = _STATUS_STYLE.get(status)
    return f"[{style}]{status}[/]" if style else status


@handle_errors
def render_cmd(
    report: Path = typer.Argument(..., help="A report.json written by bastion."),
    fmt: str = typer.Option("html", "--format", "-f", help="html, md or json."),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="File to write (default: beside the report, report.<fmt>; "
        "'-' prints it)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing file."),
) -> None:
    """Re-render a report.json (validated against the schema) as html, md or json."""
    from bastion._io import atomic_write_text
    from bastion.audit.document import load_document

    doc = load_document(report)
    text = _render(doc, fmt)
    if out is not None and str(out) == "-":
        typer.echo(text)
        return
    target = out or report.with_name(f"report.{fmt}")
    if target.resolve() == report.resolve():
        raise fail(f"{target} is the report being rendered; choose another --out")
    if target.exists() and not force:
        raise fail(f"{target} already exists; pass --force to replace it or choose --out")
    atomic_write_text(target, text)
    console.print(f"wrote {target}")


def _render(doc: dict[str, Any], fmt: str) -> str:
    from bastion.report import render

    return render(doc, fmt, validate=False)
