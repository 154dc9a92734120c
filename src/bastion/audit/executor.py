"""How an audit's units of work are executed: in this process, on a local process pool, on Ray.

An :class:`Executor` maps a module-level function over independent units and returns the
results in the units' order. Every random choice in a unit comes from
:meth:`bastion.audit.contract.AuditContext.unit_seed` (the audit seed, the check, the unit's
index), never from the executor or the order in which units finish, so every executor gives the
same answer.

``shared`` is a large object the units need (a model, data arrays): it is sent once, not once
per unit (Ray ``ray.put``\\ s it into the object store; the process pool sends it once to each
worker), and ``fn(shared, unit)`` is called. ``errors="return"`` puts a :class:`UnitFailed` in
the slot of a unit that failed (after the retries) while the others finish; ``errors="raise"``
propagates the first failure. ``on_result(index, result)`` is called in the calling process as
each unit finishes (the runner saves checkpoints there, so an interrupted driver resumes).

>>> InProcessExecutor().map(abs, [-1, 2, -3])
[1, 2, 3]
>>> make_executor("processes:2").name
'process-pool[2]'
>>> InProcessExecutor().map(int, ["7", "x"], errors="return")[1].cause
"ValueError: invalid literal for int() with base 10: 'x'"
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import multiprocessing
import os
import pickle
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar, runtime_checkable

from bastion.errors import BastionError, ConfigurationError

__all__ = [
    "EXECUTOR_SPECS",
    "Executor",
    "InProcessExecutor",
    "ProcessPoolExecutor",
    "RayExecutor",
    "UnitFailed",
    "WorkerDied",
    "make_executor",
]

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")
Errors = Literal["raise", "return"]
OnResult = Callable[[int, Any], None]

#: what ``--executor`` accepts, for messages and help texts
EXECUTOR_SPECS = "in-process, processes[:N], ray (the current or a local cluster) or ray://host:port"

RAY_INSTALL = "pip install 'bastion-ml[ray]'"


@dataclass(frozen=True)
class UnitFailed:
    """The slot of a unit that failed: its index, the cause and how many attempts were made."""

    index: int
    cause: str
    attempts: int = 1


class WorkerDied(BastionError):
    """A unit's worker process died (killed, out of memory) on every attempt."""


@runtime_checkable
class Executor(Protocol):
    """Runs independent units of work; ``name`` goes into the report's environment."""

    name: str

    def map(self, fn: Callable[..., R], units: Sequence[Any], *, shared: Any = None,
            errors: Errors = "raise", gpus_per_task: float = 0.0,
            on_result: OnResult | None = None) -> list[R | UnitFailed]: ...


def _cause(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _check_errors(errors: str, gpus_per_task: float) -> None:
    if errors not in ("raise", "return"):
        raise ConfigurationError(f"errors must be 'raise' or 'return', got {errors!r}")
    if not gpus_per_task >= 0:
        raise ConfigurationError(f"gpus_per_task must be >= 0, got {gpus_per_task!r}")


class InProcessExecutor:
    """Each unit in turn, in this process. A unit's exception is its failure (no retries)."""

    name = "in-process"

    def map(self, fn: Callable[..., R], units: Sequence[Any], *, shared: Any = None,
            errors: Errors = "raise", gpus_per_task: float = 0.0,
            on_result: OnResult | None = None) -> list[R | UnitFailed]:
        _check_errors(errors, gpus_per_task)
        out: list[R | UnitFailed] = []
        for i, unit in enumerate(units):
            result: R | UnitFailed
            try:
                result = fn(unit) if shared is None else fn(shared, unit)
            except Exception as exc:
                if errors == "raise":
                    raise
                result = UnitFailed(i, _cause(exc), 1)
            out.append(result)
            if on_result is not None:
                on_result(i, result)
        return out


# -- a local process pool -------------------------------------------------------------------
_POOL_SHARED: Any = None


def _pool_init(shared_bytes: bytes | None) -> None:
    """Runs once in each pool worker: receive ``shared`` (sent once per worker)."""
    global _POOL_SHARED
    _POOL_SHARED = None if shared_bytes is None else pickle.loads(shared_bytes)


def _pool_call(fn: Callable[..., Any], unit: Any, has_shared: bool) -> Any:
    return fn(_POOL_SHARED, unit) if has_shared else fn(unit)


class ProcessPoolExecutor:
    """Units on ``workers`` local processes (default: every core). Processes are spawned (a
    fresh interpreter each, never a fork of a threaded torch), ``shared`` is sent once to each,
    and a unit whose worker dies is run again up to ``max_retries`` times."""

    def __init__(self, workers: int | None = None, *, max_retries: int = 2) -> None:
        if workers is not None and workers < 1:
            raise ConfigurationError(f"a process pool needs at least 1 worker, got {workers}")
        if max_retries < 0:
            raise ConfigurationError(f"max_retries must be >= 0, got {max_retries}")
        self.workers = workers or os.cpu_count() or 1
        self.max_retries = max_retries
        self.name = f"process-pool[{self.workers}]"

    def map(self, fn: Callable[..., R], units: Sequence[Any], *, shared: Any = None,
            errors: Errors = "raise", gpus_per_task: float = 0.0,
            on_result: OnResult | None = None) -> list[R | UnitFailed]:
        _check_errors(errors, gpus_per_task)
        results: dict[int, Any] = {}
        if not units:
            return []
        blob = None if shared is None else pickle.dumps(shared, protocol=pickle.HIGHEST_PROTOCOL)
        attempts = [0] * len(units)
        todo = list(range(len(units)))
        while todo:
            todo = self._round(fn, units, blob, todo, attempts, results, errors, on_result)
        return [results[i] for i in range(len(units))]

    def _round(self, fn: Callable[..., Any], units: Sequence[Any], blob: bytes | None,
               todo: list[int], attempts: list[int], results: dict[int, Any], errors: Errors,
               on_result: OnResult | None) -> list[int]:
        """Run ``todo`` on a fresh pool, at most ``workers`` units in flight (so a dead worker
        charges an attempt only to units that were running); return what must run again."""
        ctx = multiprocessing.get_context("spawn")
        again: list[int] = []
        queue = list(todo)
        with cf.ProcessPoolExecutor(max_workers=min(self.workers, len(todo)), mp_context=ctx,
                                    initializer=_pool_init, initargs=(blob,)) as pool:
            running: dict[cf.Future[Any], int] = {}

            def submit() -> None:
                while queue and len(running) < self.workers:
                    i = queue.pop(0)
                    attempts[i] += 1
                    running[pool.submit(_pool_call, fn, units[i], blob is not None)] = i

            submit()
            while running:
                done, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
                broken = False
                for fut in done:
                    i = running.pop(fut)
                    exc = fut.exception()
                    if isinstance(exc, cf.process.BrokenProcessPool):
                        broken = True
                        if attempts[i] <= self.max_retries:
                            again.append(i)
                            continue
                        self._finish(i, UnitFailed(i, "worker died: the process running it "
                                                   f"exited abruptly ({attempts[i]} attempts)",
                                                   attempts[i]), results, errors, on_result)
                    elif exc is not None:
                        if errors == "raise":
                            raise exc
                        self._finish(i, UnitFailed(i, _cause(exc), attempts[i]), results,
                                     errors, on_result)
                    else:
                        self._finish(i, fut.result(), results, errors, on_result)
                if broken:  # the pool is unusable: whatever was running or queued goes again
                    again.extend(running.values())
                    again.extend(queue)
                    return sorted(again)
                submit()
        return sorted(again)

    @staticmethod
    def _finish(i: int, result: Any, results: dict[int, Any], errors: Errors,
                on_result: OnResult | None) -> None:
        if isinstance(result, UnitFailed) and errors == "raise":
            raise WorkerDied(f"unit {i} failed: {result.cause}")
        results[i] = result
        if on_result is not None:
            on_result(i, result)


# -- Ray -------------------------------------------------------------------------------------
def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigurationError(
            f"--executor ray needs Ray, which is not installed: {RAY_INSTALL}") from None
    return ray


def _ray_call(fn: Callable[..., Any], unit: Any, shared: Any, has_shared: bool) -> Any:
    return fn(shared, unit) if has_shared else fn(unit)


class RayExecutor:
    """Units as Ray tasks. ``address``: ``None`` (the cluster this process or ``RAY_ADDRESS``
    is attached to, else a local one), ``"auto"`` (a cluster started on this machine with
    ``ray start``), ``"host:port"`` (a head's GCS address, from inside the cluster) or
    ``"ray://host:port"`` (Ray Client to a remote head). ``shared`` goes into
    the object store once; a task whose worker dies is retried ``max_retries`` times
    (application exceptions are not retried). ``num_cpus`` sizes a local cluster started here;
    each task asks for ``cpus_per_task`` CPUs and the custom ``resources`` (e.g.
    ``{"audit-node": 1}`` to keep the work on the nodes started with that resource).
    Picklable: a check running on a worker may hand its own units to the same cluster."""

    def __init__(self, address: str | None = None, *, num_cpus: int | None = None,
                 max_retries: int = 2, cpus_per_task: float = 1.0,
                 resources: Mapping[str, float] | None = None) -> None:
        _ray()
        if address is not None and address != "auto" and not (
                _RAY_URL.fullmatch(address) or _GCS.fullmatch(address)):
            raise ConfigurationError(
                f"Ray address must be 'auto', host:port or ray://host:port, got {address!r}")
        if num_cpus is not None and num_cpus < 1:
            raise ConfigurationError(f"num_cpus must be >= 1, got {num_cpus}")
        if max_retries < 0:
            raise ConfigurationError(f"max_retries must be >= 0, got {max_retries}")
        self.address = address
        self.num_cpus = num_cpus
        self.max_retries = max_retries
        self.cpus_per_task = cpus_per_task
        self.resources = dict(resources or {})
        self.name = address if address and address.startswith("ray://") else "ray"

    def _connect(self) -> Any:
        ray = _ray()
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"address": self.address, "log_to_driver": False,
                                      "include_dashboard": False}
            if self.address and self.address.startswith("ray://"):
                kwargs = {"address": self.address, "log_to_driver": False}
            if self.num_cpus is not None:
                kwargs["num_cpus"] = self.num_cpus
            try:
                ray.init(**kwargs)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise ConfigurationError(
                    f"could not connect to Ray at {self.address or 'the default address'}: "
                    f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                ) from None
        if not self.name.startswith("ray://"):
            cpus = int(ray.cluster_resources().get("CPU", 0))
            self.name = f"ray[{cpus}]"
        return ray

    def map(self, fn: Callable[..., R], units: Sequence[Any], *, shared: Any = None,
            errors: Errors = "raise", gpus_per_task: float = 0.0,
            on_result: OnResult | None = None) -> list[R | UnitFailed]:
        _check_errors(errors, gpus_per_task)
        if not units:
            return []
        ray = self._connect()
        from ray import exceptions as rex

        task = ray.remote(_ray_call).options(
            num_cpus=self.cpus_per_task, num_gpus=gpus_per_task, max_retries=self.max_retries,
            retry_exceptions=False, resources=self.resources or None)
        ref = ray.put(shared) if shared is not None else None
        refs = {task.remote(fn, u, ref, shared is not None): i for i, u in enumerate(units)}
        results: dict[int, Any] = {}
        pending = list(refs)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for r in done:
                    i = refs[r]
                    try:
                        result = ray.get(r)
                    except rex.RayTaskError as exc:  # the unit raised
                        cause = exc.cause if isinstance(exc.cause, BaseException) else exc
                        if errors == "raise":
                            raise cause from None
                        result = UnitFailed(i, _cause(cause), 1)
                    except rex.RayError as exc:  # the worker or its node died, every attempt
                        first = (str(exc).strip().splitlines() or [""])[0]
                        result = UnitFailed(i, f"worker died: {type(exc).__name__}: {first} "
                                            f"({self.max_retries + 1} attempts)",
                                            self.max_retries + 1)
                        if errors == "raise":
                            raise WorkerDied(f"unit {i} failed: {result.cause}") from None
                    results[i] = result
                    if on_result is not None:
                        on_result(i, result)
        except BaseException:
            for r in pending:
                ray.cancel(r, force=False)
            raise
        return [results[i] for i in range(len(units))]


_RAY_URL = re.compile(r"ray://[^\s:/]+:\d{1,5}")
_GCS = re.compile(r"[^\s:/]+:\d{1,5}")
_PROCESSES = re.compile(r"processes(?::(\d+))?")


def make_executor(spec: str, *, max_retries: int = 2) -> Executor:
    """The executor ``--executor`` names: ``in-process``, ``processes[:N]``, ``ray`` or
    ``ray://host:port``.

    >>> make_executor("in-process").name
    'in-process'
    >>> make_executor("threads")
    Traceback (most recent call last):
    ...
    bastion.errors.ConfigurationError: unknown executor 'threads'; use in-process, \
processes[:N], ray (the current or a local cluster) or ray://host:port
    """
    text = spec.strip()
    if text in ("in-process", "inprocess", ""):
        return InProcessExecutor()
    if m := _PROCESSES.fullmatch(text):
        n = int(m.group(1)) if m.group(1) else None
        if n is not None and n < 1:
            raise ConfigurationError(f"--executor {spec}: the number of processes must be >= 1")
        return ProcessPoolExecutor(n, max_retries=max_retries)
    if text == "ray":
        return RayExecutor(None, max_retries=max_retries)
    if text.startswith("ray://"):
        if not _RAY_URL.fullmatch(text):
            raise ConfigurationError(
                f"--executor {spec}: a Ray Client address looks like ray://host:10001")
        return RayExecutor(text, max_retries=max_retries)
    raise ConfigurationError(f"unknown executor {spec!r}; use {EXECUTOR_SPECS}")
