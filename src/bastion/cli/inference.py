"""``bastion evaluate membership`` and ``bastion evaluate inversion``.

Each runs an audit with one check (``membership`` / ``inversion``) and writes the same
``bastion.audit/1`` document as ``bastion audit``: report.json, report.html (the ROC on log
axes; each reconstruction beside its class mean) and report.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from bastion.cli._common import handle_errors
from bastion.errors import ConfigurationError

__all__ = ["MEMBERSHIP_ATTACKS", "register"]

MEMBERSHIP_ATTACKS = ("loss", "confidence", "label-only", "shadow", "lira", "lira-offline")
#: the command's attack names → the membership check's (``lira`` there is the offline one)
_CHECK_ATTACK = {"lira": "lira-online", "lira-offline": "lira"}
_FORCE = typer.Option(False, "--force", help="Replace an existing report in --out.")


def register(evaluate_app: typer.Typer) -> None:
    """Add ``membership`` and ``inversion`` to the ``bastion evaluate`` group."""
    evaluate_app.command("membership")(membership_cmd)
    evaluate_app.command("inversion")(inversion_cmd)


# -- membership -----------------------------------------------------------------------------
def membership_cmd(
    model: Path = typer.Option(..., "--model", "-m", help="Model file (see evaluate evasion)."),
    members: Path = typer.Option(..., "--members", help=".npz (x, y) of training members."),
    non_members: Path = typer.Option(
        ..., "--non-members", help=".npz (x, y) of samples the model did not train on."
    ),
    attack: list[str] = typer.Option(
        ["loss"], "--attack", "-a", help=f"Repeat for several: {', '.join(MEMBERSHIP_ATTACKS)}."
    ),
    population: Path | None = typer.Option(
        None, "--population", help=".npz (x, y) of the attacker's own data (shadow, lira)."
    ),
    n_reference: int = typer.Option(8, "--n-reference", help="Reference/shadow models."),
    epochs: int = typer.Option(30, "--epochs", help="Epochs of each reference model."),
    out: Path = typer.Option(
        Path("bastion-membership"),
        "--out",
        "-o",
        help="Report folder; an existing report is kept unless --force.",
    ),
    force: bool = _FORCE,
    factory: str | None = typer.Option(None, "--factory", help="module:function for a state_dict."),
    input_shape: str | None = typer.Option(None, "--input-shape", help="e.g. 1,8,8."),
    num_classes: int | None = typer.Option(None, "--num-classes", help="Number of classes."),
    bounds: str = typer.Option("0,1", "--bounds", help="Valid input range low,high."),
    max_queries: int | None = typer.Option(
        None, "--max-queries", help="Query budget on the model for each attack."
    ),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help="Allow pickle model files."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Membership inference: ROC, AUC, TPR at 1% and 0.1% FPR, empirical ε."""
    _membership(**locals())


@handle_errors
def _membership(**opts: Any) -> None:
    from bastion.audit.config import AuditConfig, AuditThreat
    from bastion.cli._one_check import model_options, run_one_check

    names = [a.lower() for a in opts["attack"]]
    unknown = [a for a in names if a not in MEMBERSHIP_ATTACKS]
    if unknown:
        raise ConfigurationError(
            f"unknown membership attack {unknown[0]!r}; choose from {', '.join(MEMBERSHIP_ATTACKS)}"
        )
    if opts["population"] is None and any(a in ("shadow", "lira", "lira-offline") for a in names):
        raise ConfigurationError(
            "shadow and lira attacks need the attacker's own data: pass --population D.npz"
        )
    if opts["max_queries"] is not None and opts["max_queries"] < 1:
        raise ConfigurationError("--max-queries must be at least 1")
    if opts["n_reference"] < 2 or opts["epochs"] < 1:
        raise ConfigurationError("--n-reference must be at least 2 and --epochs at least 1")
    settings = {
        "attacks": [_CHECK_ATTACK.get(a, a) for a in names],
        "population": None if opts["population"] is None else str(opts["population"]),
        "n_reference": opts["n_reference"],
        "reference_epochs": opts["epochs"],
        "max_samples": 2**31 - 1,  # every member and non-member given
        "max_queries": opts["max_queries"],
    }
    config = AuditConfig(
        model=str(opts["model"]),
        train=opts["members"],
        test=opts["non_members"],
        out=opts["out"],
        seed=opts["seed"],
        threat=AuditThreat(query_budget=None),
        model_options=model_options(opts),
        settings={"membership": settings},
    )
    run_one_check(
        "membership",
        config,
        command="evaluate membership",
        quiet=opts["quiet"],
        force=opts["force"],
    )


# -- inversion ------------------------------------------------------------------------------
def inversion_cmd(
    model: Path = typer.Option(..., "--model", "-m", help="Model file (see evaluate evasion)."),
    classes: str = typer.Option(..., "--classes", help="Classes to invert, e.g. 0,1,2."),
    out: Path = typer.Option(
        Path("bastion-inversion"),
        "--out",
        "-o",
        help="Report folder; an existing report is kept unless --force.",
    ),
    force: bool = _FORCE,
    reference: Path | None = typer.Option(
        None,
        "--reference",
        help=".npz (x, y) of training-like data: each reconstruction is shown and measured "
        "beside its class mean (required).",
    ),
    method: str = typer.Option("auto", "--method", help="auto (white-box), white-box or score."),
    steps: int = typer.Option(200, "--steps", help="Descent steps."),
    lr: float = typer.Option(0.05, "--lr", help="Step length."),
    tv: float = typer.Option(0.3, "--tv", help="Total-variation prior weight."),
    samples: int = typer.Option(20, "--samples", help="Score-based: direction pairs per step."),
    factory: str | None = typer.Option(None, "--factory", help="module:function for a state_dict."),
    input_shape: str | None = typer.Option(None, "--input-shape", help="e.g. 1,8,8."),
    num_classes: int | None = typer.Option(None, "--num-classes", help="Number of classes."),
    bounds: str = typer.Option("0,1", "--bounds", help="Valid input range low,high."),
    max_queries: int | None = typer.Option(None, "--max-queries", help="Query budget."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help="Allow pickle model files."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
) -> None:
    """MI-Face model inversion: one reconstructed representative per class, beside its mean."""
    _inversion(**locals())


@handle_errors
def _inversion(**opts: Any) -> None:
    from bastion.audit.config import AuditConfig, AuditThreat
    from bastion.cli._one_check import model_options, run_one_check
    from bastion.threat import Access

    try:
        wanted = [int(c) for c in opts["classes"].replace(" ", "").split(",") if c]
    except ValueError:
        raise ConfigurationError(
            f"--classes must be comma-separated integers, got {opts['classes']!r}"
        ) from None
    if not wanted:
        raise ConfigurationError("--classes needs at least one class")
    if opts["method"] not in ("auto", "white-box", "score"):
        raise ConfigurationError("--method must be auto, white-box or score")
    if opts["reference"] is None:
        raise ConfigurationError(
            "pass --reference D.npz (training-like data): each reconstruction is judged beside "
            "its class mean"
        )
    for name in ("steps", "samples"):
        if opts[name] < 1:
            raise ConfigurationError(f"--{name} must be at least 1")
    if opts["max_queries"] is not None and opts["max_queries"] < 1:
        raise ConfigurationError("--max-queries must be at least 1")
    settings = {
        "classes": wanted,
        "method": "score" if opts["method"] == "score" else "white-box",
        "steps": opts["steps"],
        "lr": opts["lr"],
        "tv": opts["tv"],
        "samples": opts["samples"],
        "max_queries": opts["max_queries"],
    }
    config = AuditConfig(
        model=str(opts["model"]),
        train=opts["reference"],
        out=opts["out"],
        seed=opts["seed"],
        threat=AuditThreat(
            access=Access.SCORES if opts["method"] == "score" else Access.WHITE_BOX,
            query_budget=None,
        ),
        model_options=model_options(opts),
        settings={"inversion": settings},
    )
    run_one_check(
        "inversion", config, command="evaluate inversion", quiet=True, force=opts["force"]
    )
