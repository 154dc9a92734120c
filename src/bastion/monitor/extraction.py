"""Model-extraction detection per client: PRADA plus query-similarity tracking.

PRADA -- Juuti, Szyller, Marchal, Asokan, "PRADA: Protecting against DNN Model Stealing
Attacks", IEEE EuroS&P 2019, https://arxiv.org/abs/1805.02628.

An extraction attack needs queries that map out the decision boundary: synthetic points made
by small steps from a few seeds (Jacobian augmentation, Papernot et al. 2017), or random
points. A benign client sends natural inputs. PRADA watches, per client, the minimum L2
distance from each new query to the client's earlier queries *of the same predicted class*;
for natural inputs these distances are close to normally distributed, for synthetic streams
they are not (spikes at the step size, or a narrow band). The Shapiro-Wilk statistic ``W`` of
the set of distances measures the fit; ``W`` below ``threshold_w`` flags the client.

Per client and predicted class ``c`` the detector keeps a *growing set* ``G_c`` and a
threshold ``T_c``: a query joins ``G_c`` only when its distance ``d`` to ``G_c`` exceeds
``T_c``, and then ``T_c`` becomes ``max(T_c, mean - std)`` of the distances of the queries
that joined (as in the paper), so that clusters of near-identical queries do not flood the set.
Every distance goes into the client's distance set ``D`` (the latest ``max_distances``);
once ``D`` holds ``min_queries`` distances, each :meth:`ExtractionDetector.observe` tests it.

PRADA alone misses one classic stream: uniformly random queries (Tramer et al. 2016). In high
dimension random points are all about equally far apart, so their distances form a narrow,
perfectly normal-looking band (``W`` near 1 on MNIST). A second signal catches them: the
coefficient of variation (std / mean) of the distance set below ``min_cv`` flags the client as
*noise-like*; natural inputs lie near a low-dimensional manifold and their distances spread.

The third signal, query similarity, is the fraction of the client's latest ``near_window``
queries that lie within ``near_distance`` of one of its latest ``near_history`` queries (of any
class): near-duplicates and tiny steps, as in boundary probing and Jacobian-augmented streams
(each synthetic point is one small step from a point already queried). A fraction of at least
``near_fraction`` flags the client.

Repeats: a query (almost) equal to one of the client's recent queries, or to a member of its
growing set, is the same input asked again -- a retry, a re-sent batch, a popular item, a
load test sending one body. It reveals nothing new about the model, so it is counted in
``n_queries`` but adds no distance and no near-duplicate flag (within ``repeat_rms`` RMS per
feature, 1e-4 by default: far below any probing step). Without this, natural digits sent two
or three times, and the gateway benchmark's cycled traffic, were flagged.

Calibration of the defaults (:func:`calibrate_extraction` does it for other traffic): MNIST's
10,000 test images, shuffled under seeds 0-3 and split across 20 simulated clients of 500
queries each, labelled by a small MLP, sent one query per call; every verdict from the 100th
distance on was kept (7,820 per seed). The lowest ``W`` of any natural client was 0.879 (seed
2; 0.899, 0.916, 0.941 for the others), the lowest coefficient of variation 0.154 and the highest
near-duplicate fraction 0.12 (RMS step 0.1). The defaults sit below and above those with a
margin: ``threshold_w=0.85``, ``min_cv=0.10``, ``near_fraction=0.5``. The 8x8 digits (20
clients of 89 queries, ``min_queries=50``) stay further inside: lowest ``W`` 0.919, lowest
coefficient of variation 0.206, highest near-duplicate fraction 0.04. Against them, on the same
models: uniform random queries have a coefficient of variation of 0.02 (MNIST) and 0.066
(digits); a Jacobian-augmented stream (5 seeds per class, step 0.1, Papernot et al. 2017,
https://arxiv.org/abs/1602.02697) reaches ``W`` 0.83-0.84 and a near-duplicate fraction of 0.8-1
by its 140th query. The thresholds assume inputs scaled to [0, 1] and image-like data; for other
traffic rerun the calibration on natural queries and pass the suggested thresholds.

All per-client state (``G_c``, ``T_c``, ``D``, counts) lives in the
:class:`~bastion.monitor.state.StateBackend`, so gateway replicas sharing Redis judge a client
on all its queries; concurrent updates of one client from two replicas are not serialised
(a query may be judged against a set that misses the other replica's last few), which a
statistical test tolerates. Idle clients' state expires after ``ttl`` seconds.

Cost: per query two distance computations against at most ``max_per_class`` and
``near_history`` stored vectors and, once armed, one Shapiro-Wilk test on at most
``max_distances`` values. Each :meth:`~ExtractionDetector.observe` call makes three round trips to
the backend (read what the batch touches, write, count); with Redis it reads the growing sets of
the classes in the batch and the recent queries (up to ~1.6 MB for 784-feature inputs at the
defaults). Measured on the 2-core development machine under load from other jobs, one query
per call, at steady state: 0.6 ms (64 features) and 1.0 ms (784) in memory, 3 ms and 5 ms on a
loopback Redis. Run it after the response is sent, not in the request path.

>>> import numpy as np
>>> from bastion.monitor.state import InMemoryState
>>> detector = ExtractionDetector(InMemoryState(), min_queries=50)
>>> rng = np.random.default_rng(0)
>>> verdict = detector.observe("mallory", rng.random((120, 64)), np.zeros(120, dtype=int))
>>> verdict is not None and verdict.flagged
True
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from bastion.errors import ConfigurationError, InputError
from bastion.monitor.state import InMemoryState, StateBackend

__all__ = [
    "ExtractionCalibration",
    "ExtractionDetector",
    "ExtractionVerdict",
    "calibrate_extraction",
]


@dataclass(frozen=True)
class ExtractionVerdict:
    """The detector's judgement of one client after a call to ``observe``.

    Attributes:
        client: the client judged.
        flagged: True when either signal crossed its threshold.
        reasons: which signals fired: ``"prada"``, ``"noise_like"``, ``"near_duplicates"``.
        w_statistic: Shapiro-Wilk ``W`` of the client's distance set (1 is perfectly normal).
        threshold_w: ``W`` below this flags.
        distance_cv: coefficient of variation (std / mean) of the distance set.
        min_cv: a coefficient of variation below this flags (noise-like queries).
        near_duplicate_fraction: fraction of the latest queries within ``near_distance`` of
            one of the client's recent queries.
        near_fraction: a fraction at or above this flags.
        n_queries: queries seen from this client (all classes).
        n_distances: distances in the tested set.
    """

    client: str
    flagged: bool
    reasons: tuple[str, ...]
    w_statistic: float
    threshold_w: float
    distance_cv: float
    min_cv: float
    near_duplicate_fraction: float
    near_fraction: float
    n_queries: int
    n_distances: int


def _positive_int(name: str, value: int, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigurationError(f"{name} must be an integer of at least {minimum}, got {value!r}")


class ExtractionDetector:
    """PRADA, distance-spread and query-similarity detection of model extraction, per client.

    Args:
        state: where per-client state lives; in memory when None.
        threshold_w: Shapiro-Wilk ``W`` below this flags a client (PRADA's delta).
        min_cv: a coefficient of variation of the distance set below this flags a client:
            its queries are spread like high-dimensional noise (all about equally far apart),
            not like data, which lies near a low-dimensional manifold.
        min_queries: distances needed before any signal is judged (PRADA uses 100).
        max_distances: the distance set keeps the latest this many (at most 5,000, the
            largest sample Shapiro-Wilk's p-value approximation supports).
        max_per_class: each growing set ``G_c`` keeps the latest this many queries.
        near_distance: L2 distance at or under which a query is a near-duplicate (a tiny
            step) of a recent one; None: ``near_rms * sqrt(n_features)``.
        near_rms: RMS difference per feature used when ``near_distance`` is None; the
            default suits inputs scaled to [0, 1].
        near_history: a query is compared with the client's latest this many queries.
        near_window: the similarity signal looks at the latest this many queries.
        near_fraction: a near-duplicate fraction at or above this flags.
        repeat_rms: a query within ``repeat_rms * sqrt(n_features)`` of one of the client's
            latest ``near_history`` queries is a *repeat* (the same input sent again: a
            retry, a cache miss, a popular item); it is counted but adds no distance and no
            near-duplicate flag, since it reveals nothing a first query did not.
        ttl: seconds after a client's last query that its state is dropped; None keeps it.
        namespace: key prefix in the state backend.
    """

    def __init__(
        self,
        state: StateBackend | None = None,
        *,
        threshold_w: float = 0.85,
        min_cv: float = 0.10,
        min_queries: int = 100,
        max_distances: int = 2000,
        max_per_class: int = 256,
        near_distance: float | None = None,
        near_rms: float = 0.10,
        near_history: int = 256,
        near_window: int = 100,
        near_fraction: float = 0.5,
        repeat_rms: float = 1e-4,
        ttl: float | None = 86_400.0,
        namespace: str = "prada",
    ) -> None:
        if not (isinstance(threshold_w, int | float) and 0.0 < threshold_w < 1.0):
            raise ConfigurationError(f"threshold_w must be in (0, 1), got {threshold_w!r}")
        if not (isinstance(min_cv, int | float) and math.isfinite(min_cv) and min_cv >= 0.0):
            raise ConfigurationError(f"min_cv must be a non-negative number, got {min_cv!r}")
        _positive_int("min_queries", min_queries, 3)
        _positive_int("max_distances", max_distances, 3)
        if max_distances > 5000:
            raise ConfigurationError(f"max_distances must be at most 5000, got {max_distances}")
        if min_queries > max_distances:
            raise ConfigurationError(
                f"min_queries ({min_queries}) must not exceed max_distances ({max_distances})"
            )
        _positive_int("max_per_class", max_per_class)
        _positive_int("near_history", near_history)
        _positive_int("near_window", near_window)
        if near_distance is not None and not (math.isfinite(near_distance) and near_distance >= 0):
            raise ConfigurationError(
                f"near_distance must be a non-negative number or None, got {near_distance!r}"
            )
        if not (math.isfinite(near_rms) and near_rms >= 0):
            raise ConfigurationError(f"near_rms must be a non-negative number, got {near_rms!r}")
        if not (isinstance(near_fraction, int | float) and 0.0 < near_fraction <= 1.0):
            raise ConfigurationError(f"near_fraction must be in (0, 1], got {near_fraction!r}")
        if not (math.isfinite(repeat_rms) and repeat_rms >= 0):
            raise ConfigurationError(
                f"repeat_rms must be a non-negative number, got {repeat_rms!r}"
            )
        if ttl is not None and not (math.isfinite(ttl) and ttl > 0):
            raise ConfigurationError(
                f"ttl must be a positive number of seconds or None, got {ttl!r}"
            )
        self.state: StateBackend = InMemoryState() if state is None else state
        self.threshold_w = float(threshold_w)
        self.min_cv = float(min_cv)
        self.min_queries = min_queries
        self.max_distances = max_distances
        self.max_per_class = max_per_class
        self.near_distance = None if near_distance is None else float(near_distance)
        self.near_rms = float(near_rms)
        self.near_history = near_history
        self.near_window = near_window
        self.near_fraction = float(near_fraction)
        self.repeat_rms = float(repeat_rms)
        self.ttl = None if ttl is None else float(ttl)
        self.namespace = namespace

    def __repr__(self) -> str:
        return (
            f"ExtractionDetector(threshold_w={self.threshold_w}, min_cv={self.min_cv}, "
            f"min_queries={self.min_queries}, near_fraction={self.near_fraction})"
        )

    def _key(self, client: str, *parts: object) -> str:
        safe = client.replace("%", "%25").replace(":", "%3A")  # no client can forge another's key
        return ":".join([self.namespace, safe, *map(str, parts)])

    def _fetch(self, keys: list[str]) -> list[np.ndarray]:
        many = getattr(self.state, "vectors_many", None)
        if callable(many):
            return list(many(keys))
        return [self.state.vectors(key) for key in keys]

    def _store(self, pushes: list[tuple[str, np.ndarray, int]]) -> None:
        many = getattr(self.state, "push_rows", None)
        if callable(many):
            many(pushes, ttl=self.ttl)
            return
        for key, rows, max_len in pushes:
            for row in rows:
                self.state.push_vector(key, row, max_len=max_len, ttl=self.ttl)

    def observe(
        self, client: str, x: np.ndarray, predicted: np.ndarray
    ) -> ExtractionVerdict | None:
        """Record a batch of ``client``'s queries, in order, and judge the client.

        Args:
            client: who sent the queries (an API key id).
            x: the queries, ``(batch, features...)``; flattened to float32 vectors.
            predicted: the model's predicted class per query, ``(batch,)`` integers.

        Returns:
            None while the client has fewer than ``min_queries`` distances, otherwise the
            verdict after this batch.
        """
        if not isinstance(client, str) or not client:
            raise ConfigurationError(f"client must be a non-empty string, got {client!r}")
        rows = np.asarray(x, dtype=np.float32)
        labels = np.asarray(predicted).reshape(-1)
        if rows.ndim < 1 or rows.shape[0] == 0:
            raise InputError("observe needs at least one query")
        rows = rows.reshape(rows.shape[0], -1)
        if labels.shape[0] != rows.shape[0]:
            raise InputError(f"{rows.shape[0]} queries but {labels.shape[0]} predicted classes")
        if labels.dtype.kind not in "iu":
            raise InputError(f"predicted classes must be integers, got dtype {labels.dtype}")
        if not np.isfinite(rows).all():
            raise InputError("queries contain NaN or infinite values")
        labels = labels.astype(np.int64)
        n_sent = rows.shape[0]

        # one read of everything this batch touches, compute, one write
        keys = [self._key(client, part) for part in ("r", "d", "s")]
        recent, old_d, old_s = self._fetch(keys)
        if recent.shape[0] and recent.shape[1] != rows.shape[1]:
            raise InputError(
                f"queries of {rows.shape[1]} features, but {client!r} sent queries of "
                f"{recent.shape[1]} features before"
            )
        nearest = _nearest(recent, rows, self.near_history)
        fresh = ~(nearest <= self.repeat_rms * math.sqrt(rows.shape[1]))  # NaN: 1st query
        rows, labels, nearest = rows[fresh], labels[fresh], nearest[fresh]
        classes: list[int] = np.unique(labels).tolist()
        loaded = self._fetch([self._key(client, "g", c) for c in classes]
                             + [self._key(client, "t", c) for c in classes])
        groups = dict(zip(classes, loaded[: len(classes)], strict=True))
        sets = {
            c: s[0].astype(np.float64) if s.shape[0] else np.zeros(4)
            for c, s in zip(classes, loaded[len(classes) :], strict=True)
        }
        for stored in groups.values():
            if stored.shape[0] and stored.shape[1] != rows.shape[1]:
                raise InputError(
                    f"queries of {rows.shape[1]} features, but {client!r} sent queries of "
                    f"{stored.shape[1]} features before"
                )
        repeat = self.repeat_rms * math.sqrt(rows.shape[1])
        distances, added = _prada_update(groups, sets, rows, labels, self.max_per_class, repeat)
        near = self.near_distance
        if near is None:
            near = self.near_rms * math.sqrt(rows.shape[1])
        flags = [float(d <= near) for d in nearest.tolist() if not math.isnan(d)]

        # the distance and near-duplicate windows are stored whole, as one NaN-padded vector
        dist = _window(old_d, distances, self.max_distances)
        near_flags = _window(old_s, flags, self.near_window)
        pushes: list[tuple[str, np.ndarray, int]] = [
            (self._key(client, "r"), rows[-self.near_history :], self.near_history),
            (self._key(client, "d"), dist[None], 1),
            (self._key(client, "s"), near_flags[None], 1),
        ]
        for c in classes:
            if added[c]:
                rows_c = np.stack(added[c][-self.max_per_class :])
                pushes.append((self._key(client, "g", c), rows_c, self.max_per_class))
            pushes.append((self._key(client, "t", c), sets[c][None], 1))
        self._store([p for p in pushes if p[1].shape[0]])
        n_queries = self.state.incr(self._key(client, "n"), n_sent, ttl=self.ttl)

        dist = dist[np.isfinite(dist)].astype(np.float64)
        if dist.shape[0] < self.min_queries:
            return None
        near_flags = near_flags[np.isfinite(near_flags)]
        w = _shapiro_w(dist)
        mean = float(dist.mean())
        cv = float(dist.std() / mean) if mean > 0 else 0.0
        near_frac = float(near_flags.mean()) if near_flags.shape[0] else 0.0
        reasons = tuple(
            name
            for name, fired in (
                ("prada", w < self.threshold_w),
                ("noise_like", cv < self.min_cv),
                ("near_duplicates", near_frac >= self.near_fraction),
            )
            if fired
        )
        return ExtractionVerdict(
            client=client,
            flagged=bool(reasons),
            reasons=reasons,
            w_statistic=w,
            threshold_w=self.threshold_w,
            distance_cv=cv,
            min_cv=self.min_cv,
            near_duplicate_fraction=near_frac,
            near_fraction=self.near_fraction,
            n_queries=n_queries,
            n_distances=int(dist.shape[0]),
        )


def _prada_update(
    groups: dict[int, np.ndarray],
    sets: dict[int, np.ndarray],
    rows: np.ndarray,
    labels: np.ndarray,
    max_per_class: int,
    repeat: float = 0.0,
) -> tuple[list[float], dict[int, list[np.ndarray]]]:
    """PRADA's growing-set update over a batch, in order.

    ``groups[c]`` is ``G_c``; ``sets[c]`` holds ``[T_c, n, sum, sum of squares]`` of the
    distances that joined ``G_c`` and is updated in place. Returns the new distances and the
    rows that joined each ``G_c``. A query within ``repeat`` of ``G_c`` repeats one already
    there: it adds no distance.
    """
    added: dict[int, list[np.ndarray]] = {c: [] for c in groups}
    distances: list[float] = []
    for row, c in zip(rows, labels.tolist(), strict=True):
        group, st = groups[c], sets[c]
        join = group.shape[0] == 0
        if not join:
            diff = group - row
            d = math.sqrt(max(0.0, float(np.einsum("ij,ij->i", diff, diff).min())))
            if d <= repeat:
                continue
            distances.append(d)
            join = d > st[0]
            if join:  # T_c <- max(T_c, mean - std) over the distances that joined G_c
                st[1:] += (1.0, d, d * d)
                mean = st[2] / st[1]
                st[0] = max(st[0], mean - math.sqrt(max(0.0, st[3] / st[1] - mean * mean)))
        if join:
            groups[c] = (np.concatenate([group, row[None]]) if group.shape[0] else row[None])[
                -max_per_class:
            ]
            added[c].append(row)
    return distances, added


def _window(stored: np.ndarray, new: list[float], size: int) -> np.ndarray:
    """The latest ``size`` values of a stored window plus ``new``, NaN-padded at the front."""
    old = stored[-1] if stored.shape[0] else np.zeros(0, np.float32)
    if old.shape[0] != size:  # first use, or the window size changed: keep what fits
        old = old[-size:]
    values = np.concatenate([old[np.isfinite(old)], np.asarray(new, np.float32)])[-size:]
    out = np.full(size, np.nan, np.float32)
    if values.shape[0]:
        out[-values.shape[0] :] = values
    return out


def _nearest(recent: np.ndarray, rows: np.ndarray, history: int) -> np.ndarray:
    """L2 distance from each query to the nearest of the ``history`` queries before it
    (NaN for the client's very first query, which has nothing before it)."""
    past = np.concatenate([recent, rows]) if recent.shape[0] else rows
    offset = past.shape[0] - rows.shape[0]
    out = np.full(rows.shape[0], np.nan)
    for i in range(rows.shape[0]):
        j = offset + i
        earlier = past[max(0, j - history) : j]
        if earlier.shape[0]:
            diff = earlier - past[j]
            out[i] = math.sqrt(max(0.0, float(np.einsum("ij,ij->i", diff, diff).min())))
    return out


def _shapiro_w(values: np.ndarray) -> float:
    """Shapiro-Wilk W; 0 for a set with no spread (all distances equal: repeated queries)."""
    if float(np.ptp(values)) <= 1e-12 * max(1.0, float(np.abs(values).max())):
        return 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy's note on p-value accuracy; only W is used
        return float(stats.shapiro(values).statistic)


@dataclass(frozen=True)
class ExtractionCalibration:
    """What natural traffic looked like to the detector, and thresholds that would pass it.

    Attributes:
        lowest_w: the lowest Shapiro-Wilk ``W`` of any verdict.
        lowest_cv: the lowest coefficient of variation of any verdict.
        highest_near_fraction: the highest near-duplicate fraction of any verdict.
        n_clients: clients replayed.
        n_verdicts: verdicts collected (after ``min_queries``).
        flagged_clients: clients the detector, as configured, flagged.
        threshold_w: suggested ``threshold_w``: ``lowest_w - w_margin``.
        min_cv: suggested ``min_cv``: ``lowest_cv * cv_factor``.
        near_fraction: suggested ``near_fraction``: ``highest_near_fraction + near_margin``
            (at most 1).
    """

    lowest_w: float
    lowest_cv: float
    highest_near_fraction: float
    n_clients: int
    n_verdicts: int
    flagged_clients: tuple[str, ...]
    threshold_w: float
    min_cv: float
    near_fraction: float


def calibrate_extraction(
    clients: Iterable[tuple[str, np.ndarray, np.ndarray]],
    *,
    batch_size: int = 1,
    w_margin: float = 0.03,
    cv_factor: float = 0.6,
    near_margin: float = 0.3,
    **detector_kwargs: Any,
) -> ExtractionCalibration:
    """Replay natural traffic through a fresh in-memory detector and suggest thresholds.

    Args:
        clients: ``(client, x, predicted)`` per simulated client, queries in arrival order.
        batch_size: queries per :meth:`ExtractionDetector.observe` call (1: judged after each).
        w_margin: how far below the lowest natural ``W`` to put ``threshold_w``.
        cv_factor: fraction of the lowest natural coefficient of variation to use as ``min_cv``.
        near_margin: how far above the highest natural near-duplicate fraction to put
            ``near_fraction``.
        detector_kwargs: other :class:`ExtractionDetector` parameters (``min_queries``...).

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> centres = rng.random((10, 16))
    >>> def client(i):
    ...     labels = rng.integers(0, 10, 150)
    ...     return f"c{i}", centres[labels] + 0.3 * rng.random((150, 16)), labels
    >>> cal = calibrate_extraction([client(i) for i in range(3)], batch_size=10)
    >>> cal.n_clients, cal.lowest_w > cal.threshold_w
    (3, True)
    """
    _positive_int("batch_size", batch_size)
    if "state" in detector_kwargs:
        raise ConfigurationError("calibrate_extraction uses its own in-memory state; drop state=")
    detector = ExtractionDetector(InMemoryState(), **detector_kwargs)
    ws: list[float] = []
    cvs: list[float] = []
    nears: list[float] = []
    flagged: list[str] = []
    n_clients = 0
    for name, x, predicted in clients:
        n_clients += 1
        rows = np.asarray(x)
        labels = np.asarray(predicted)
        hit = False
        for i in range(0, rows.shape[0], batch_size):
            verdict = detector.observe(name, rows[i : i + batch_size], labels[i : i + batch_size])
            if verdict is not None:
                ws.append(verdict.w_statistic)
                cvs.append(verdict.distance_cv)
                nears.append(verdict.near_duplicate_fraction)
                hit = hit or verdict.flagged
        if hit:
            flagged.append(name)
    if not ws:
        raise InputError(
            f"no client sent enough queries for a verdict (min_queries={detector.min_queries})"
        )
    lowest_w, lowest_cv, highest_near = min(ws), min(cvs), max(nears)
    return ExtractionCalibration(
        lowest_w=lowest_w,
        lowest_cv=lowest_cv,
        highest_near_fraction=highest_near,
        n_clients=n_clients,
        n_verdicts=len(ws),
        flagged_clients=tuple(flagged),
        threshold_w=max(1e-6, lowest_w - w_margin),
        min_cv=lowest_cv * cv_factor,
        near_fraction=min(1.0, highest_near + near_margin),
    )
