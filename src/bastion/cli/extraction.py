"""``bastion evaluate extraction``: steal a model through a black-box view and report it."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Literal, cast

import typer

from bastion.cli._common import console, err_console, handle_errors
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
        Path("bastion-report"), "--out", "-o", help="Folder for report.json and report.html."
    ),
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
    from bastion.attacks.extraction import black_box, transfer_rate
    from bastion.attacks.extraction.catalog import (
        STRATEGIES,
        build_extraction_attack,
        parse_policy,
    )
    from bastion.attacks.extraction.report import extraction_findings
    from bastion.cli._common import parse_floats, parse_shape
    from bastion.cli.evaluate import load_xy, pick_device
    from bastion.models.base import Capability
    from bastion.models.loading import load_model
    from bastion.report.extraction import write_extraction_report

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
    frac = opts["pool_fraction"]
    if not 0.0 < frac < 1.0:
        raise ConfigurationError("--pool-fraction must be between 0 and 1 (exclusive)")
    policies = [parse_policy(p) for p in opts["harden"]]
    lo_hi = parse_floats(opts["bounds"], "--bounds", 2)
    bounds = (lo_hi[0], lo_hi[1])
    x, y = load_xy(opts["data"], bounds)
    shape = parse_shape(opts["input_shape"]) or tuple(x.shape[1:])
    if math.prod(shape) != math.prod(x.shape[1:]):
        raise InputError(f"--input-shape {shape} does not fit data rows of shape {x.shape[1:]}")
    x = x.reshape(x.shape[0], *shape)
    n_pool = round(frac * x.shape[0])
    if n_pool < 1 or n_pool >= x.shape[0]:
        raise ConfigurationError(
            f"--pool-fraction {frac} leaves no pool or no held-out data for {x.shape[0]} rows"
        )
    clf = load_model(
        opts["model"],
        input_shape=shape,
        num_classes=opts["num_classes"],
        bounds=bounds,
        factory=opts["factory"],
        trust_pickle=opts["trust_pickle"],
        device=pick_device("cpu"),
    )
    if access == "scores" and Capability.SCORES not in clf.capabilities:
        raise ConfigurationError("the model is label-only; use --access labels")
    victim = black_box(clf, access=cast(Literal["scores", "labels"], access))
    arch = opts["surrogate"]
    if arch == "auto":
        arch = "cnn" if len(shape) == 3 and min(shape[1:]) >= 16 else "mlp"
    labels: Literal["soft", "hard"] = "soft" if access == "scores" else "hard"
    attack = build_extraction_attack(
        strategy,
        query_budget=opts["budget"],
        labels=labels,
        surrogate=arch,
        rounds=opts["rounds"],
        epochs=opts["epochs"],
        seed=opts["seed"],
    )
    x_pool, x_eval, y_eval = x[:n_pool], x[n_pool:], y[n_pool:]
    result = attack.extract(victim, x_pool=x_pool, x_eval=x_eval, y_eval=y_eval)
    doc: dict[str, Any] = {
        "model": str(opts["model"]),
        "data": str(opts["data"]),
        "strategy": strategy,
        "access": access,
        "surrogate": arch,
        "n_pool": n_pool,
        "attack": result.to_dict(),
        "transfer": None,
        "hardening": [],
    }
    if opts["transfer_eps"] > 0:
        doc["transfer"] = transfer_rate(
            result, clf, x_eval, y_eval, eps=opts["transfer_eps"]
        ).to_dict()
    if policies:
        from bastion.defences.output import evaluate_output_policies

        rows = evaluate_output_policies(clf, policies, [attack], x_eval, y_eval, x_pool=x_pool)
        doc["hardening"] = [r.to_dict() for r in rows]
    doc["findings"] = [f.to_dict() for f in extraction_findings(doc)]
    json_path, html_path = write_extraction_report(doc, opts["out"])
    fid = result.fidelity if result.fidelity is not None else 0.0
    console.print(
        f"{strategy} ({access}): fidelity {fid:.3f} with {result.queries} of "
        f"{result.query_budget} queries; copy accuracy {result.accuracy or 0.0:.3f} "
        f"(model {result.victim_accuracy or 0.0:.3f})"
    )
    if doc["transfer"]:
        console.print(f"transfer rate {doc['transfer']['transfer_rate']:.3f}")
    console.print(f"wrote {json_path} and {html_path}")
    if opts["fail_above"] is not None and fid > opts["fail_above"]:
        err_console.print(f"fidelity {fid:.3f} is above --fail-above {opts['fail_above']}")
        raise typer.Exit(1)
