"""``bastion data scan-poison``: look for poisoned samples in a model's training data.

Writes ``report.json`` and a self-contained ``report.html`` (per-class cluster plots).
Exit codes: 0 nothing suspicious, 1 suspicious samples found, 2 an error.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from bastion.cli._common import console, err_console, handle_errors

if TYPE_CHECKING:
    import torch

__all__ = ["EXIT_SUSPICIOUS", "register", "render_report_html", "scatter_svg"]

#: exit code when at least one method flags samples
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
        Path("bastion-poison"), "--out", "-o", help="Folder for report.json and report.html."
    ),
    seed: int = typer.Option(0, "--seed", help="Random seed (results are deterministic)."),
    trust_pickle: bool = typer.Option(
        False, "--trust-pickle", help="Allow pickle-based model files (they can run code)."
    ),
) -> None:
    """Scan a training set for poisoned samples (exit 0 clean, 1 suspicious, 2 error)."""
    _scan(**locals())


@handle_errors
def _scan(**opts: Any) -> None:
    import torch

    from bastion._io import atomic_write_json, atomic_write_text
    from bastion.cli.evaluate import load_xy
    from bastion.defences.data.scan import parse_methods, scan_poison
    from bastion.errors import ConfigurationError
    from bastion.models.loading import load_model

    methods = parse_methods(opts["methods"])
    try:
        lo, hi = (float(v) for v in opts["bounds"].split(","))
    except ValueError:
        raise ConfigurationError(f"--bounds must be low,high, got {opts['bounds']!r}") from None
    x, y = load_xy(opts["data"], (lo, hi))
    clf = None
    if any(m != "confident_learning" for m in methods):
        clf = load_model(
            opts["model"],
            input_shape=tuple(x.shape[1:]),
            bounds=(lo, hi),
            factory=opts["factory"],
            trust_pickle=opts["trust_pickle"],
        )
        if not isinstance(getattr(clf, "module", None), torch.nn.Module):
            raise ConfigurationError(
                f"{opts['model']} is not a torch model; activation clustering and spectral "
                "signatures need one (use --methods cl for other models)"
            )
        if int(y.max()) >= clf.num_classes or int(y.min()) < 0:
            raise ConfigurationError(
                f"labels in {opts['data']} lie outside the model's {clf.num_classes} classes"
            )
    try:
        scan = scan_poison(clf, x, y, methods=methods, layer=opts["layer"], seed=opts["seed"])
    except RuntimeError as exc:  # torch failing on this model and data: an error, exit 2
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigurationError(f"the model could not be run on {opts['data']}: {first}") from None
    doc = scan.to_dict()
    doc["model"] = str(opts["model"])
    doc["data"] = str(opts["data"])
    out: Path = opts["out"]
    json_path = atomic_write_json(out / "report.json", doc)
    html_path = atomic_write_text(out / "report.html", render_report_html(doc, scan))
    for name, r in doc["methods"].items():
        console.print(f"{name}: {r['n_flagged']} of {doc['n']} samples flagged")
    console.print(f"wrote {json_path} and {html_path}")
    if scan.suspicious:
        err_console.print("suspicious samples found; see the report")
        raise typer.Exit(EXIT_SUSPICIOUS)


def scatter_svg(
    points: torch.Tensor,
    flags: torch.Tensor,
    *,
    title: str,
    width: int = 220,
    height: int = 180,
) -> str:
    """An inline SVG scatter of 2-D ``points``; flagged points red, the others blue."""
    import torch

    from bastion.report.html import esc

    pad = 14
    if points.numel() == 0 or points.dim() != 2:
        return ""
    pts = (
        points[:, :2].float()
        if points.shape[1] >= 2
        else torch.cat([points.float(), torch.zeros(points.shape[0], 1)], 1)
    )
    lo, hi = pts.min(0).values, pts.max(0).values
    span = torch.where(hi > lo, hi - lo, torch.ones_like(hi))
    sx = pad + (pts[:, 0] - lo[0]) / span[0] * (width - 2 * pad)
    sy = height - pad - (pts[:, 1] - lo[1]) / span[1] * (height - 2 * pad - 12)
    dots = []
    order = torch.argsort(flags.int())  # flagged drawn last, on top
    for i in order.tolist():
        colour = "#dc2626" if bool(flags[i]) else "#2563eb"
        dots.append(
            f'<circle cx="{float(sx[i]):.1f}" cy="{float(sy[i]):.1f}" r="2" '
            f'fill="{colour}" fill-opacity="0.6"/>'
        )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{esc(title)}">'
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#fafbfd" stroke="#dde"/>'
        f'<text x="{pad}" y="14" font-size="11" fill="#1d2330">{esc(title)}</text>'
        + "".join(dots)
        + "</svg>"
    )


def render_report_html(doc: dict[str, Any], scan: Any) -> str:
    """The self-contained HTML report of a poison scan."""
    from bastion.report.html import esc, findings_html, render_html_page, table_html

    cards = (
        '<div class="cards">'
        f'<div class="card"><div class="v">{doc["n"]}</div><div class="k">samples</div></div>'
        f'<div class="card"><div class="v">{doc["n_flagged_any"]}</div>'
        '<div class="k">flagged by any method</div></div></div>'
    )
    rows = [
        [name, r["n_flagged"], r["n_flagged"] / doc["n"] if doc["n"] else 0.0, r["seconds"]]
        for name, r in doc["methods"].items()
    ]
    body = [
        cards,
        "<h2>Findings</h2>",
        findings_html(doc["findings"]),
        "<h2>Methods</h2>",
        table_html(["method", "flagged", "fraction", "seconds"], rows),
    ]
    for name, report in scan.methods.items():
        if report.classes:
            body.append(f"<h2>{esc(name)}: per class</h2>")
            body.append(
                table_html(
                    ["class", "n", "minority", "fraction", "separation", "suspicious"],
                    [
                        [
                            c["label"],
                            c["n"],
                            c["minority_size"],
                            c["minority_fraction"],
                            c["statistic"],
                            "yes" if c["suspicious"] else "no",
                        ]
                        for c in report.classes
                    ],
                )
            )
        if report.projections:
            body.append(
                '<p class="muted">Activations of each class projected on their first two '
                "principal components; red points are flagged.</p><div>"
            )
            for c, (z, flags) in sorted(report.projections.items()):
                body.append(scatter_svg(z, flags, title=f"class {c}"))
            body.append("</div>")
    subtitle = f"model {doc.get('model', '')} · data {doc.get('data', '')}"
    return render_html_page("Bastion poison scan", "".join(body), subtitle=subtitle)
