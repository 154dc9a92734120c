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

MAX_DIM = 1024  # wider layers are first reduced to their top principal components
REDUCED_DIM = 256


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
        return (acts.double() - self.means[c]) @ self.maps[c]


def _inverse_sqrt(cov: torch.Tensor, shrinkage: float) -> torch.Tensor:
    d = cov.shape[0]
    scale = float(cov.trace()) / d
    if scale <= 0.0:
        return torch.eye(d, dtype=cov.dtype)
    reg = (1.0 - shrinkage) * cov + shrinkage * scale * torch.eye(d, dtype=cov.dtype)
    evals, evecs = torch.linalg.eigh(reg)
    evals = evals.clamp_min(1e-12 * float(evals.max()))
    return (evecs * evals.rsqrt()) @ evecs.T


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
    a = acts.double()
    all_classes = sorted(set(y.tolist()))
    means = {c: a[y == c].mean(0) for c in all_classes}
    reduce: torch.Tensor | None = None
    if whiten and a.shape[1] > MAX_DIM:
        centred = torch.cat([a[y == c] - means[c] for c in all_classes])
        reduce = top_components(centred.float(), REDUCED_DIM).double()
    scatters: dict[int, torch.Tensor] = {}
    counts: dict[int, int] = {}
    if whiten:
        for c in all_classes:
            cen = a[y == c] - means[c]
            if reduce is not None:
                cen = cen @ reduce
            scatters[c] = cen.T @ cen
            counts[c] = int(cen.shape[0])
    total = sum(scatters.values()) if scatters else None
    n_total = sum(counts.values())
    maps: dict[int, torch.Tensor] = {}
    others: dict[int, torch.Tensor] = {}
    for c in classes:
        base = reduce if reduce is not None else torch.eye(a.shape[1], dtype=torch.float64)
        if whiten and isinstance(total, torch.Tensor) and len(all_classes) >= 2:
            n_other = n_total - counts[c]
            cov = (total - scatters[c]) / max(n_other - 1, 1)
            maps[c] = base @ _inverse_sqrt(cov, shrinkage)
        else:
            maps[c] = base
        rest = [means[k] - means[c] for k in all_classes if k != c]
        others[c] = (
            torch.stack(rest) @ maps[c] if rest else torch.zeros(0, maps[c].shape[1]).double()
        )
    return ClassGeometry({c: means[c] for c in classes}, maps, others)


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
