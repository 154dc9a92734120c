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
    """For each analysed class: its mean, its whitening map (in the reduced coordinates of a
    wide layer, ``reduce`` mapping the layer to them), the other classes' means in whitened
    coordinates (rows) and, computed once for all classes, the whitened within-class scatters
    and the bases of the other classes' mean subspaces."""

    def __init__(
        self,
        means: dict[int, torch.Tensor],
        white: dict[int, torch.Tensor],
        others: dict[int, torch.Tensor],
        *,
        reduce: torch.Tensor | None,
        centred: dict[int, torch.Tensor],
    ) -> None:
        self.means = means
        self.white = white
        self.others = others
        self.reduce = reduce
        self._centred = centred
        self._coords: dict[int, torch.Tensor] = {}

    def coords(self, c: int) -> torch.Tensor:
        """Whitened, centred coordinates of class ``c``'s own rows (float64; computed once)."""
        if c not in self._coords:
            self._coords[c] = self._centred[c] @ self.white[c]
        return self._coords[c]

    def lift(self, c: int, basis: torch.Tensor) -> torch.Tensor:
        """The ``(d, k)`` map from the layer's (centred) activations to ``coords(c) @ basis``."""
        inner = self.white[c] @ basis
        return self.reduce @ inner if self.reduce is not None else inner

    def top_directions(self, classes: list[int], k: int) -> dict[int, torch.Tensor]:
        """Top ``k`` principal directions of each class's whitened coordinates, ``(k', k)``:
        eigenvectors of the whitened within-class scatters, one batched float32 call (the
        scatters are well conditioned after whitening), returned as float64."""
        scat = []
        for c in classes:
            w = self.coords(c)
            scat.append(w.T @ w)
        if not scat:
            return {}
        _, vecs = torch.linalg.eigh(torch.stack(scat).float())
        top = vecs[:, :, -k:].flip(2).double()
        return {c: top[i] for i, c in enumerate(classes)}

    def mixing_bases(self, classes: list[int]) -> dict[int, torch.Tensor]:
        """Orthonormal bases ``(k', m)`` of the span of the other classes' centred means."""
        rows = [self.others[c] for c in classes]
        if not rows or rows[0].shape[0] < 2:
            dims = {c: self.others[c].shape[1] for c in classes}
            return {c: torch.zeros(dims[c], 0, dtype=torch.float64) for c in classes}
        stacked = torch.stack(rows)
        centred = stacked - stacked.mean(1, keepdim=True)
        m = min(stacked.shape[1] - 1, stacked.shape[2])
        _, _, vh = torch.linalg.svd(centred, full_matrices=False)
        return {c: vh[i, :m].T for i, c in enumerate(classes)}


def _whitening_maps(covs: torch.Tensor, shrinkage: float) -> torch.Tensor:
    """``W[i]`` with ``W[i].T @ reg[i] @ W[i] = I`` for the shrunk covariances ``reg`` (a batch
    ``(m, d, d)``): ``L^{-T}`` of their Cholesky factors, one batched call (any whitening map
    serves: what follows is rotation invariant)."""
    d = covs.shape[-1]
    eye = torch.eye(d, dtype=covs.dtype)
    scale = covs.diagonal(dim1=-2, dim2=-1).sum(-1) / d
    safe = torch.where(scale > 0.0, scale, torch.ones_like(scale))
    reg = (1.0 - shrinkage) * covs + ((shrinkage + 1e-9) * safe)[:, None, None] * eye
    chol, info = torch.linalg.cholesky_ex(reg)
    # numerically singular (shrinkage 0 on a degenerate layer): a scaled identity instead
    bad = info != 0
    chol = torch.where(bad[:, None, None], eye * safe[:, None, None] ** 0.5, chol)
    maps = torch.linalg.solve_triangular(chol.transpose(1, 2), eye.expand_as(chol), upper=True)
    return torch.where((scale > 0.0)[:, None, None], maps, eye)


def _top_eigvecs(scatter: torch.Tensor, k: int, *, iters: int = 3) -> torch.Tensor:
    """Top ``k`` eigenvectors of a symmetric PSD matrix, ``(d, k)`` float64: block subspace
    iteration (fixed-seed start, float32 products) and a Rayleigh-Ritz step in float64, which
    costs a few ``d x d`` by ``d x (k + 16)`` products instead of a full eigendecomposition."""
    d = scatter.shape[0]
    width = min(k + 16, d)
    if width >= d // 2:
        _, evecs = torch.linalg.eigh(scatter.double())
        return evecs[:, -k:].flip(1)
    s = scatter.float()
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(s @ torch.randn(d, width, generator=gen).to(s.device))
    for _ in range(iters):
        q, _ = torch.linalg.qr(s @ q)
    qd = q.double()
    _, small = torch.linalg.eigh(qd.T @ (scatter.double() @ qd))
    return (qd @ small)[:, -k:].flip(1)


def class_geometry(
    acts: torch.Tensor,
    y: torch.Tensor,
    classes: list[int],
    *,
    whiten: bool = True,
    shrinkage: float = 0.1,
) -> ClassGeometry:
    """Means and whitening maps of ``classes`` (see the module docstring).

    Without whitening (or with fewer than two classes to pool) the map is the identity (on the
    principal-component reduction of a wide layer, when whitened). Everything after the
    reduction runs in the reduced coordinates, once per fit.
    """
    a = acts.float()
    labels = y.to(a.device)
    all_classes = sorted(set(y.tolist()))
    n_slots = max(all_classes) + 1
    counts_t = torch.bincount(labels, minlength=n_slots)
    table = torch.zeros(n_slots, a.shape[1], dtype=a.dtype).index_add_(0, labels, a)
    table = table / counts_t.clamp(min=1).unsqueeze(1).to(a.dtype)
    d = a.shape[1]
    reduce: torch.Tensor | None = None
    if whiten and d > MAX_DIM:
        if d <= 2048:  # top eigenvectors of the scatter: cheaper than an SVD of the data
            centred = a - table[labels]
            reduce = _top_eigvecs(centred.T @ centred, REDUCED_DIM)
        else:  # a strided subsample of rows and few power iterations find the top subspace
            step = max(1, a.shape[0] // 2048)
            rows = a[::step] - table[labels[::step]]
            reduce = top_components(rows, REDUCED_DIM, power_iters=1).double()
    r = (a @ reduce.float()).double() if reduce is not None else a.double()
    r_table = torch.zeros(n_slots, r.shape[1], dtype=r.dtype).index_add_(0, labels, r)
    r_table = r_table / counts_t.clamp(min=1).unsqueeze(1).to(r.dtype)
    # each class's centred rows, in their original order, as one contiguous block
    cen = r - r_table[labels]
    order = torch.argsort(labels, stable=True)
    sizes = counts_t[counts_t > 0].tolist()
    blocks = dict(zip(all_classes, torch.split(cen[order], sizes), strict=True))
    eye = torch.eye(r.shape[1], dtype=torch.float64)
    white: dict[int, torch.Tensor] = {c: eye for c in classes}
    if whiten and len(all_classes) >= 2 and classes:
        total = cen.T @ cen
        n_total = int(labels.numel())
        covs = [
            (total - blocks[c].T @ blocks[c]) / max(n_total - int(blocks[c].shape[0]) - 1, 1)
            for c in classes
        ]
        maps = _whitening_maps(torch.stack(covs), shrinkage)
        white = {c: maps[i] for i, c in enumerate(classes)}
    others: dict[int, torch.Tensor] = {}
    for c in classes:
        rest = [k for k in all_classes if k != c]
        if rest:
            others[c] = (r_table[rest] - r_table[c]) @ white[c]
        else:
            others[c] = torch.zeros(0, r.shape[1], dtype=torch.float64)
    return ClassGeometry(
        {c: table[c].double() for c in classes},
        white,
        others,
        reduce=reduce,
        centred={c: blocks[c] for c in classes},
    )


def mixing(z: torch.Tensor, parts: torch.Tensor, basis: torch.Tensor) -> tuple[float, float]:
    """Per-sample variance of each part (0, 1) in the subspace with orthonormal ``basis``
    (that of the other classes' centred means, :meth:`ClassGeometry.mixing_bases`): how much
    each part looks like a mixture of those classes."""
    out = [0.0, 0.0]
    if basis.shape[1] == 0:
        return out[0], out[1]
    for p in (0, 1):
        zp = z[parts == p]
        if zp.shape[0] >= 2:
            proj = (zp - zp.mean(0)) @ basis
            out[p] = float((proj * proj).sum(1).mean())
    return out[0], out[1]
