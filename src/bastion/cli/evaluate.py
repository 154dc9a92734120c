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

DEFAULT_DEMO_ATTACKS = ("fgsm", "pgd", "apgd-ce", "square", "deepfool")


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
    """Load ``x`` and ``y`` (an ``.npz``, or a ``.csv``/``.parquet`` table) and check them."""
    import numpy as np
    import torch

    from bastion.data import load_labelled

    x_np, y_np = load_labelled(path)
    if x_np.dtype.kind not in "fiu" or x_np.ndim < 2:
        raise InputError(
            f"x in {path} must be a numeric array of shape (n, ...), got {x_np.dtype} {x_np.shape}"
        )
    if y_np.ndim != 1 or y_np.shape[0] != x_np.shape[0]:
        raise InputError(
            f"y in {path} must be a 1-d array with one label per row of x; "
            f"got y {y_np.shape} for x {x_np.shape}"
        )
    if y_np.dtype.kind == "f":
        if not np.all(np.isfinite(y_np)) or not np.all(y_np == np.round(y_np)):
            raise InputError(f"y in {path} must hold integer class labels")
    elif y_np.dtype.kind not in "iu":
        raise InputError(f"y in {path} must hold integer class labels, got dtype {y_np.dtype}")
    x = torch.from_numpy(np.ascontiguousarray(x_np, dtype=np.float32))
    y = torch.from_numpy(y_np.astype(np.int64))
    if x_np.dtype == np.uint8 and bounds == (0.0, 1.0) and x_np.max(initial=0) > 1:
        raise InputError(
            f"x in {path} holds uint8 pixels in [0, 255] but the model's bounds are [0, 1]; "
            "divide by 255 or pass --bounds 0,255"
        )
    return x, y


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
            "deepfool, square, hopskipjump, autoattack). Default: what the model allows: pgd "
            "with gradients, square on score-only image models, hopskipjump otherwise."
        ),
    ),
    norm: str = typer.Option("linf", "--norm", help="Perturbation norm: linf or l2."),
    eps: float = typer.Option(
        0.3, "--eps", help="Perturbation budget (success threshold for minimum-norm attacks)."
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
    from bastion.attacks.evasion.catalog import build_attack, default_attacks, runnable_attacks
    from bastion.audit.evasion import evaluate_evasion
    from bastion.models.loading import load_model
    from bastion.report import write_evasion_report

    lo_hi = parse_floats(opts["bounds"], "--bounds", 2)
    bounds = (lo_hi[0], lo_hi[1])
    dev = pick_device(opts["device"])
    x, y = load_xy(opts["data"], bounds)
    if opts["max_samples"] is not None:
        if opts["max_samples"] < 1:
            raise ConfigurationError("--max-samples must be at least 1")
        x, y = x[: opts["max_samples"]], y[: opts["max_samples"]]
    shape = parse_shape(opts["input_shape"]) or tuple(x.shape[1:])
    clf = load_model(
        opts["model"],
        input_shape=shape,
        num_classes=opts["num_classes"],
        bounds=bounds,
        factory=opts["factory"],
        trust_pickle=opts["trust_pickle"],
        device=dev,
    )
    overrides: dict[str, Any] = {"batch_size": opts["batch_size"], "seed": opts["seed"]}
    names = list(opts["attack"] or [])
    if not names:
        names = default_attacks(clf, opts["norm"])
        console.print(
            f"attack: {', '.join(names)} (the default for this model; it runs "
            f"{', '.join(runnable_attacks(clf, opts['norm']))})",
            highlight=False,
        )
    attacks = []
    for name in names:
        extra = dict(overrides)
        if opts["steps"] is not None and name.lower() in {
            "pgd",
            "apgd-ce",
            "apgd-dlr",
            "apgd-t",
            "cw",
            "deepfool",
            "autoattack",
        }:
            extra["steps"] = opts["steps"]
        if opts["max_queries"] is not None and name.lower() in {"square", "hopskipjump", "hsj"}:
            extra["max_queries"] = opts["max_queries"]
        attacks.append(build_attack(name, norm=opts["norm"], eps=opts["eps"], **extra))
    evaluation = evaluate_evasion(
        clf,
        x,
        y,
        attacks,
        curve_points=opts["curve_points"],
        progress=not opts["quiet"],
        model_name=str(opts["model"]),
    )
    json_path, html_path = write_evasion_report(evaluation.to_dict(), opts["out"])
    print_summary(evaluation.to_dict())
    console.print(f"wrote {json_path} and {html_path}")
    fail_under = opts["fail_under"]
    if fail_under is not None and evaluation.robust_accuracy < fail_under:
        err_console.print(
            f"robust accuracy {evaluation.robust_accuracy:.3f} is below --fail-under {fail_under}"
        )
        raise typer.Exit(1)


def print_summary(doc: dict[str, Any]) -> None:
    table = Table(title=f"Evasion robustness ({doc['norm']}, eps {doc['eps']})")
    for col in ("attack", "robust acc.", "success rate", "median norm", "queries/sample", "s"):
        table.add_column(col, justify="left" if col == "attack" else "right")
    for name, a in doc["attacks"].items():
        median = "—" if a["median_norm"] is None else f"{a['median_norm']:.4g}"
        table.add_row(
            name,
            f"{a['robust_accuracy']:.3f}",
            f"{a['success_rate']:.3f}",
            median,
            f"{a['queries_per_sample']:.1f}",
            f"{a['seconds']:.2f}",
        )
    console.print(table)
    console.print(
        f"clean accuracy {doc['clean_accuracy']:.3f} · robust accuracy (worst case) "
        f"{doc['robust_accuracy']:.3f} · n {doc['n']}"
    )
    for w in doc["warnings"]:
        console.print(f"[yellow]warning:[/] {w}")


def demo_cmd(
    out: Path = typer.Option(
        Path("demo-out"), "--out", "-o", help="Folder for the demo's report and model."
    ),
    eps: float = typer.Option(0.1, "--eps", help="L∞ budget (pixels in [0, 1])."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Train a small CNN on scikit-learn's digits (seeded, seconds) and evaluate its robustness."""
    _demo(out=out, eps=eps, seed=seed, device=device, quiet=quiet)


@handle_errors
def _demo(*, out: Path, eps: float, seed: int, device: str, quiet: bool) -> None:
    import torch

    from bastion.attacks.evasion.catalog import build_attack
    from bastion.audit.evasion import evaluate_evasion
    from bastion.data import load_digits
    from bastion.models import TorchClassifier
    from bastion.models.zoo import small_cnn, train_classifier
    from bastion.report import write_evasion_report

    dev = pick_device(device)
    if dev.type == "cpu" and "--threads" not in sys.argv:
        # a tiny model: thread start-up costs more than it saves, badly so on a busy machine
        torch.set_num_threads(1)
    data = load_digits()
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    x, y = data.x[perm], data.y[perm]
    x_train, y_train, x_test, y_test = x[:1400], y[:1400], x[1400:], y[1400:]
    console.print(f"training a small CNN on {len(x_train)} digits (seed {seed}) ...")
    torch.manual_seed(seed)  # the initial weights too, so the whole demo repeats exactly
    net = small_cnn((1, 8, 8), 10, width=8).to(dev)
    train_classifier(net, x_train, y_train, epochs=10, lr=3e-3, seed=seed)
    clf = TorchClassifier(net, input_shape=(1, 8, 8), num_classes=10, bounds=(0.0, 1.0))
    attacks = [
        build_attack(name, norm="linf", eps=eps, seed=seed, **_demo_budget(name))
        for name in DEFAULT_DEMO_ATTACKS
    ]
    evaluation = evaluate_evasion(
        clf, x_test, y_test, attacks, curve_points=6, progress=not quiet, model_name="demo-cnn"
    )
    out.mkdir(parents=True, exist_ok=True)
    json_path, html_path = write_evasion_report(evaluation.to_dict(), out)
    print_summary(evaluation.to_dict())
    console.print(f"wrote {json_path} and {html_path}")


def _demo_budget(name: str) -> dict[str, Any]:
    if name == "square":
        return {"max_queries": 500}
    if name == "apgd-ce":
        return {"steps": 50}
    return {}
