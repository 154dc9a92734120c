"""``bastion data scan-poison``: look for poisoned samples in a model's training data.

Runs an audit with the one ``poisoning`` check and writes the same ``bastion.audit/1``
document as ``bastion audit`` (report.json, .html with score histograms and thumbnails of
flagged images, .md). Exit codes: 0 nothing suspicious, 1 suspicious samples found, 2 bad
input or an error (never 1).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from bastion.cli._common import err_console, handle_errors

__all__ = ["EXIT_SUSPICIOUS", "register"]

#: exit code when the scan finds suspicious samples
EXIT_SUSPICIOUS = 1


def register(data_app: typer.Typer) -> None:
    """Add the ``scan-poison`` command to the ``bastion data`` group."""
    data_app.command("scan-poison")(scan_poison_cmd)


def scan_poison_cmd(
    model: Path = typer.Option(
        ...,
        "--model",
        "-m",
        help="The torch model trained on the data (TorchScript or state dict).",
    ),
    data: Path = typer.Option(
        ..., "--data", "-d", help="Training data: .npz with arrays x (inputs) and y (labels)."
    ),
    methods: str = typer.Option(
        "ac,spectral", "--methods", help="Comma-separated: ac, spectral, cl."
    ),
    layer: str | None = typer.Option(
        None, "--layer", help="Layer whose activations are analysed (default: penultimate)."
    ),
    factory: str | None = typer.Option(
        None, "--factory", help="module:function building the nn.Module for a state_dict file."
    ),
    bounds: str = typer.Option("0,1", "--bounds", help="Valid input range low,high."),
    out: Path = typer.Option(
        Path("bastion-poison"),
        "--out",
        "-o",
        help="Folder for the report (report.json, .html, .md); an existing report is kept "
        "unless --force.",
    ),
    force: bool = typer.Option(False, "--force", help="Replace an existing report in --out."),
    seed: int = typer.Option(0, "--seed", help="Random seed (results are deterministic)."),
    trust_pickle: bool = typer.Option(
        False, "--trust-pickle", help="Allow pickle-based model files (they can run code)."
    ),
) -> None:
    """Scan a training set for poisoned samples (exit 0 clean, 1 suspicious, 2 error)."""
    _scan(**locals())


@handle_errors
def _scan(**opts: Any) -> None:
    from bastion.audit.config import AuditConfig, AuditThreat
    from bastion.cli._one_check import model_options, run_one_check
    from bastion.defences.data.scan import parse_methods

    methods = parse_methods(opts["methods"])  # a bad list is a usage error before anything
    settings = {"methods": methods, "layer": opts["layer"]}
    config = AuditConfig(
        model=str(opts["model"]),
        train=opts["data"],
        out=opts["out"],
        seed=opts["seed"],
        threat=AuditThreat(query_budget=None),
        model_options=model_options(opts, device="cpu"),
        settings={"poisoning": settings},
    )
    _, entry = run_one_check("poisoning", config, command="data scan-poison", force=opts["force"])
    if entry["status"] == "failed":
        err_console.print("suspicious samples found; see the report")
        raise typer.Exit(EXIT_SUSPICIOUS)
