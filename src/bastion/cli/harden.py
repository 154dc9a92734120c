"""``bastion harden adversarial|dp|smooth``: train a hardened model and measure the fix.

Each subcommand builds (or loads) a baseline, hardens a copy of it, and evaluates both with the
same attacks on the same held-out samples, writing to ``--out``:

- ``report.json``: ``before`` and ``after`` (clean accuracy, robust accuracy under the evasion
  suite, its per-attack numbers and findings; certified accuracy for ``smooth``; ε for ``dp``),
  a ``summary`` of the changes, the training report and the data and model used;
- ``report.html``: the same, self-contained;
- ``model.pt``: the hardened model's ``state_dict`` (load it with the same architecture).

The baseline is ``--model FILE`` (a torch model; a state dict needs ``--factory mod:fn``) or a
fresh ``--arch`` trained normally for ``--baseline-epochs``. ``adversarial`` (PGD-AT or TRADES)
and ``smooth`` (Gaussian augmentation) fine-tune a copy of the baseline; ``dp`` trains the same
architecture from fresh weights with DP-SGD, since fine-tuning a model that saw the data without
privacy would void the guarantee. Data: ``digits``, ``mnist`` (the shared idx files) or an
``.npz`` with ``x`` and ``y``; a seeded split holds out ``--test-fraction`` for evaluation, of
which the first ``--max-samples`` are attacked.
"""

from __future__ import annotations

import io
import logging
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from bastion.cli._common import console, err_console, handle_errors, parse_floats
from bastion.cli.evaluate import load_xy, pick_device
from bastion.errors import ConfigurationError, InputError, ModelError

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["register"]

log = logging.getLogger(__name__)

ITERATIVE = {"pgd", "apgd-ce", "apgd-dlr", "apgd-t", "cw", "deepfool", "autoattack", "aa"}


def register(app: typer.Typer) -> typer.Typer:
    """Add the ``harden`` group (``adversarial``, ``dp``, ``smooth``) to ``app``; return it."""
    harden_app = typer.Typer(
        help=(
            "Harden a model (adversarial training, DP-SGD, randomized smoothing) and write a "
            "before/after report; `fix --audit DIR` hardens against an audit's findings and "
            "reruns the audit."
        ),
        no_args_is_help=True,
    )
    harden_app.command("adversarial")(adversarial_cmd)
    harden_app.command("dp")(dp_cmd)
    harden_app.command("smooth")(smooth_cmd)
    from bastion.cli._harden_fix import fix_cmd

    harden_app.command("fix")(fix_cmd)
    app.add_typer(harden_app, name="harden")
    return harden_app


# -- options shared by the three subcommands ------------------------------------------------
_DATA = typer.Option(
    "digits", "--data", "-d", help="digits, mnist, an .npz with x and y, or a .csv/.parquet table."
)
_ARCH = typer.Option("small_cnn", "--arch", help="Baseline architecture: small_cnn or small_mlp.")
_MODEL = typer.Option(
    None, "--model", "-m", help="Baseline torch model file to start from (instead of --arch)."
)
_FACTORY = typer.Option(
    None, "--factory", help="module:function building the nn.Module for a state_dict --model."
)
_TRUST = typer.Option(
    False, "--trust-pickle", help="Allow pickle-based model files (they can run code on load)."
)
_BOUNDS = typer.Option("0,1", "--bounds", help="Valid input range low,high (for .npz data).")
_EPOCHS = typer.Option(10, "--epochs", help="Epochs of hardening.")
_BASE_EPOCHS = typer.Option(
    10, "--baseline-epochs", help="Epochs of normal training for an --arch baseline."
)
_BATCH = typer.Option(128, "--batch-size", help="Training batch size (expected size for dp).")
_ATTACK = typer.Option(
    ["pgd", "autoattack"],
    "--attack",
    "-a",
    help="Evaluation attack; repeat for several (as in bastion evaluate evasion).",
)
_STEPS = typer.Option(None, "--steps", help="Iterations of the evaluation's iterative attacks.")
_QUERIES = typer.Option(
    None, "--max-queries", help="Query budget per sample for square (also inside autoattack)."
)
_MAX_SAMPLES = typer.Option(500, "--max-samples", help="Held-out samples to evaluate on.")
_TEST_FRACTION = typer.Option(0.2, "--test-fraction", help="Share of the data held out.")
_CURVE = typer.Option(5, "--curve-points", help="Radii on the robustness curve (0 to skip).")
_OUT = typer.Option(
    Path("bastion-harden"), "--out", "-o", help="Folder for report.json, report.html, model.pt."
)
_SEED = typer.Option(0, "--seed", help="Random seed (split, weights, training, attacks).")
_DEVICE = typer.Option("auto", "--device", help="auto, cpu or cuda.")
_QUIET = typer.Option(False, "--quiet", "-q", help="No progress bars.")
_FAIL_UNDER = typer.Option(
    None, "--fail-under",
    help="Exit with code 1 when the hardened model's robust accuracy is below this value.",
)  # fmt: skip


def adversarial_cmd(
    data: str = _DATA,
    arch: str = _ARCH,
    model: Path | None = _MODEL,
    factory: str | None = _FACTORY,
    trust_pickle: bool = _TRUST,
    bounds: str = _BOUNDS,
    method: str = typer.Option(
        "pgd",
        "--method",
        help="pgd (Madry PGD-AT), trades, fast (FGSM from a random start, with a "
        "catastrophic-overfitting guard) or free (minibatch replay; --epochs is the budget).",
    ),
    alpha: float | None = typer.Option(
        None, "--alpha", help="fast: the FGSM step (default 1.25 x eps)."
    ),
    replays: int = typer.Option(4, "--replays", help="free: replays of each mini-batch."),
    no_guard: bool = typer.Option(
        False, "--no-guard", help="fast: no catastrophic-overfitting guard."
    ),
    norm: str = typer.Option("linf", "--norm", help="Threat model norm: linf or l2."),
    eps: float = typer.Option(0.1, "--eps", help="Budget trained against and evaluated at."),
    train_steps: int = typer.Option(10, "--train-steps", help="PGD steps of the inner attack."),
    beta: float = typer.Option(6.0, "--beta", help="TRADES trade-off weight."),
    patience: int = typer.Option(3, "--patience", help="Early-stopping patience (epochs)."),
    epochs: int = _EPOCHS,
    baseline_epochs: int = _BASE_EPOCHS,
    lr: float = typer.Option(1e-3, "--lr", help="Learning rate (Adam)."),
    schedule: str = typer.Option(
        "auto", "--schedule",
        help="Learning-rate schedule: auto (constant for short runs, cosine for long ones), "
        "constant, cosine, linear, step or onecycle.",
    ),
    warmup_eps_epochs: float | None = typer.Option(
        None, "--warmup-eps-epochs",
        help="Epochs over which eps ramps up from 0 (0: none; default: 15% of the run).",
    ),
    batch_size: int = _BATCH,
    attack: list[str] = _ATTACK,
    steps: int | None = _STEPS,
    max_queries: int | None = _QUERIES,
    max_samples: int = _MAX_SAMPLES,
    test_fraction: float = _TEST_FRACTION,
    curve_points: int = _CURVE,
    out: Path = _OUT,
    seed: int = _SEED,
    device: str = _DEVICE,
    quiet: bool = _QUIET,
    fail_under: float | None = _FAIL_UNDER,
) -> None:
    """Adversarial training (PGD-AT, TRADES, fast or free AT) of a copy of the baseline."""
    _harden("adversarial", dict(locals()))


def dp_cmd(
    data: str = _DATA,
    arch: str = _ARCH,
    model: Path | None = _MODEL,
    factory: str | None = _FACTORY,
    trust_pickle: bool = _TRUST,
    bounds: str = _BOUNDS,
    target_epsilon: float | None = typer.Option(
        2.0, "--target-epsilon", help="Privacy budget ε; the noise is calibrated to it."
    ),
    noise_multiplier: float | None = typer.Option(
        None, "--noise-multiplier", help="Fixed noise σ instead of --target-epsilon."
    ),
    delta: float = typer.Option(1e-5, "--delta", help="Privacy parameter δ."),
    max_grad_norm: float = typer.Option(1.0, "--max-grad-norm", help="Per-sample clipping norm."),
    accountant: str = typer.Option("rdp", "--accountant", help="rdp or prv."),
    norm: str = typer.Option("linf", "--norm", help="Norm of the evaluation attacks."),
    eps: float = typer.Option(0.1, "--eps", help="Budget of the evaluation attacks."),
    epochs: int = _EPOCHS,
    baseline_epochs: int = _BASE_EPOCHS,
    lr: float = typer.Option(0.5, "--lr", help="Learning rate (SGD)."),
    batch_size: int = typer.Option(100, "--batch-size", help="Expected Poisson batch size."),
    attack: list[str] = _ATTACK,
    steps: int | None = _STEPS,
    max_queries: int | None = _QUERIES,
    max_samples: int = _MAX_SAMPLES,
    test_fraction: float = _TEST_FRACTION,
    curve_points: int = _CURVE,
    out: Path = _OUT,
    seed: int = _SEED,
    device: str = _DEVICE,
    quiet: bool = _QUIET,
    fail_under: float | None = _FAIL_UNDER,
) -> None:
    """Differentially private training (DP-SGD) of the baseline's architecture."""
    opts = dict(locals())
    if noise_multiplier is not None:
        opts["target_epsilon"] = None
    _harden("dp", opts)


def smooth_cmd(
    data: str = _DATA,
    arch: str = _ARCH,
    model: Path | None = _MODEL,
    factory: str | None = _FACTORY,
    trust_pickle: bool = _TRUST,
    bounds: str = _BOUNDS,
    sigma: float = typer.Option(0.5, "--sigma", help="Noise level of training and smoothing."),
    n0: int = typer.Option(100, "--n0", help="Noise draws that select the class."),
    n: int = typer.Option(1000, "--n", help="Noise draws that certify it."),
    alpha: float = typer.Option(0.001, "--alpha", help="Failure probability of a certificate."),
    norm: str = typer.Option("l2", "--norm", help="Norm of the evaluation attacks."),
    eps: float = typer.Option(
        0.5, "--eps", help="L2 radius for certified accuracy (and the attacks' budget)."
    ),
    epochs: int = _EPOCHS,
    baseline_epochs: int = _BASE_EPOCHS,
    lr: float = typer.Option(1e-3, "--lr", help="Learning rate (Adam)."),
    batch_size: int = _BATCH,
    attack: list[str] = _ATTACK,
    steps: int | None = _STEPS,
    max_queries: int | None = _QUERIES,
    max_samples: int = _MAX_SAMPLES,
    test_fraction: float = _TEST_FRACTION,
    curve_points: int = _CURVE,
    out: Path = _OUT,
    seed: int = _SEED,
    device: str = _DEVICE,
    quiet: bool = _QUIET,
    fail_under: float | None = _FAIL_UNDER,
) -> None:
    """Gaussian-augmentation training and randomized-smoothing certification."""
    _harden("smooth", dict(locals()))


# -- the shared flow ------------------------------------------------------------------------
@dataclass(frozen=True)
class _Data:
    source: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    bounds: tuple[float, float]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


@handle_errors
def _harden(defence: str, opts: dict[str, Any]) -> None:
    import torch

    from bastion.cli._harden_report import print_summary, summarise, write_report

    start = time.perf_counter()
    _check_options(opts)
    dev = pick_device(opts["device"])
    data = _load_data(opts)
    trainer = _trainer(defence, opts, dev, data.bounds)  # bad parameters fail before training
    _attacks(opts)  # and so do bad attack names and options
    x_eval, y_eval = data.x_test[: opts["max_samples"]], data.y_test[: opts["max_samples"]]
    baseline, model_info, num_classes = _baseline(data, opts, dev)
    data = replace(data, num_classes=num_classes)

    if not opts["quiet"]:
        console.print(f"evaluating the baseline on {len(x_eval)} held-out samples ...")
    before = _evaluate(baseline, data, x_eval, y_eval, opts, defence, "baseline")
    if defence == "dp":
        before["epsilon"] = None  # trained without privacy: no finite guarantee

    if not opts["quiet"]:
        console.print(f"hardening ({defence}) ...")
    hardened, training = _train(defence, trainer, baseline, data, opts)

    if not opts["quiet"]:
        console.print("evaluating the hardened model ...")
    after = _evaluate(hardened, data, x_eval, y_eval, opts, defence, "hardened")
    privacy = None
    if defence == "dp":
        after["epsilon"] = training["privacy"]["epsilon"]
        if not opts["quiet"]:
            console.print("measuring membership inference before and after ...")
        privacy = {
            "before": _membership(baseline, data, opts),
            "after": _membership(hardened, data, opts),
        }

    buffer = io.BytesIO()
    if isinstance(hardened, torch.jit.ScriptModule):  # a TorchScript baseline stays one
        _jit_save(hardened, buffer)
        model_format = "torchscript"
    else:
        torch.save({k: v.detach().cpu() for k, v in hardened.state_dict().items()}, buffer)
        model_format = "state_dict"
    doc = {
        "kind": "hardening",
        "defence": defence,
        "data": {
            "source": data.source,
            "input_shape": list(data.input_shape),
            "num_classes": data.num_classes,
            "bounds": list(data.bounds),
            "n_train": int(data.x_train.shape[0]),
            "n_test": int(data.x_test.shape[0]),
            "n_evaluated": int(x_eval.shape[0]),
        },
        "model": model_info,
        "threat": {"norm": opts["norm"], "eps": opts["eps"], "attacks": list(opts["attack"])},
        "training": training,
        "before": before,
        "after": after,
        "summary": summarise(defence, before, after, privacy),
        "files": {"model": "model.pt", "model_format": model_format},
        **({"privacy": privacy} if privacy is not None else {}),
        "seed": opts["seed"],
        "seconds": time.perf_counter() - start,
    }
    doc["warnings"] = (
        _training_warnings(training)
        + _no_gain_warnings(defence, doc, data, opts)
        + training.get("notes", [])
    )
    json_path, html_path, model_path = write_report(doc, opts["out"], buffer.getvalue())
    print_summary(doc)
    console.print(f"wrote {json_path}, {html_path} and {model_path}")
    for w in doc["warnings"]:
        err_console.print(f"[yellow]warning:[/] {w}", highlight=False)
    fail_under = opts.get("fail_under")
    if fail_under is not None and after["robust_accuracy"] < fail_under:
        err_console.print(
            f"robust accuracy {after['robust_accuracy']:.3f} of the hardened model is below "
            f"--fail-under {fail_under}", highlight=False,
        )
        raise typer.Exit(1)


def _training_warnings(training: dict[str, Any]) -> list[str]:
    """One line per training diagnostic (training accuracy near chance, robust accuracy not
    rising, eps too large for the data): what was seen, the likely cause, the change to try."""
    return [
        f"adversarial training: {d['message']}. Likely cause: {d['cause']}. Try: {d['fix']}"
        for d in training.get("report", {}).get("diagnostics", [])
    ]


def _no_gain_warnings(
    defence: str, doc: dict[str, Any], data: _Data, opts: dict[str, Any]
) -> list[str]:
    """Warnings for a hardening run that did not make the model more robust, with the reason
    when it is the budget: an eps too large for the distances between the data's classes."""
    from bastion.audit.scale import class_separation

    if defence == "dp":
        return []  # DP-SGD buys privacy, not robustness: no gain is expected
    key = "certified_accuracy" if defence == "smooth" else "robust_accuracy"
    row = doc["summary"][key]
    if row["after"] > row["before"]:
        return []
    what = key.replace("_", " ")
    message = (
        f"hardening achieved nothing: {what} {row['before']:.3f} before, {row['after']:.3f} "
        "after"
    )
    history = doc["training"].get("report", {}).get("history", [])
    if history and max(h["train_accuracy"] for h in history) <= 0.05:
        message += " (training accuracy under attack stayed at or near 0 every epoch)"
    eps = float(opts["eps"])
    sep = class_separation(data.x_train, data.y_train, norm=opts["norm"], seed=opts["seed"])
    if sep.too_large(eps):
        message += (
            f". --eps {eps:g} is too large for this data's scale: it is "
            f"{sep.ratio(eps):.0%} of the median half-distance between a sample and the nearest "
            f"sample of another class ({sep.median_half_distance:.3g} in {sep.norm.value}), so "
            "most eps-balls nearly reach another class and no model can be robust there; "
            f"try --eps {sep.suggested_eps():.2g} or less"
        )
    else:
        message += (
            f". --eps {eps:g} is within this data's scale ({sep.ratio(eps):.0%} of the median "
            f"half-distance between classes, {sep.median_half_distance:.3g}): train longer "
            "(--epochs), or lower --lr"
        )
    return [message]


def _check_options(opts: dict[str, Any]) -> None:
    if opts["max_samples"] < 1:
        raise ConfigurationError("--max-samples must be at least 1")
    if not 0.0 < opts["test_fraction"] < 1.0:
        raise ConfigurationError(
            f"--test-fraction must lie strictly between 0 and 1, got {opts['test_fraction']}"
        )
    for key in ("epochs", "baseline_epochs", "batch_size"):
        if opts[key] < 1:
            raise ConfigurationError(f"--{key.replace('_', '-')} must be at least 1")
    if not (math.isfinite(opts["eps"]) and opts["eps"] > 0):
        raise ConfigurationError(f"--eps must be a positive number, got {opts['eps']}")
    if opts["curve_points"] < 0:
        raise ConfigurationError("--curve-points must be 0 or more")
    if opts["model"] is None and opts["factory"] is not None:
        raise ConfigurationError("--factory needs --model (the state dict to load)")
    if opts["arch"] not in {"small_cnn", "small_mlp"}:
        raise ConfigurationError(f"--arch must be small_cnn or small_mlp, got {opts['arch']!r}")
    if not opts["attack"]:
        raise ConfigurationError("give at least one --attack")


def _load_data(opts: dict[str, Any]) -> _Data:
    import torch

    from bastion.data import load_digits, load_mnist
    from bastion.models.base import check_bounds

    source = str(opts["data"])
    if source.lower() in {"digits", "mnist"}:
        ds = load_digits() if source.lower() == "digits" else load_mnist()
        x, y, num_classes, bounds = ds.x, ds.y, ds.num_classes, ds.bounds
    else:
        path = Path(source)
        if path.suffix.lower() not in (".npz", ".csv", ".parquet"):
            raise InputError(
                f"--data must be digits, mnist, an .npz (arrays x and y) or a .csv/.parquet "
                f"table, got {source!r}"
            )
        lo_hi = parse_floats(opts["bounds"], "--bounds", 2)
        bounds = (lo_hi[0], lo_hi[1])
        if not (math.isfinite(bounds[0]) and math.isfinite(bounds[1]) and bounds[0] < bounds[1]):
            raise ConfigurationError(f"--bounds must be low,high with low < high, got {bounds}")
        x, y = load_xy(path, bounds)
        if y.numel() and int(y.min()) < 0:
            raise InputError(f"y in {path} has negative labels; labels must be 0..K-1")
        num_classes = max(2, int(y.max()) + 1) if y.numel() else 2
    check_bounds(x, bounds, name=f"x in {source}")
    n = int(x.shape[0])
    n_test = round(n * opts["test_fraction"])
    if n_test < 1 or n - n_test < 2:
        raise InputError(
            f"{source} has {n} samples: too few to hold out a test split of "
            f"{opts['test_fraction']:g} and train on the rest"
        )
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(opts["seed"]))
    x, y = x[perm], y[perm]
    return _Data(
        source, x[n_test:], y[n_test:], x[:n_test], y[:n_test], num_classes, bounds
    )  # fmt: skip


def _new_arch(data: _Data, opts: dict[str, Any], dev: torch.device) -> nn.Module:
    import torch

    from bastion.models.zoo import small_cnn, small_mlp

    torch.manual_seed(opts["seed"])
    shape = data.input_shape
    if opts["arch"] == "small_cnn":
        if len(shape) != 3:
            raise ConfigurationError(
                f"small_cnn needs image inputs (channels, height, width); the data has shape "
                f"{shape}: use --arch small_mlp"
            )
        net = small_cnn((shape[0], shape[1], shape[2]), data.num_classes)
    else:
        net = small_mlp(math.prod(shape), data.num_classes)
    return net.to(dev)


def _baseline(
    data: _Data, opts: dict[str, Any], dev: torch.device
) -> tuple[nn.Module, dict[str, Any], int]:
    """The baseline module, a description of it, and its number of classes."""
    from bastion.models import TorchClassifier
    from bastion.models.loading import load_model
    from bastion.models.zoo import train_classifier

    if opts["model"] is None:
        net = _new_arch(data, opts, dev)
        if not opts["quiet"]:
            console.print(
                f"training a baseline {opts['arch']} on {len(data.x_train)} samples "
                f"({opts['baseline_epochs']} epochs) ..."
            )
        train_classifier(
            net,
            data.x_train,
            data.y_train,
            epochs=opts["baseline_epochs"],
            lr=3e-3,
            seed=opts["seed"],
            progress=not opts["quiet"],
        )
        return net, {"arch": opts["arch"], "baseline": "trained"}, data.num_classes
    clf = load_model(
        opts["model"],
        input_shape=data.input_shape,
        bounds=data.bounds,
        factory=opts["factory"],
        trust_pickle=opts["trust_pickle"],
        device=dev,
    )
    if not isinstance(clf, TorchClassifier):
        raise ModelError(
            f"{opts['model']} loaded as {type(clf).__name__}; hardening retrains the model, so "
            "give a torch model (a state dict with --factory, or TorchScript)"
        )
    if clf.num_classes < data.num_classes:
        raise InputError(
            f"the model has {clf.num_classes} classes but the data has labels up to "
            f"{data.num_classes - 1}"
        )
    info = {"file": str(opts["model"]), "factory": opts["factory"], "baseline": "loaded"}
    return clf.module, info, clf.num_classes


def _trainer(
    defence: str, opts: dict[str, Any], dev: torch.device, bounds: tuple[float, float]
) -> Any:
    """The configured trainer (its constructor checks the parameters before any training)."""
    if defence == "adversarial":
        from bastion.defences.training.cheap import make_adversarial_trainer

        return make_adversarial_trainer(
            opts["method"],
            eps=opts["eps"],
            norm=opts["norm"],
            steps=opts["train_steps"],
            beta=opts["beta"],
            alpha=opts["alpha"],
            replays=opts["replays"],
            guard=not opts["no_guard"],
            epochs=opts["epochs"],
            lr=opts["lr"],
            schedule=opts["schedule"],
            warmup_eps_epochs=opts["warmup_eps_epochs"],
            batch_size=opts["batch_size"],
            patience=opts["patience"],
            bounds=bounds,
            device=dev,
            seed=opts["seed"],
            progress=not opts["quiet"],
        )
    if defence == "dp":
        from bastion.defences.training.dp import DPSGDTrainer

        return DPSGDTrainer(
            epochs=opts["epochs"],
            noise_multiplier=opts["noise_multiplier"],
            target_epsilon=opts["target_epsilon"],
            delta=opts["delta"],
            max_grad_norm=opts["max_grad_norm"],
            batch_size=opts["batch_size"],
            accountant=opts["accountant"],
            lr=opts["lr"],
            seed=opts["seed"],
        )
    sigma, alpha = opts["sigma"], opts["alpha"]
    if not (math.isfinite(sigma) and sigma > 0):
        raise ConfigurationError(f"--sigma must be a positive number, got {sigma}")
    if opts["n0"] < 1 or opts["n"] < 1:
        raise ConfigurationError("--n0 and --n must be at least 1")
    if not 0.0 < alpha < 1.0:
        raise ConfigurationError(f"--alpha must lie strictly between 0 and 1, got {alpha}")
    return None


def _train(
    defence: str, trainer: Any, baseline: nn.Module, data: _Data, opts: dict[str, Any]
) -> tuple[nn.Module, dict[str, Any]]:
    if defence == "adversarial":
        from bastion.defences.training.adversarial import diagnostic_finding
        from bastion.defences.training.cheap import describe_method

        net = _copy(baseline)
        n_val = min(500, max(1, len(data.x_train) // 10))
        report = trainer.fit(
            net,
            (data.x_train[n_val:], data.y_train[n_val:]),
            val=(data.x_train[:n_val], data.y_train[:n_val]),
        )
        guard = getattr(report, "guard", None)
        return net, {
            "trainer": repr(trainer),
            "method": describe_method(trainer),
            "initialisation": "the baseline's weights",
            "n_val": n_val,
            "report": report.to_dict(),
            "notes": [guard["summary"]] if guard and guard["fired"] else [],
            "findings": [
                diagnostic_finding(d).to_dict() for d in getattr(report, "diagnostics", ())
            ],
        }
    if defence == "dp":
        net = _fresh_weights(baseline, opts["seed"])
        privacy = trainer.fit(net, data.x_train, data.y_train)
        return net, {
            "trainer": repr(trainer),
            "initialisation": "fresh weights (a non-private start would void the guarantee)",
            "privacy": privacy.to_dict(),
        }
    from bastion.defences.certify import train_gaussian_augmentation

    net = _copy(baseline)
    report_ga = train_gaussian_augmentation(
        net,
        data.x_train,
        data.y_train,
        sigma=opts["sigma"],
        epochs=opts["epochs"],
        lr=opts["lr"],
        batch_size=opts["batch_size"],
        seed=opts["seed"],
        progress=not opts["quiet"],
    )
    return net, {"initialisation": "the baseline's weights", "report": report_ga.to_dict()}


# torch is imported only when a command runs (--help stays fast): the shared helpers lazily
def _jit_save(net: nn.Module, buffer: io.BytesIO) -> None:
    from bastion.defences.training.modules import jit_save

    jit_save(net, buffer)


def _copy(net: nn.Module) -> nn.Module:
    from bastion.defences.training.modules import trainable_copy

    return trainable_copy(net)


def _fresh_weights(baseline: nn.Module, seed: int) -> nn.Module:
    from bastion.defences.training.modules import fresh_weights

    return fresh_weights(baseline, seed)


def _attacks(opts: dict[str, Any]) -> list[Any]:
    from bastion.attacks.evasion.catalog import build_attack

    built = []
    for name in opts["attack"]:
        key = name.strip().lower()
        extra: dict[str, Any] = {"seed": opts["seed"]}
        if opts["steps"] is not None and key in ITERATIVE:
            extra["steps"] = opts["steps"]
        if opts["max_queries"] is not None and key in {"square", "hopskipjump", "hsj"}:
            extra["max_queries"] = opts["max_queries"]
        if opts["max_queries"] is not None and key in {"autoattack", "aa"}:
            extra["square_queries"] = opts["max_queries"]
        built.append(build_attack(name, norm=opts["norm"], eps=opts["eps"], **extra))
    return built


def _evaluate(
    net: nn.Module,
    data: _Data,
    x: torch.Tensor,
    y: torch.Tensor,
    opts: dict[str, Any],
    defence: str,
    label: str,
) -> dict[str, Any]:
    from bastion.audit.evasion import evaluate_evasion
    from bastion.models import TorchClassifier

    clf = TorchClassifier(
        net, input_shape=data.input_shape, num_classes=data.num_classes, bounds=data.bounds
    )
    ev = evaluate_evasion(
        clf,
        x,
        y,
        _attacks(opts),
        curve_points=opts["curve_points"],
        progress=not opts["quiet"],
        model_name=label,
        hardening=defence if label == "hardened" else None,
    )
    doc = ev.to_dict()
    out: dict[str, Any] = {
        "clean_accuracy": ev.clean_accuracy,
        "robust_accuracy": ev.robust_accuracy,
        "attacks": {
            name: {"robust_accuracy": a["robust_accuracy"], "success_rate": a["success_rate"]}
            for name, a in doc["attacks"].items()
        },
        "curve": doc["curve"],
        "warnings": doc["warnings"],
        "findings": doc["findings"],
    }
    if defence == "smooth":
        out["certified"] = _certify(net, data, x, y, opts)
    return out


def _membership(net: nn.Module, data: _Data, opts: dict[str, Any]) -> dict[str, Any]:
    """The privacy effect as an attacker sees it: a loss-threshold membership attack on
    training samples (members) against held-out ones (non-members), as many of each."""
    import torch

    from bastion.attacks.inference import ThresholdAttack
    from bastion.models import TorchClassifier

    m = min(len(data.x_train), len(data.x_test), 1000)
    x = torch.cat([data.x_train[:m], data.x_test[:m]])
    y = torch.cat([data.y_train[:m], data.y_test[:m]])
    truth = torch.cat([torch.ones(m, dtype=torch.bool), torch.zeros(m, dtype=torch.bool)])
    clf = TorchClassifier(
        net, input_shape=data.input_shape, num_classes=data.num_classes, bounds=data.bounds
    )
    s = ThresholdAttack(signal="loss", seed=opts["seed"]).infer(clf, x, y, membership=truth)
    summary = s.summary()
    return {
        "attack": "loss",
        "n_members": m,
        "n_non_members": m,
        "auc": summary["auc"],
        "advantage": summary["advantage"],
        "tpr_at_1pct_fpr": summary["tpr_at_1pct_fpr"],
        "tpr_at_0_1pct_fpr": summary["tpr_at_0_1pct_fpr"],
        "epsilon_lower": summary["epsilon"]["lower"],
    }


def _certify(
    net: nn.Module, data: _Data, x: torch.Tensor, y: torch.Tensor, opts: dict[str, Any]
) -> dict[str, Any]:
    from bastion.defences.certify import SmoothedClassifier, certified_accuracy

    smoothed = SmoothedClassifier(
        net, sigma=opts["sigma"], num_classes=data.num_classes, seed=opts["seed"]
    )
    res = smoothed.certify(x, n0=opts["n0"], n=opts["n"], alpha=opts["alpha"])
    eps = float(opts["eps"])
    radii = sorted({0.0, eps, *(eps * k / 4 for k in range(1, 9))})
    curve = certified_accuracy(res, y, radii)
    return {
        "sigma": smoothed.sigma,
        "n0": res.n0,
        "n": res.n,
        "alpha": res.alpha,
        "radius": eps,
        "certified_accuracy": dict(curve)[eps],
        "accuracy": dict(curve)[0.0],
        "abstention_rate": float(res.abstained.double().mean()),
        "median_radius": float(res.radius.median()),
        "curve": [{"radius": r, "certified_accuracy": a} for r, a in curve],
    }
