"""``bastion evaluate evasion`` and ``bastion demo``."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from bastion.cli._common import console, err_console, handle_errors, parse_floats, parse_shape
from bastion.errors import ConfigurationError, InputError

if TYPE_CHECKING:
    import torch

__all__ = ["load_xy", "pick_device", "print_summary", "register"]

log = logging.getLogger(__name__)


def register(app: typer.Typer) -> typer.Typer:
    """Add ``evaluate`` (returned, so other areas can add their evaluations) and ``demo``."""
    evaluate_app = typer.Typer(
        help="Evaluate a model against attacks and write report.json and report.html.",
        no_args_is_help=True,
    )
    evaluate_app.command("evasion")(evaluate_evasion_cmd)
    app.add_typer(evaluate_app, name="evaluate")
    app.command("demo")(demo_cmd)
    return evaluate_app


def pick_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available; ``cpu``/``cuda`` force one."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigurationError("--device cuda was asked for but no CUDA device is available")
    if name not in {"cpu", "cuda"}:
        raise ConfigurationError(f"--device must be auto, cpu or cuda, got {name!r}")
    return torch.device(name)


def load_xy(path: Path, bounds: tuple[float, float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Load ``x`` and ``y`` from an ``.npz`` and check them (labels integral, x numeric)."""
    from bastion.audit.sources import load_dataset

    data = load_dataset(path, bounds)
    return data.x, data.y


def evaluate_evasion_cmd(
    model: Path = typer.Option(
        ...,
        "--model",
        "-m",
        help="Model file: TorchScript .pt, state_dict + --factory, .onnx, .skops, joblib.",
    ),
    data: Path = typer.Option(
        ..., "--data", "-d",
        help=".npz with arrays x (inputs) and y (labels), or a .csv/.parquet table (label "
        "column y, label, target or class, else the last).",
    ),
    attack: list[str] | None = typer.Option(
        None,
        "--attack",
        "-a",
        help=(
            "Attack to run; repeat for several (fgsm, pgd, apgd-ce, apgd-dlr, apgd-t, cw, "
            "deepfool, square, hopskipjump, autoattack)."
        ),
    ),
    norm: str = typer.Option("linf", "--norm", help="Perturbation norm: linf or l2."),
    eps: float = typer.Option(
        0.3, "--eps", help="Perturbation budget (success threshold for minimum-norm attacks)."
    ),
    out: Path = typer.Option(
        Path("bastion-evasion"), "--out", "-o",
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
    num_classes: int | None = typer.Option(
        None, "--num-classes", help="Number of classes (default: from the model)."
    ),
    bounds: str = typer.Option("0,1", "--bounds", help="Valid input range low,high."),
    max_samples: int | None = typer.Option(
        None, "--max-samples", help="Evaluate only the first N samples."
    ),
    steps: int | None = typer.Option(None, "--steps", help="Iterations for iterative attacks."),
    max_queries: int | None = typer.Option(
        None, "--max-queries", help="Query budget per sample for square and hopskipjump."
    ),
    batch_size: int = typer.Option(256, "--batch-size", help="Samples attacked at once."),
    seed: int = typer.Option(
        0, "--seed", help="Random seed (results are deterministic under a seed)."
    ),
    curve_points: int = typer.Option(
        6, "--curve-points", help="Radii on the robustness curve (0 to skip)."
    ),
    fail_under: float | None = typer.Option(
        None, "--fail-under", help="Exit with code 1 when robust accuracy is below this value."
    ),
    trust_pickle: bool = typer.Option(
        False,
        "--trust-pickle",
        help="Allow pickle-based model files (they can run code when loaded).",
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Evaluate a classifier's robustness to evasion attacks."""
    _evaluate(**locals())


@handle_errors
def _evaluate(**opts: Any) -> None:
    from bastion.audit.config import AuditConfig, AuditThreat
    from bastion.audit.runner import run_audit

    lo_hi = parse_floats(opts["bounds"], "--bounds", 2)
    if opts["max_samples"] is not None and opts["max_samples"] < 1:
        raise ConfigurationError("--max-samples must be at least 1")
    out: Path = opts["out"]
    refuse_existing(out, opts["force"])
    model_options: dict[str, Any] = {"bounds": list(lo_hi), "device": opts["device"],
                                     "trust_pickle": opts["trust_pickle"]}
    shape = parse_shape(opts["input_shape"])
    if shape is not None:
        model_options["input_shape"] = list(shape)
    if opts["factory"]:
        model_options["factory"] = opts["factory"]
    if opts["num_classes"] is not None:
        model_options["num_classes"] = opts["num_classes"]
    settings = {
        "attacks": list(opts["attack"] or []) or None,  # None: what the model allows
        "max_samples": opts["max_samples"] or 2**31 - 1,
        "subset": "first",
        "steps": opts["steps"],
        "max_queries": opts["max_queries"],
        "batch_size": opts["batch_size"],
        "curve_points": opts["curve_points"],
    }
    config = AuditConfig(
        model=str(opts["model"]), test=opts["data"], out=out, seed=opts["seed"],
        threat=AuditThreat(norm=opts["norm"], eps=opts["eps"], query_budget=None),
        model_options=model_options, settings={"evasion": settings},
    )
    outcome = run_audit(config, checks=("evasion",), command="evaluate evasion", fresh=True,
                        progress=not opts["quiet"], write=False)
    entry = one_check(outcome.document, "evasion")
    written = write_reports(outcome.document, out)
    print_summary(entry)
    console.print("wrote " + ", ".join(str(p) for p in written.values()))
    fail_under = opts["fail_under"]
    robust = entry["metrics"]["robust_accuracy"]["value"]
    if fail_under is not None and robust < fail_under:
        err_console.print(f"robust accuracy {robust:.3f} is below --fail-under {fail_under}")
        raise typer.Exit(1)


def refuse_existing(out: Path, force: bool) -> None:
    """Never overwrite a report silently: refuse unless ``--force``."""
    existing = [p for p in (out / "report.json", out / "report.html") if p.exists()]
    if existing and not force:
        raise ConfigurationError(
            f"{existing[0]} already exists; pass --force to replace it or choose another --out")


def one_check(doc: dict[str, Any], name: str) -> dict[str, Any]:
    """The entry of a one-check audit; its error (or not_run reason) is the command's error."""
    entry = next(c for c in doc["checks"] if c["name"] == name)
    if entry["status"] in ("error", "not_run"):
        reason = entry["reason"] or "the check did not run"
        raise InputError(reason.split(": ", 1)[1] if entry["status"] == "error"
                         and ": " in reason else reason)
    return entry


def write_reports(doc: dict[str, Any], out: Path) -> dict[str, Path]:
    from bastion.audit.runner import write_reports as _write

    return _write(doc, out)


def print_summary(entry: dict[str, Any]) -> None:
    """The attack table and the robust accuracy of an evasion check entry."""
    table_doc = entry["tables"][0]
    table = Table(title=entry["title"])
    for col in table_doc["columns"]:
        table.add_column(col, justify="left" if col == "attack" else "right")
    for row in table_doc["rows"]:
        table.add_row(*(_cell(v) for v in row))
    console.print(table)
    console.print(entry["summary"] or "")
    clean, robust = entry["metrics"]["clean_accuracy"], entry["metrics"]["robust_accuracy"]
    lo, hi = robust["ci"] or (0.0, 1.0)
    console.print(
        f"clean accuracy {clean['value']:.3f} · robust accuracy (worst case) "
        f"{robust['value']:.3f} [95% CI {lo:.3f}–{hi:.3f}] · n {robust['n']}"
    )
    for w in entry["settings"].get("warnings", []):
        console.print(f"[yellow]warning:[/] {w}")


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def demo_cmd(
    out: Path = typer.Option(
        Path("demo-out"), "--out", "-o", help="Folder for the demo's model, data and report."
    ),
    eps: float = typer.Option(0.1, "--eps", help="L∞ budget (pixels in [0, 1])."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    tabular: bool = typer.Option(
        False, "--tabular", help="The tabular demo instead: a credit table (CSV), its data "
        "contract and an XGBoost model, audited with region as the sensitive column."),
) -> None:
    """Train a small CNN on scikit-learn's digits (seeded, seconds) and audit it: every check
    that applies, one report (json, html, md)."""
    _demo(out=out, eps=eps, seed=seed, device=device, quiet=quiet, tabular=tabular)


@handle_errors
def _demo(*, out: Path, eps: float, seed: int, device: str, quiet: bool,
          tabular: bool = False) -> None:
    import torch

    from bastion.audit.demo import run_demo, run_tabular_demo
    from bastion.cli.audit import print_audit

    if tabular:
        console.print(f"writing a credit table, its contract and an XGBoost model (seed {seed}) "
                      "and auditing them")
        outcome = run_tabular_demo(out, seed=seed, progress=not quiet)
        print_audit(outcome.document)
        console.print("wrote " + ", ".join(str(p) for p in outcome.written.values()))
        return

    dev = pick_device(device)
    if dev.type == "cpu" and "--threads" not in sys.argv:
        # a tiny model: thread start-up costs more than it saves, badly so on a busy machine
        torch.set_num_threads(1)
    console.print(f"training a small CNN on scikit-learn's digits (seed {seed}) and auditing it")
    outcome = run_demo(out, eps=eps, seed=seed, device=str(dev), progress=not quiet)
    print_audit(outcome.document)
    for p in outcome.replaced:
        console.print(f"replaced the earlier {p}")
    console.print("wrote " + ", ".join(str(p) for p in outcome.written.values()))
