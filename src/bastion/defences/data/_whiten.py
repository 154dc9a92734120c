"""Per-class whitening and the choice of the poisoned part, shared by the activation detectors.

A backdoor's trigger is a feature that clean samples of *every* class lack, so along it the
within-class scatter of the other classes is tiny, while in the target class the triggered
samples sit far out. Whitening class ``c``'s centred activations by the pooled within-class
covariance of the *other* classes (leave-one-class-out, so the poison cannot hide itself by
inflating the covariance it is measured with; with shrinkage towards a multiple of the identity)
turns that small absolute gap into a large one, while a class's genuine sub-modes (a "1" with or
without a serif) vary along directions every class varies along, and stay small.

Which part of a suspicious split is the poison? Not always the smaller one: a 10% backdoor on a
data set of ten balanced classes makes up half of its target class. The poisoned samples are
inputs of *several source classes* that keep some of their content, so they spread along the
directions separating the other classes' means; the genuine samples of one class do not. The
flagged part is the one with the larger spread in that between-class subspace (its *mixing*).
"""

from __future__ import annotations

import torch

from bastion.defences.data._split import top_components

__all__ = ["ClassGeometry", "class_geometry", "mixing"]

MAX_DIM = 256  # wider layers are first reduced to their top principal components
REDUCED_DIM = 128


class ClassGeometry:
    """For each analysed class: its mean and the ``(d, k)`` map to whitened coordinates, plus
    the other classes' means in those coordinates (rows)."""

    def __init__(
        self,
        means: dict[int, torch.Tensor],
        maps: dict[int, torch.Tensor],
        others: dict[int, torch.Tensor],
    ) -> None:
        self.means = means
        self.maps = maps
        self.others = others

    def coords(self, c: int, acts: torch.Tensor) -> torch.Tensor:
        """Whitened, centred coordinates of ``acts`` under class ``c``'s geometry (float64)."""
        centred = acts.float() - self.means[c].float()
        return (centred @ self.maps[c].float()).double()


def _whitening_map(cov: torch.Tensor, shrinkage: float) -> torch.Tensor:
    """``W`` with ``W.T @ reg @ W = I`` for the shrunk covariance ``reg``: ``L^{-T}`` of its
    Cholesky factor (any whitening map serves: what follows is rotation invariant)."""
    d = cov.shape[0]
    eye = torch.eye(d, dtype=cov.dtype)
    scale = float(cov.trace()) / d
    if scale <= 0.0:
        return eye
    reg = (1.0 - shrinkage) * cov + (shrinkage + 1e-9) * scale * eye
    chol, info = torch.linalg.cholesky_ex(reg)
    if int(info) != 0:  # numerically singular (shrinkage 0 on a degenerate layer)
        return eye / scale**0.5
    return torch.linalg.solve_triangular(chol.T, eye, upper=True)


def class_geometry(
    acts: torch.Tensor,
    y: torch.Tensor,
    classes: list[int],
    *,
    whiten: bool = True,
    shrinkage: float = 0.1,
) -> ClassGeometry:
    """Means and whitening maps of ``classes`` (see the module docstring).

    Without whitening (or with fewer than two classes to pool) the map is the identity (or
    the principal-component reduction of a wide layer).
    """
    a = acts.float()
    labels = y.to(a.device)
    all_classes = sorted(set(y.tolist()))
    means = {c: a[labels == c].mean(0) for c in all_classes}
    d = a.shape[1]
    reduce: torch.Tensor | None = None
    if whiten and d > MAX_DIM:
        table = torch.zeros(max(all_classes) + 1, d, dtype=a.dtype)
        for c in all_classes:
            table[c] = means[c]
        if d <= 2048:  # eigenvectors of the scatter: cheaper than an SVD of the data
            centred = (a - table[labels]).double()
            _, evecs = torch.linalg.eigh(centred.T @ centred)
            reduce = evecs[:, -REDUCED_DIM:].flip(1)
        else:  # a strided subsample of rows and few power iterations find the top subspace
            step = max(1, a.shape[0] // 2048)
            rows = a[::step] - table[labels[::step]]
            reduce = top_components(rows, REDUCED_DIM, power_iters=2).double()
    r = (a @ reduce.float()).double() if reduce is not None else a.double()
    r_means = {c: r[labels == c].mean(0) for c in all_classes}
    scatters: dict[int, torch.Tensor] = {}
    counts: dict[int, int] = {}
    if whiten:
        for c in all_classes:
            cen = r[labels == c] - r_means[c]
            scatters[c] = cen.T @ cen
            counts[c] = int(cen.shape[0])
    total = sum(scatters.values()) if scatters else None
    n_total = sum(counts.values())
    eye = torch.eye(r.shape[1], dtype=torch.float64)
    maps: dict[int, torch.Tensor] = {}
    others: dict[int, torch.Tensor] = {}
    for c in classes:
        white = eye
        if isinstance(total, torch.Tensor) and len(all_classes) >= 2:
            cov = (total - scatters[c]) / max(n_total - counts[c] - 1, 1)
            white = _whitening_map(cov, shrinkage)
        maps[c] = reduce @ white if reduce is not None else white
        rest = [r_means[k] - r_means[c] for k in all_classes if k != c]
        others[c] = torch.stack(rest) @ white if rest else torch.zeros(0, white.shape[1]).double()
    return ClassGeometry({c: means[c].double() for c in classes}, maps, others)


def mixing(z: torch.Tensor, parts: torch.Tensor, other_means: torch.Tensor) -> tuple[float, float]:
    """Per-sample variance of each part (0, 1) in the subspace spanned by the other classes'
    centred means: how much each part looks like a mixture of those classes."""
    out = [0.0, 0.0]
    if other_means.shape[0] < 2:
        return out[0], out[1]
    centred = other_means - other_means.mean(0)
    basis = top_components(centred, other_means.shape[0] - 1)
    for p in (0, 1):
        zp = z[parts == p]
        if zp.shape[0] >= 2:
            proj = (zp - zp.mean(0)) @ basis
            out[p] = float((proj * proj).sum(1).mean())
    return out[0], out[1]
