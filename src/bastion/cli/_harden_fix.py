"""``bastion harden fix --audit audit/``: harden against an audit's findings, rerun the same
audit on the hardened model and write the before/after comparison.

Exit codes: 0 done (whatever changed), 1 with ``--fail-on-regression`` when the hardening made
a check worse, 2 bad input (a missing or invalid audit, a model that cannot be retrained, no
training data), 130 interrupted.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from bastion.cli._common import console, err_console, handle_errors

__all__ = ["fix_cmd"]


@handle_errors
def fix_cmd(
    audit: Path = typer.Option(
        ..., "--audit", "-a", help="The audit to fix: its folder or its report.json."),
    out: Path = typer.Option(
        Path("bastion-fix"), "--out", "-o",
        help="Folder for model.pt, after/report.*, before/report.json and report.* (the diff)."),
    address: str | None = typer.Option(
        None, "--address", help="Comma-separated hardenings to apply: evasion, membership, "
        "extraction (default: every one a finding calls for; evasion and membership exclude "
        "each other)."),
    model: Path | None = typer.Option(
        None, "--model", "-m", help="Where the audited model is now, if it moved (its digest "
        "must match the audit's)."),
    factory: str | None = typer.Option(
        None, "--factory", help="module:function building the nn.Module of a state_dict "
        "(default: the audit's)."),
    trust_pickle: bool = typer.Option(
        False, "--trust-pickle", help="Load a pickle-based model file (never taken from the "
        "audit)."),
    train: Path | None = typer.Option(
        None, "--train", help="Where the audit's training split is now (same SHA-256)."),
    test: Path | None = typer.Option(
        None, "--test", help="Where the audit's test split is now (same SHA-256)."),
    contract: Path | None = typer.Option(
        None, "--contract", help="Where the audit's data contract is now (same SHA-256)."),
    evasion_method: str = typer.Option(
        "pgd", "--evasion-method", help="pgd (PGD-AT), trades, fast (FGSM with a random "
        "start and an overfitting guard), free (minibatch replay), or smooth (Gaussian "
        "augmentation for randomized smoothing; L2 threats)."),
    epochs: int = typer.Option(10, "--epochs", help="Epochs of hardening."),
    lr: float = typer.Option(1e-3, "--lr", help="Learning rate of adversarial training (Adam)."),
    batch_size: int = typer.Option(128, "--batch-size", help="Batch size of adversarial "
                                   "training and smoothing."),
    train_steps: int = typer.Option(10, "--train-steps", help="PGD steps of the inner attack."),
    sigma: float | None = typer.Option(
        None, "--sigma", help="Noise of smoothing (default: the audit's eps)."),
    target_epsilon: float = typer.Option(
        8.0, "--target-epsilon", help="DP-SGD privacy budget ε against membership findings."),
    delta: float | None = typer.Option(
        None, "--delta", help="DP-SGD δ (default min(1e-5, 0.1/n))."),
    output_policy: str = typer.Option(
        "label-only", "--output-policy", help="Against extraction: label-only, topk:K or "
        "rounding:D."),
    max_accuracy_drop: float = typer.Option(
        0.05, "--max-accuracy-drop", help="A larger fall of test accuracy is a regression."),
    fail_on_regression: bool = typer.Option(
        False, "--fail-on-regression", help="Exit 1 when the hardening made a check worse."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or auto."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
) -> None:
    """Harden a model against the findings of its audit, rerun the same checks (settings, seed,
    threat model, data) on the hardened model, and report what was fixed, what is new and what
    regressed."""
    from bastion.defences.fix import harden_from_audit

    result = harden_from_audit(
        audit, out=out, model=model, factory=factory, trust_pickle=trust_pickle, train=train,
        test=test, contract=contract, address=None if address is None else tuple(
            s.strip() for s in address.split(",") if s.strip()),
        evasion_method=evasion_method, epochs=epochs, lr=lr, batch_size=batch_size,
        train_steps=train_steps, sigma=sigma, target_epsilon=target_epsilon, delta=delta,
        output_policy=output_policy, max_accuracy_drop=max_accuracy_drop, device=device,
        progress=not quiet, say=None if quiet else (lambda m: console.print(m, highlight=False)))
    doc = result.to_dict()
    table = Table(title="Fix and verify")
    for col in ("change", "severity", "finding", "check"):
        table.add_column(col, overflow="fold")
    for status in ("fixed", "new", "unchanged"):
        for f in doc["diff"]["findings"][status]:
            style = {"new": "red", "fixed": "green"}.get(status, "")
            table.add_row(f"[{style}]{status}[/]" if style else status, f["severity"],
                          escape(f["title"]), escape(f["check"]))
    console.print(table)
    for r in result.remedies:
        console.print(f"hardened against {r.target}: {escape(r.method)} "
                      f"({', '.join(r.findings)})", highlight=False)
    for n in result.not_addressed:
        console.print(f"[dim]not addressed[/] {escape(n.id)}: {escape(n.reason)}",
                      highlight=False)
    acc = result.accuracy
    console.print(f"test accuracy {acc['before']:.1%} → {acc['after']:.1%}", highlight=False)
    for w in result.warnings:
        err_console.print(f"[yellow]warning:[/] {escape(w)}", highlight=False)
    for g in result.regressions:
        err_console.print(f"[bold red]regressed[/] ({g.kind}): {escape(g.detail)}",
                          highlight=False)
    console.print(f"wrote {escape(str(out))}/: report.json, report.html, report.md, "
                  "after/report.*, model.pt", highlight=False)
    if fail_on_regression and result.regressed:
        err_console.print(f"{len(result.regressions)} regression(s) (--fail-on-regression)",
                          highlight=False)
        raise typer.Exit(1)
