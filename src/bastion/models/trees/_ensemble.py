"""The flattened tree-ensemble representation every tree adapter, attack and verifier shares.

A :class:`TreeEnsemble` is a list of binary decision trees over ``n_features`` numeric inputs,
stored as flat node arrays (all trees concatenated, child indices global):

- ``feature[i]``, ``threshold[i]``: the split of internal node ``i``; the input goes **left**
  when ``x[feature] < threshold`` (``strict=True``, XGBoost) or ``x[feature] <= threshold``
  (``strict=False``, LightGBM and scikit-learn); ``float32=True`` rounds the input to float32
  before comparing (XGBoost and scikit-learn do, LightGBM compares doubles).
- ``left[i]``, ``right[i]``: the children of node ``i``; both are ``-1`` at a leaf.
- ``value[i]``: a leaf's contribution, one column per output (``n_outputs``).
- ``roots[t]``: the root node of tree ``t``.

Aggregation: ``scores = base_score + scale * sum_t value[leaf_t(x)]``, then ``link``:

- ``"sigmoid"`` (binary boosting, one output = the margin of class 1):
  ``p1 = 1 / (1 + exp(-score))``.
- ``"softmax"`` (multiclass boosting, one output per class).
- ``"identity"`` (forests: the averaged leaf class frequencies are the probabilities).

Every ensemble is validated when it is built (:func:`validate_tree`): node indices in range,
each node reached once from its root (no cycles, no shared subtrees), features within the
input width, finite thresholds and leaf values. The arrays of a crafted file therefore never
reach any library's C code, and bastion's own evaluation (:meth:`TreeEnsemble.scores`) is pure
numpy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from bastion.errors import ModelLoadError

__all__ = ["Link", "Tree", "TreeEnsemble", "validate_tree"]

Link = Literal["sigmoid", "softmax", "identity"]
_LINKS = ("sigmoid", "softmax", "identity")
_LOG_EPS = 1e-12


@dataclass(frozen=True)
class Tree:
    """One tree with local node indices (``-1`` children mark a leaf)."""

    feature: np.ndarray
    threshold: np.ndarray
    left: np.ndarray
    right: np.ndarray
    value: np.ndarray

    @property
    def n_nodes(self) -> int:
        return int(self.left.shape[0])


def validate_tree(tree: Tree, *, n_features: int, n_outputs: int, where: str = "tree") -> None:
    """Raise :class:`~bastion.errors.ModelLoadError` unless ``tree`` is a well-formed tree.

    Checks: equal array lengths, children in ``[0, n_nodes)`` or both ``-1`` (a leaf), every
    node reached exactly once from node 0 (no cycles, no shared or orphan nodes), split features
    in ``[0, n_features)``, finite thresholds at internal nodes and finite leaf values.
    """
    n = tree.n_nodes
    if n == 0:
        raise ModelLoadError(f"{where}: has no nodes; the model file is damaged")
    for name in ("feature", "threshold", "right"):
        if getattr(tree, name).shape != (n,):
            raise ModelLoadError(
                f"{where}: {name} has {getattr(tree, name).shape} entries for {n} nodes; "
                "the model file is damaged or crafted"
            )
    if tree.value.shape != (n, n_outputs):
        raise ModelLoadError(
            f"{where}: leaf values have shape {tree.value.shape}, expected ({n}, {n_outputs})"
        )
    left, right = tree.left, tree.right
    is_leaf = left == -1
    if np.any(is_leaf != (right == -1)):
        bad = int(np.flatnonzero(is_leaf != (right == -1))[0])
        raise ModelLoadError(f"{where}: node {bad} has exactly one child; refusing the model")
    internal = ~is_leaf
    for name, child in (("left", left), ("right", right)):
        out = internal & ((child < 0) | (child >= n))
        if np.any(out):
            bad = int(np.flatnonzero(out)[0])
            raise ModelLoadError(
                f"{where}: node {bad} has {name} child {int(child[bad])}, outside [0, {n}); "
                "the model file is damaged or crafted, refusing it"
            )
    # Each node must be reached exactly once from the root: a tree, not a graph.
    seen = np.zeros(n, dtype=bool)
    frontier = np.array([0], dtype=np.int64)
    while frontier.size:
        if np.any(seen[frontier]) or np.unique(frontier).size != frontier.size:
            raise ModelLoadError(
                f"{where}: a node is reached twice (a cycle or shared subtree); refusing the model"
            )
        seen[frontier] = True
        inner = frontier[internal[frontier]]
        frontier = np.concatenate([left[inner], right[inner]]).astype(np.int64)
    if not seen.all():
        raise ModelLoadError(
            f"{where}: {int((~seen).sum())} node(s) are not reachable from the root; "
            "refusing the model"
        )
    feats = tree.feature[internal]
    if feats.size and (int(feats.min()) < 0 or int(feats.max()) >= n_features):
        worst = int(feats.max()) if feats.max() >= n_features else int(feats.min())
        raise ModelLoadError(
            f"{where}: splits on feature {worst}, "
            f"outside the model's {n_features} input features; refusing the model"
        )
    if not np.all(np.isfinite(tree.threshold[internal])):
        raise ModelLoadError(f"{where}: has a non-finite split threshold; refusing the model")
    if not np.all(np.isfinite(tree.value[is_leaf])):
        raise ModelLoadError(f"{where}: has a non-finite leaf value; refusing the model")


@dataclass(frozen=True)
class TreeEnsemble:
    """A validated, flattened tree ensemble (see the module docstring)."""

    n_features: int
    n_classes: int
    feature: np.ndarray
    threshold: np.ndarray
    left: np.ndarray
    right: np.ndarray
    value: np.ndarray
    roots: np.ndarray
    base_score: np.ndarray
    scale: float
    link: Link
    strict: bool
    float32: bool
    source: str
    feature_names: tuple[str, ...] | None = None
    depth: int = field(default=0, compare=False)

    @classmethod
    def from_trees(
        cls,
        trees: Sequence[Tree],
        *,
        n_features: int,
        n_classes: int,
        base_score: Sequence[float] | np.ndarray,
        scale: float = 1.0,
        link: Link,
        strict: bool,
        float32: bool,
        source: str,
        feature_names: Sequence[str] | None = None,
    ) -> TreeEnsemble:
        """Validate every tree and flatten them (raises :class:`ModelLoadError` when bad)."""
        if link not in _LINKS:
            raise ModelLoadError(f"unknown link {link!r}; expected one of {_LINKS}")
        if n_features < 1 or n_classes < 2:
            raise ModelLoadError(
                f"{source}: needs >= 1 feature and >= 2 classes, got {n_features} and {n_classes}"
            )
        if not trees:
            raise ModelLoadError(f"{source}: the model has no trees")
        base = np.asarray(base_score, dtype=np.float64).reshape(-1)
        n_outputs = 1 if link == "sigmoid" else n_classes
        if base.shape != (n_outputs,) or not np.all(np.isfinite(base)):
            raise ModelLoadError(
                f"{source}: base score {base.tolist()} does not fit {n_outputs} finite output(s)"
            )
        if not np.isfinite(scale) or scale <= 0:
            raise ModelLoadError(f"{source}: the aggregation scale must be positive, got {scale}")
        if feature_names is not None and len(feature_names) != n_features:
            raise ModelLoadError(
                f"{source}: {len(feature_names)} feature names for {n_features} features"
            )
        parts: dict[str, list[np.ndarray]] = {k: [] for k in ("f", "t", "l", "r", "v")}
        roots, offset, depth = [], 0, 0
        for i, raw in enumerate(trees):
            tree = Tree(
                feature=np.asarray(raw.feature, dtype=np.int64).reshape(-1),
                threshold=np.asarray(raw.threshold, dtype=np.float64).reshape(-1),
                left=np.asarray(raw.left, dtype=np.int64).reshape(-1),
                right=np.asarray(raw.right, dtype=np.int64).reshape(-1),
                value=np.asarray(raw.value, dtype=np.float64).reshape(
                    len(np.asarray(raw.left).reshape(-1)), -1
                ),
            )
            validate_tree(tree, n_features=n_features, n_outputs=n_outputs, where=f"tree {i}")
            leaf = tree.left == -1
            parts["f"].append(np.where(leaf, 0, tree.feature))
            parts["t"].append(np.where(leaf, 0.0, tree.threshold))
            parts["l"].append(np.where(leaf, -1, tree.left + offset))
            parts["r"].append(np.where(leaf, -1, tree.right + offset))
            parts["v"].append(np.where(leaf[:, None], tree.value, 0.0))
            roots.append(offset)
            offset += tree.n_nodes
            depth = max(depth, _depth(tree))
        return cls(
            n_features=int(n_features),
            n_classes=int(n_classes),
            feature=np.concatenate(parts["f"]).astype(np.int64),
            threshold=np.concatenate(parts["t"]),
            left=np.concatenate(parts["l"]).astype(np.int64),
            right=np.concatenate(parts["r"]).astype(np.int64),
            value=np.concatenate(parts["v"]),
            roots=np.asarray(roots, dtype=np.int64),
            base_score=base,
            scale=float(scale),
            link=link,
            strict=bool(strict),
            float32=bool(float32),
            source=source,
            feature_names=None if feature_names is None else tuple(map(str, feature_names)),
            depth=depth,
        )

    # -- structure ------------------------------------------------------------------------
    @property
    def n_trees(self) -> int:
        return int(self.roots.shape[0])

    @property
    def n_outputs(self) -> int:
        return int(self.value.shape[1])

    @property
    def n_nodes(self) -> int:
        return int(self.left.shape[0])

    def is_leaf(self) -> np.ndarray:
        return self.left == -1

    def tree_nodes(self, t: int) -> np.ndarray:
        """The global node indices of tree ``t``."""
        end = self.roots[t + 1] if t + 1 < self.n_trees else self.n_nodes
        return np.arange(int(self.roots[t]), int(end))

    def thresholds(self, feature: int) -> np.ndarray:
        """The sorted distinct thresholds the ensemble uses on ``feature``."""
        internal = ~self.is_leaf()
        return np.unique(self.threshold[internal & (self.feature == feature)])

    def goes_left(self, x: np.ndarray, threshold: np.ndarray | float) -> np.ndarray:
        """The split decision for feature values ``x`` (already the node's feature)."""
        xv = x.astype(np.float32).astype(np.float64) if self.float32 else x
        return xv < threshold if self.strict else xv <= threshold

    # -- evaluation -----------------------------------------------------------------------
    def _as_matrix(self, x: np.ndarray) -> np.ndarray:
        arr = np.asarray(x, dtype=np.float64)
        if arr.ndim == 1:
            arr = arr[None, :]
        if arr.ndim != 2 or arr.shape[1] != self.n_features:
            raise ModelLoadError(
                f"expected rows of {self.n_features} features, got shape {arr.shape}"
            )
        return arr

    def apply(self, x: np.ndarray) -> np.ndarray:
        """The leaf (global node index) each row reaches in each tree, shape ``(n, n_trees)``."""
        arr = self._as_matrix(x)
        node = np.broadcast_to(self.roots, (arr.shape[0], self.n_trees)).copy()
        rows = np.arange(arr.shape[0])[:, None]
        for _ in range(self.depth):
            internal = self.left[node] != -1
            if not internal.any():
                break
            go_left = self.goes_left(arr[rows, self.feature[node]], self.threshold[node])
            nxt = np.where(go_left, self.left[node], self.right[node])
            node = np.where(internal, nxt, node)
        return node

    def scores(self, x: np.ndarray) -> np.ndarray:
        """The aggregated scores before the link, shape ``(n, n_outputs)``."""
        leaves = self.apply(x)
        return self.base_score + self.scale * self.value[leaves].sum(axis=1)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        s = self.scores(x)
        if self.link == "sigmoid":
            p1 = 1.0 / (1.0 + np.exp(-s[:, 0]))
            return np.stack([1.0 - p1, p1], axis=1)
        if self.link == "softmax":
            z = np.exp(s - s.max(axis=1, keepdims=True))
            return np.asarray(z / z.sum(axis=1, keepdims=True))
        return s

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Scores whose softmax is :meth:`predict_proba` (``[0, margin]`` for sigmoid)."""
        s = self.class_scores(x)
        return s if self.link != "identity" else np.log(np.clip(s, _LOG_EPS, None))

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.class_scores(x).argmax(axis=1))

    def class_scores(self, x: np.ndarray) -> np.ndarray:
        """Per-class scores linear in the leaf values, whose argmax is :meth:`predict`.

        ``[0, margin]`` for sigmoid, the margins for softmax, the probabilities for forests:
        the quantities an exact attack constrains.
        """
        s = self.scores(x)
        if self.link == "sigmoid":
            return np.concatenate([np.zeros_like(s), s], axis=1)
        return s

    def __repr__(self) -> str:
        return (
            f"TreeEnsemble(source={self.source!r}, trees={self.n_trees}, nodes={self.n_nodes}, "
            f"features={self.n_features}, classes={self.n_classes}, link={self.link!r})"
        )


def _depth(tree: Tree) -> int:
    depth = np.zeros(tree.n_nodes, dtype=np.int64)
    frontier, d = np.array([0]), 0
    while frontier.size:
        depth[frontier] = d
        inner = frontier[tree.left[frontier] != -1]
        frontier = np.concatenate([tree.left[inner], tree.right[inner]])
        d += 1
    return int(depth.max()) + 1
