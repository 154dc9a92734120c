"""``bastion evaluate extraction``: steal a model through a black-box view and report it.

Runs an audit with the one ``extraction`` check and writes the same ``bastion.audit/1``
document as ``bastion audit`` (report.json, .html with fidelity against queries, .md).
Exit codes: 0 done, 1 fidelity above ``--fail-above``, 2 bad input or an error.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import typer

from bastion.cli._common import err_console, handle_errors
from bastion.errors import ConfigurationError, InputError

__all__ = ["register"]

log = logging.getLogger(__name__)


def register(evaluate_app: typer.Typer) -> None:
    """Add the ``extraction`` command to the ``bastion evaluate`` group."""
    evaluate_app.command("extraction")(evaluate_extraction_cmd)


def evaluate_extraction_cmd(
    model: Path = typer.Option(
        ..., "--model", "-m", help="Model file: TorchScript, state_dict + --factory, .onnx, .skops."
    ),
    data: Path = typer.Option(
        ..., "--data", "-d", help=".npz with x and y: the attacker's pool, then held-out data."
    ),
    budget: int = typer.Option(10000, "--budget", "-b", help="Query budget of the attack."),
    strategy: str = typer.Option(
        "knockoff",
        "--strategy",
        "-s",
        help="knockoff, copycat, jacobian, noise, adaptive or equation.",
    ),
    access: str = typer.Option(
        "scores", "--access", help="What the attacker sees: scores (probabilities) or labels."
    ),
    surrogate: str = typer.Option(
        "auto", "--surrogate", help="Surrogate architecture: auto, mlp, cnn or linear."
    ),
    pool_fraction: float = typer.Option(
        0.7, "--pool-fraction", help="Leading fraction of the data given to the attacker."
    ),
    rounds: int = typer.Option(5, "--rounds", help="Training rounds (points on the curve)."),
    epochs: int = typer.Option(20, "--epochs", help="Training epochs per round."),
    transfer_eps: float = typer.Option(
        0.1, "--transfer-eps", help="L∞ eps of PGD transfer from the copy (0 to skip)."
    ),
    harden: list[str] = typer.Option(
        [],
        "--harden",
        help="Also evaluate an output policy (repeatable): topk:K, rounding:D, label-only, "
        "noise:SIGMA, reverse-sigmoid:BETA,GAMMA.",
    ),
    out: Path = typer.Option(
        Path("bastion-extraction"),
        "--out",
        "-o",
        help="Folder for the report (report.json, .html, .md); an existing report is kept "
        "unless --force.",
    ),
    force: bool = typer.Option(False, "--force", help="Replace an existing report in --out."),
    factory: str | None = typer.Option(
        None, "--factory", help="module:function building the nn.Module for a state_dict file."
    ),
    input_shape: str | None = typer.Option(
        None, "--input-shape", help="Shape of one input, e.g. 1,28,28 (default: from the data)."
    ),
    num_classes: int | None = typer.Option(None, "--num-classes", help="Number of classes."),
    bounds: str = typer.Option("0,1", "--bounds", help="Valid input range low,high."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    fail_above: float | None = typer.Option(
        None, "--fail-above", help="Exit with code 1 when fidelity is above this value."
    ),
    trust_pickle: bool = typer.Option(
        False, "--trust-pickle", help="Allow pickle-based model files (they can run code)."
    ),
) -> None:
    """Evaluate how easily a classifier can be copied through its prediction API."""
    _evaluate(**locals())


@handle_errors
def _evaluate(**opts: Any) -> None:
    from bastion.attacks.extraction.catalog import STRATEGIES, parse_policy
    from bastion.audit.config import AuditConfig, AuditThreat
    from bastion.cli._one_check import model_options, run_one_check
    from bastion.threat import Access

    strategy = opts["strategy"].lower()
    if strategy not in STRATEGIES:
        raise ConfigurationError(f"--strategy must be one of {', '.join(STRATEGIES)}")
    access = opts["access"].lower()
    if access not in ("scores", "labels"):
        raise ConfigurationError("--access must be scores or labels")
    if strategy == "equation" and access == "labels":
        raise ConfigurationError("--strategy equation needs --access scores")
    if opts["budget"] < 1:
        raise ConfigurationError("--budget must be at least 1")
    if opts["rounds"] < 1 or opts["epochs"] < 1:
        raise ConfigurationError("--rounds and --epochs must be at least 1")
    frac = opts["pool_fraction"]
    if not 0.0 < frac < 1.0:
        raise ConfigurationError("--pool-fraction must be between 0 and 1 (exclusive)")
    for spec in opts["harden"]:
        parse_policy(spec)  # a bad policy is a usage error before anything runs
    if opts["surrogate"] not in ("auto", "mlp", "cnn", "linear"):
        raise ConfigurationError("--surrogate must be auto, mlp, cnn or linear")
    _check_shape(opts)
    settings = {
        "budget": opts["budget"],
        "strategy": strategy,
        "points": opts["rounds"],
        "epochs": opts["epochs"],
        "pool_fraction": frac,
        "surrogate": opts["surrogate"],
        "policies": list(opts["harden"]),
        "transfer_eps": max(0.0, opts["transfer_eps"]),
    }
    config = AuditConfig(
        model=str(opts["model"]),
        test=opts["data"],
        out=opts["out"],
        seed=opts["seed"],
        threat=AuditThreat(access=Access(access), query_budget=opts["budget"]),
        model_options=model_options(opts, device="cpu"),
        settings={"extraction": settings},
    )
    _, entry = run_one_check(
        "extraction", config, command="evaluate extraction", force=opts["force"]
    )
    fid = entry["metrics"]["fidelity"]["value"] or 0.0
    if opts["fail_above"] is not None and fid > opts["fail_above"]:
        err_console.print(f"fidelity {fid:.3f} is above --fail-above {opts['fail_above']}")
        raise typer.Exit(1)


def _check_shape(opts: dict[str, Any]) -> None:
    """``--input-shape`` must hold as many values as a row of ``--data``."""
    from bastion.cli._common import parse_floats, parse_shape
    from bastion.cli.evaluate import load_xy

    shape = parse_shape(opts["input_shape"])
    if shape is None:
        return
    lo, hi = parse_floats(opts["bounds"], "--bounds", 2)
    x, _ = load_xy(opts["data"], (lo, hi))
    if math.prod(shape) != math.prod(x.shape[1:]):
        raise InputError(f"--input-shape {shape} does not fit data rows of shape {x.shape[1:]}")
