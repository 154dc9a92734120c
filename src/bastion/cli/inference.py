"""``bastion evaluate membership`` and ``bastion evaluate inversion``.

Both write ``report.json`` and a self-contained ``report.html`` (ROC and log-ROC charts for
membership; a grid of reconstructions, as inline PNGs, for inversion).
"""

from __future__ import annotations

import base64
import math
import struct
import time
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from bastion._progress import progress_bar
from bastion.cli._common import console, handle_errors, parse_floats, parse_shape
from bastion.errors import ConfigurationError, InputError

if TYPE_CHECKING:
    import numpy as np
    import torch

__all__ = ["png_bytes", "register"]

MEMBERSHIP_ATTACKS = ("loss", "confidence", "label-only", "shadow", "lira", "lira-offline")


def register(evaluate_app: typer.Typer) -> None:
    """Add ``membership`` and ``inversion`` to the ``bastion evaluate`` group."""
    evaluate_app.command("membership")(membership_cmd)
    evaluate_app.command("inversion")(inversion_cmd)


# -- shared option parsing ------------------------------------------------------------------
def _load(opts: dict[str, Any], shape: tuple[int, ...] | None) -> Any:
    from bastion.cli.evaluate import pick_device
    from bastion.models.loading import load_model

    lo, hi = parse_floats(opts["bounds"], "--bounds", 2)
    clf = load_model(
        opts["model"],
        input_shape=shape,
        num_classes=opts["num_classes"],
        bounds=(lo, hi),
        factory=opts["factory"],
        trust_pickle=opts["trust_pickle"],
        device=pick_device(opts["device"]),
    )
    if opts.get("max_queries") is not None:
        if opts["max_queries"] < 1:
            raise ConfigurationError("--max-queries must be at least 1")
        clf.query_budget = int(opts["max_queries"])  # type: ignore[attr-defined]
    return clf


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
    out: Path = typer.Option(Path("bastion-membership"), "--out", "-o", help="Report folder."),
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


def _build(name: str, opts: dict[str, Any], shape: tuple[int, ...], k: int) -> Any:
    from bastion.attacks.inference import (
        DefaultTrainer,
        LabelOnlyAttack,
        LiRA,
        ShadowModelAttack,
        ThresholdAttack,
    )

    seed = opts["seed"]
    trainer = DefaultTrainer(shape, k, epochs=opts["epochs"])
    if name in ("loss", "confidence"):
        return ThresholdAttack(signal=name, seed=seed)
    if name == "label-only":
        return LabelOnlyAttack(seed=seed)
    if name == "shadow":
        return ShadowModelAttack(n_shadows=opts["n_reference"], train_fn=trainer, seed=seed)
    if name in ("lira", "lira-offline"):
        return LiRA(
            n_reference=opts["n_reference"], online=name == "lira", train_fn=trainer, seed=seed
        )
    raise ConfigurationError(
        f"unknown membership attack {name!r}; choose from {', '.join(MEMBERSHIP_ATTACKS)}"
    )


@handle_errors
def _membership(**opts: Any) -> None:
    import torch

    from bastion.cli.evaluate import load_xy

    lo, hi = parse_floats(opts["bounds"], "--bounds", 2)
    xm, ym = load_xy(opts["members"], (lo, hi))
    xn, yn = load_xy(opts["non_members"], (lo, hi))
    if xm.shape[1:] != xn.shape[1:]:
        raise InputError(
            f"members have shape {tuple(xm.shape[1:])} per sample, non-members "
            f"{tuple(xn.shape[1:])}"
        )
    shape = parse_shape(opts["input_shape"]) or tuple(xm.shape[1:])
    if math.prod(shape) != math.prod(xm.shape[1:]):
        raise InputError(
            f"--input-shape {','.join(map(str, shape))} does not match the data's "
            f"{math.prod(xm.shape[1:])} values per sample"
        )
    xm, xn = xm.reshape(-1, *shape), xn.reshape(-1, *shape)
    clf = _load(opts, shape)
    x, y = torch.cat([xm, xn]), torch.cat([ym, yn])
    truth = torch.cat(
        [torch.ones(len(xm), dtype=torch.bool), torch.zeros(len(xn), dtype=torch.bool)]
    )
    names = [a.lower() for a in opts["attack"]]
    attacks = [_build(n, opts, shape, clf.num_classes) for n in names]
    pop = None
    if any(a.needs_fit for a in attacks):
        if opts["population"] is None:
            raise ConfigurationError(
                "shadow and lira attacks need the attacker's own data: pass --population D.npz"
            )
        xp, yp = load_xy(opts["population"], (lo, hi))
        if math.prod(xp.shape[1:]) != math.prod(shape):
            raise InputError(
                f"--population has {math.prod(xp.shape[1:])} values per sample, the members "
                f"{math.prod(shape)}"
            )
        pop = (xp.reshape(-1, *shape), yp)
    doc: dict[str, Any] = {
        "kind": "membership",
        "model": str(opts["model"]),
        "n_members": len(xm),
        "n_non_members": len(xn),
        "attacks": {},
        "findings": [],
    }
    bar = progress_bar(not opts["quiet"])
    with bar:
        task = bar.add_task("membership", total=len(attacks))
        for name, a in zip(names, attacks, strict=True):
            bar.update(task, description=name)
            _run_membership(name, a, clf, x, y, truth, pop, doc)
            bar.advance(task)
    _write_membership(doc, opts["out"])


def _run_membership(
    name: str,
    a: Any,
    clf: Any,
    x: torch.Tensor,
    y: torch.Tensor,
    truth: torch.Tensor,
    pop: tuple[torch.Tensor, torch.Tensor] | None,
    doc: dict[str, Any],
) -> None:
    """Fit (when needed) and run one attack; add its summary and finding to ``doc``."""
    if hasattr(clf, "reset_queries"):
        clf.reset_queries()
    fit_seconds = 0.0
    if a.needs_fit and pop is not None:
        start = time.perf_counter()
        a.fit(clf, *pop)
        fit_seconds = time.perf_counter() - start
    res = a.infer(clf, x, y, membership=truth)
    roc = res.roc()
    doc["attacks"][name] = {
        **res.summary(),
        "fit_seconds": fit_seconds,
        "seconds": res.seconds + fit_seconds,
        "attack": name,
        "params": res.params,
        "roc": roc.points(),
    }
    doc["findings"].append(res.finding().to_dict())


def _log_points(points: list[tuple[float, float]], floor: float) -> list[tuple[float, float]]:
    return [(math.log10(max(f, floor)), math.log10(max(t, floor))) for f, t in points]


def _write_membership(doc: dict[str, Any], out: Path) -> None:
    from bastion._io import atomic_write_json, atomic_write_text
    from bastion.report.html import findings_html, line_chart_svg, render_html_page, table_html

    out.mkdir(parents=True, exist_ok=True)
    json_path = atomic_write_json(out / "report.json", doc)
    floor = 1.0 / max(1, min(doc["n_members"], doc["n_non_members"]))
    rows = []
    table = Table(title="Membership inference")
    for col in ("attack", "AUC", "TPR@1%FPR", "TPR@0.1%FPR", "ε lower", "queries", "s"):
        table.add_column(col, justify="left" if col == "attack" else "right")
    for name, a in doc["attacks"].items():
        eps = a["epsilon"]["lower"]
        rows.append(
            [name, a["auc"], a["tpr_at_1pct_fpr"], a["tpr_at_0_1pct_fpr"], eps, a["queries"]]
        )
        table.add_row(
            name,
            f"{a['auc']:.3f}",
            f"{a['tpr_at_1pct_fpr']:.3f}",
            f"{a['tpr_at_0_1pct_fpr']:.3f}",
            f"{eps:.2f}",
            str(a["queries"]),
            f"{a['seconds']:.2f}",
        )
    chance = [(0.0, 0.0), (1.0, 1.0)]
    roc = {n: [tuple(p) for p in a["roc"]] for n, a in doc["attacks"].items()}
    body = (
        f"<p>{doc['n_members']} members, {doc['n_non_members']} non-members.</p>"
        + table_html(
            ["attack", "AUC", "TPR@1%FPR", "TPR@0.1%FPR", "ε lower (95%)", "queries"], rows
        )
        + "<h2>ROC</h2>"
        + line_chart_svg({**roc, "chance": chance}, x_label="FPR", y_label="TPR")
        + "<h2>ROC, log scale</h2>"
        + line_chart_svg(
            {
                **{n: _log_points(p, floor) for n, p in roc.items()},
                "chance": _log_points([(floor, floor), (1.0, 1.0)], floor),
            },
            x_label="log10 FPR",
            y_label="log10 TPR",
            y_range=(math.log10(floor), 0.0),
        )
        + "<h2>Findings</h2>"
        + findings_html(doc["findings"])
    )
    html_path = atomic_write_text(
        out / "report.html",
        render_html_page("Membership inference", body, subtitle=f"model {doc['model']}"),
    )
    console.print(table)
    console.print(f"wrote {json_path} and {html_path}")


# -- inversion ------------------------------------------------------------------------------
def inversion_cmd(
    model: Path = typer.Option(..., "--model", "-m", help="Model file (see evaluate evasion)."),
    classes: str = typer.Option(..., "--classes", help="Classes to invert, e.g. 0,1,2."),
    out: Path = typer.Option(Path("bastion-inversion"), "--out", "-o", help="Report folder."),
    reference: Path | None = typer.Option(
        None, "--reference", help=".npz (x, y) of training-like data, for MSE/SSIM to class means."
    ),
    method: str = typer.Option("auto", "--method", help="auto, white-box or score."),
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
    """MI-Face model inversion: one reconstructed representative per class."""
    _inversion(**locals())


@handle_errors
def _inversion(**opts: Any) -> None:
    from bastion.attacks.inference import MIFace, reconstruction_metrics
    from bastion.cli.evaluate import load_xy

    try:
        wanted = [int(c) for c in opts["classes"].replace(" ", "").split(",") if c]
    except ValueError:
        raise ConfigurationError(
            f"--classes must be comma-separated integers, got {opts['classes']!r}"
        ) from None
    if not wanted:
        raise ConfigurationError("--classes needs at least one class")
    lo, hi = parse_floats(opts["bounds"], "--bounds", 2)
    ref = None
    if opts["reference"] is not None:
        ref = load_xy(opts["reference"], (lo, hi))
    shape = parse_shape(opts["input_shape"]) or (None if ref is None else tuple(ref[0].shape[1:]))
    clf = _load(opts, shape)
    attack = MIFace(
        steps=opts["steps"],
        lr=opts["lr"],
        method=opts["method"],
        tv=opts["tv"],
        samples=opts["samples"],
        seed=opts["seed"],
    )
    res = attack.infer(clf, wanted)
    doc: dict[str, Any] = {"kind": "inversion", "model": str(opts["model"]), **res.to_dict()}
    findings = []
    if ref is not None:
        metrics = reconstruction_metrics(res, ref[0].reshape(-1, *clf.input_shape), ref[1])
        doc["metrics"] = metrics.to_dict()
        findings.append(metrics.finding(res).to_dict())
    doc["findings"] = findings
    _write_inversion(doc, res.x, (lo, hi), opts["out"])


def png_bytes(image: np.ndarray) -> bytes:
    """Encode a ``(H, W)`` grey or ``(H, W, 3)`` RGB ``uint8`` array as a PNG (zlib + struct)."""
    import numpy as np

    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise InputError("png_bytes needs a uint8 (H, W) or (H, W, 3) array")
    h, w = image.shape[:2]
    color = 0 if image.ndim == 2 else 2
    raw = b"".join(b"\x00" + image[r].tobytes() for r in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", w, h, 8, color, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )


def _to_image(x: torch.Tensor, bounds: tuple[float, float], scale: int) -> np.ndarray:
    import numpy as np
    import torch

    lo, hi = bounds
    a = ((x.double() - lo) / (hi - lo)).clamp(0, 1).mul(255).round().to(torch.uint8).numpy()
    if a.ndim == 3 and a.shape[0] in (1, 3):
        a = a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)
    elif a.ndim != 2:
        flat = a.reshape(-1)
        side = math.isqrt(flat.size)
        a = flat.reshape(side, side) if side * side == flat.size else flat.reshape(1, -1)
    return np.ascontiguousarray(
        np.kron(a, np.ones((scale, scale), dtype=np.uint8))
        if a.ndim == 2
        else a.repeat(scale, 0).repeat(scale, 1)
    )


def _write_inversion(
    doc: dict[str, Any], x: torch.Tensor, bounds: tuple[float, float], out: Path
) -> None:
    from bastion._io import atomic_write_json, atomic_write_text
    from bastion.report.html import esc, findings_html, render_html_page, table_html

    out.mkdir(parents=True, exist_ok=True)
    json_path = atomic_write_json(out / "report.json", doc)
    cells = []
    for i, c in enumerate(doc["classes"]):
        img = _to_image(x[i], bounds, scale=max(1, 96 // max(x.shape[-1], 1)))
        uri = "data:image/png;base64," + base64.b64encode(png_bytes(img)).decode("ascii")
        cells.append(
            f'<figure style="display:inline-block;margin:.4rem;text-align:center">'
            f'<img src="{uri}" alt="class {esc(c)}" style="image-rendering:pixelated">'
            f"<figcaption>class {esc(c)} · p={doc['confidence'][i]:.3f}</figcaption></figure>"
        )
    rows = [[c, doc["confidence"][i]] for i, c in enumerate(doc["classes"])]
    headers = ["class", "model confidence"]
    if "metrics" in doc:
        m = doc["metrics"]
        headers += ["MSE to class mean", "SSIM to class mean"]
        rows = [[*r, m["mse"][i], m["ssim"][i]] for i, r in enumerate(rows)]
    body = (
        f"<p>method {esc(doc['method'])} · {doc['queries']} queries · {doc['seconds']:.2f} s</p>"
        + "<h2>Reconstructions</h2><div>"
        + "".join(cells)
        + "</div>"
        + table_html(headers, rows)
        + "<h2>Findings</h2>"
        + findings_html(doc["findings"])
    )
    html_path = atomic_write_text(
        out / "report.html",
        render_html_page("Model inversion (MI-Face)", body, subtitle=f"model {doc['model']}"),
    )
    console.print(
        f"inverted {len(doc['classes'])} classes ({doc['method']}), mean confidence "
        f"{doc['mean_confidence']:.3f}, {doc['queries']} queries"
    )
    console.print(f"wrote {json_path} and {html_path}")
