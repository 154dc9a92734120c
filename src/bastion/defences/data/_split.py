"""Per-class two-way splits shared by activation clustering and spectral signatures.

Both detectors split each class's activations in two and call one part poisoned when the split
is strong (a high statistic) and the part not too large. The suspect part (field ``minority``,
for compatibility) is the one that mixes the other classes' features most (see ``_whiten``),
or the smaller one when there are too few classes to tell. A sample's score is its class's
statistic when it falls in that class's suspect part, else 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["ClassSplit", "best_1d_split", "make_split", "split_scores"]


@dataclass(frozen=True)
class ClassSplit:
    """The split of one class: sizes, the strength statistic, and the verdict.

    ``minority`` is the index (0/1) of the suspect part and ``minority_size`` its size (it may
    be the larger part: see the module docstring); ``mixing_ratio`` is the suspect part's
    between-class spread over the other part's (1.0 when not measured).
    """

    label: int
    n: int
    minority: int
    minority_size: int
    statistic: float
    suspicious: bool
    mixing_ratio: float = 1.0

    @property
    def minority_fraction(self) -> float:
        return self.minority_size / self.n if self.n else 0.0

    def to_dict(self) -> dict[str, float | int | bool]:
        return {
            "label": self.label,
            "n": self.n,
            "minority_size": self.minority_size,
            "minority_fraction": self.minority_fraction,
            "statistic": self.statistic,
            "suspicious": self.suspicious,
            "mixing_ratio": self.mixing_ratio,
        }


def best_1d_split(u: torch.Tensor) -> tuple[float, float]:
    """Optimal two-means split of 1-d values: ``(cut, separation)``.

    ``separation`` is the gap between the two means over the pooled within-part standard
    deviation (about 2.7 for a single Gaussian, large for two well-apart groups).
    """
    s = u.double().sort().values
    n = s.numel()
    if n < 4:
        return float(s.mean()), 0.0
    csum = torch.cumsum(s, 0)
    csq = torch.cumsum(s * s, 0)
    k = torch.arange(1, n, dtype=torch.float64)  # left part sizes 1..n-1
    left_sum, left_sq = csum[:-1], csq[:-1]
    right_sum, right_sq = csum[-1] - left_sum, csq[-1] - left_sq
    sse = (left_sq - left_sum**2 / k) + (right_sq - right_sum**2 / (n - k))
    i = int(torch.argmin(sse))
    kk = float(k[i])
    m1, m2 = float(left_sum[i]) / kk, float(right_sum[i]) / (n - kk)
    within = max(float(sse[i]) / max(n - 2, 1), 1e-24) ** 0.5
    return (float(s[i]) + float(s[i + 1])) / 2, (m2 - m1) / within


def make_split(
    label: int,
    parts: torch.Tensor,
    statistic: float,
    mix: tuple[float, float],
    *,
    threshold: float,
    max_fraction: float,
) -> ClassSplit:
    """The verdict on one class's two-way split ``parts`` (0/1 per sample).

    The suspect part is the one with the larger between-class mixing ``mix`` (or, when neither
    was measured, the smaller part); the class is suspicious when ``statistic`` exceeds
    ``threshold`` and the suspect part holds at most ``max_fraction`` of the class.
    """
    sizes = torch.bincount(parts, minlength=2)
    n = int(parts.numel())
    if max(mix) > 0.0:
        suspect = int(mix[1] > mix[0])
        other = mix[1 - suspect]
        ratio = mix[suspect] / other if other > 0.0 else float("inf")
    else:
        suspect, ratio = int(sizes.argmin()), 1.0
    frac = float(sizes[suspect]) / n if n else 0.0
    return ClassSplit(
        label=label,
        n=n,
        minority=suspect,
        minority_size=int(sizes[suspect]),
        statistic=statistic,
        suspicious=bool(statistic > threshold and 0.0 < frac <= max_fraction),
        mixing_ratio=ratio,
    )


def split_scores(
    assign: torch.Tensor, labels: torch.Tensor, splits: dict[int, ClassSplit]
) -> torch.Tensor:
    """Scores from per-sample part assignments (0/1) under the per-class splits."""
    out = torch.zeros(labels.shape[0], dtype=torch.float64)
    for c, sp in splits.items():
        sel = (labels == c) & (assign == sp.minority)
        if sp.minority_fraction > 0:
            out[sel] = sp.statistic
    return out


def separation(z: torch.Tensor, parts: torch.Tensor) -> float:
    """Gap between the two parts' means along the line joining them, in pooled within-part
    standard deviations (0 when a part has fewer than two samples)."""
    a, b = z[parts == 0], z[parts == 1]
    if a.shape[0] < 2 or b.shape[0] < 2:
        return 0.0
    direction = b.mean(0) - a.mean(0)
    norm = float(direction.norm())
    if norm == 0.0:
        return 0.0
    ua, ub = a @ direction / norm, b @ direction / norm
    ssw = float(((ua - ua.mean()) ** 2).sum() + ((ub - ub.mean()) ** 2).sum())
    within = max(ssw / (z.shape[0] - 2), 1e-24) ** 0.5
    return (float(ub.mean()) - float(ua.mean())) / within


def two_means(z: torch.Tensor, *, iters: int = 100) -> torch.Tensor:
    """Deterministic 2-means (Lloyd) on the rows of ``z``: part labels 0/1.

    Initialised by the best two-means split of the first coordinate (the first principal
    component when ``z`` is a PCA projection), so no random restarts are needed.
    """
    cut, _ = best_1d_split(z[:, 0])
    parts = (z[:, 0] > cut).long()
    n = z.shape[0]
    total = z.sum(0)
    for _ in range(iters):
        n1 = int(parts.sum())
        if n1 == 0 or n1 == n:
            break
        s1 = parts.to(z.dtype) @ z
        c0, c1 = (total - s1) / (n - n1), s1 / n1
        # nearest centre, ties to part 0: |z - c1|^2 < |z - c0|^2, expanded
        new = (z @ (c1 - c0) > 0.5 * (c1 @ c1 - c0 @ c0)).long()
        if torch.equal(new, parts):
            break
        parts = new
    return parts


def top_components(centred: torch.Tensor, k: int, *, power_iters: int = 6) -> torch.Tensor:
    """The top ``k`` right singular vectors of ``centred`` (rows are samples), as ``(d, k)``.

    Exact SVD for small matrices; for large ones a randomized range finder (Halko, Martinsson
    & Tropp 2011) with a fixed-seed test matrix and ``power_iters`` power iterations, which is
    deterministic and costs a few passes over the data instead of a full decomposition.
    """
    n, d = centred.shape
    k = max(1, min(k, n, d))
    if n * d <= 2_000_000 or min(n, d) <= 4 * k:
        _, _, vh = torch.linalg.svd(centred, full_matrices=False)
        return vh[:k].T
    a = centred.float()
    width = min(k + 10, n, d)
    gen = torch.Generator().manual_seed(0)
    omega = torch.randn(d, width, generator=gen).to(a.device)
    q, _ = torch.linalg.qr(a @ omega)
    for _ in range(power_iters):
        z, _ = torch.linalg.qr(a.T @ q)
        q, _ = torch.linalg.qr(a @ z)
    _, _, vh = torch.linalg.svd(q.T @ a, full_matrices=False)
    return vh[:k].T.to(centred.dtype)
