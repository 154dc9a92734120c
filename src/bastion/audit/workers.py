"""What a check needs on a worker, sent once: :class:`CheckPayload`, and the unit that runs one
check there, :func:`run_check_unit`.

In this process the payload is the prepared :class:`~bastion.audit.contract.AuditContext`
itself (progress callback and all). Pickled for a process pool or Ray, it becomes portable:
the context without its progress callback, the model as a pickled object (a torch module, a
scikit-learn estimator) or, when it cannot be pickled (TorchScript, ONNX Runtime), as its file's
bytes and the options it was loaded with; the model's files (and a signature bundle beside
them) travel too, so the artifact check scans the same bytes on any node. A worker rebuilds the
context once and keeps it for every later check of the same audit.
"""

from __future__ import annotations

import atexit
import logging
import pickle
import shutil
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

from bastion.audit.contract import AuditContext, Check, CheckResult
from bastion.audit.document import check_entry
from bastion.audit.executor import InProcessExecutor, RayExecutor
from bastion.errors import ConfigurationError

__all__ = ["TORCH_THREADS", "CheckPayload", "run_check_unit", "wall_clock"]

log = logging.getLogger(__name__)

#: torch's intra-op threads while a check runs, on every executor: float sums split over a
#: different number of threads round differently, and the report must not depend on where a
#: check ran.
TORCH_THREADS = 1

_REALIZED: dict[str, AuditContext] = {}


def wall_clock() -> float:
    """The clock of the time budget (wall time: the driver and its workers share it)."""
    return time.time()


class CheckPayload:
    """The prepared context, shipped once per worker. ``deadline`` is the wall-clock time after
    which checks not yet started are ``not_run`` (the time budget); ``load_options`` reload an
    unpicklable model from its file on the worker."""

    def __init__(self, ctx: AuditContext, *, deadline: float | None = None,
                 load_options: dict[str, Any] | None = None) -> None:
        self.token = uuid.uuid4().hex
        self.deadline = deadline
        self._ctx: AuditContext | None = ctx
        self._load_options = load_options
        self._state: dict[str, Any] | None = None

    def context(self) -> AuditContext:
        """The context (rebuilt from the shipped state once per worker process)."""
        if self._ctx is not None:
            return self._ctx
        ctx = _REALIZED.get(self.token)
        if ctx is None:
            if self._state is None:
                raise RuntimeError("a check unit's payload holds neither a context nor its "
                                   "shipped state; build it with a context")
            ctx = _realize(self._state)
            _REALIZED.clear()  # one audit's context at a time per worker
            _REALIZED[self.token] = ctx
        return ctx

    def __getstate__(self) -> dict[str, Any]:
        if self._state is not None:
            return {"token": self.token, "deadline": self.deadline, "state": self._state}
        if self._ctx is None:
            raise RuntimeError("a check unit's payload holds neither a context nor its "
                               "shipped state; build it with a context")
        return {"token": self.token, "deadline": self.deadline,
                "state": _portable(self._ctx, self._load_options)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.token = state["token"]
        self.deadline = state["deadline"]
        self._state = state["state"]
        self._ctx = None
        self._load_options = None


def _portable(ctx: AuditContext, load_options: dict[str, Any] | None) -> dict[str, Any]:
    nested = ctx.executor if isinstance(ctx.executor, RayExecutor) else InProcessExecutor()
    files = _files(ctx.model_path) if ctx.model_path is not None else None
    key = ctx.signature_key.read_bytes() if ctx.signature_key is not None else None
    model_blob: bytes | None = None
    if ctx.model is not None:
        try:
            model_blob = pickle.dumps(ctx.model, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # TorchScript, ONNX Runtime sessions, open HTTP clients
            if load_options is None or files is None:
                raise ConfigurationError(
                    f"the model ({type(ctx.model).__name__}) cannot be sent to workers "
                    f"({type(exc).__name__}); audit it with --executor in-process") from None
    bare = replace(ctx, model=None, progress=None, executor=nested, model_path=None,
                   signature_key=None)
    return {"ctx": pickle.dumps(bare, protocol=pickle.HIGHEST_PROTOCOL), "model": model_blob,
            "files": files, "key": key, "load_options": load_options,
            "model_path": None if ctx.model_path is None else str(ctx.model_path)}


def _files(path: Path) -> dict[str, Any]:
    """The model's bytes: a file (with a ``.sig`` bundle beside it), or a folder's files."""
    if path.is_dir():
        return {"name": path.name, "dir": True,
                "members": {p.relative_to(path).as_posix(): p.read_bytes()
                            for p in sorted(path.rglob("*")) if p.is_file()}}
    members = {path.name: path.read_bytes()}
    sig = path.with_name(path.name + ".sig")
    if sig.is_file():
        members[sig.name] = sig.read_bytes()
    return {"name": path.name, "dir": False, "members": members}


def _realize(state: dict[str, Any]) -> AuditContext:
    ctx: AuditContext = pickle.loads(state["ctx"])
    model_path: Path | None = None
    key_path: Path | None = None
    if state["files"] is not None or state["key"] is not None:
        root = Path(tempfile.mkdtemp(prefix="bastion-worker-"))
        atexit.register(shutil.rmtree, root, True)
        files = state["files"]
        if files is not None:
            base = root / "model"
            target = base / files["name"] if files["dir"] else base
            for rel, data in files["members"].items():
                p = target / rel
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_bytes(data)
            model_path = base / files["name"]
        if state["key"] is not None:
            key_path = root / "signature-key.pem"
            key_path.write_bytes(state["key"])
    model = None
    if state["model"] is not None:
        model = pickle.loads(state["model"])
    elif state["load_options"] is not None and model_path is not None:
        from bastion.models.loading import load_model

        model = load_model(model_path, **state["load_options"])
    return replace(ctx, model=model, model_path=model_path, signature_key=key_path)


def run_check_unit(payload: CheckPayload, unit: tuple[Check, str]) -> dict[str, Any]:
    """Run one check (``unit`` = the check and its input fingerprint) and return its report
    entry. A check that raises is an ``error`` entry with the cause; the time budget, once
    spent, makes it ``not_run``."""
    import torch

    check, fp = unit
    ctx = payload.context()
    if payload.deadline is not None and wall_clock() > payload.deadline:
        budget = ctx.time_budget_s or 0.0
        result = CheckResult("not_run", reason=f"the time budget ({budget:g} s) was spent "
                             "before this check started",
                             enable="raise the time budget (--time-budget)")
        return check_entry(check, result, seconds=0.0, input_fingerprint=fp)
    if ctx.progress is not None:
        ctx.progress(check.name, 0.0)
    threads = torch.get_num_threads()
    torch.set_num_threads(TORCH_THREADS)
    start = time.perf_counter()
    try:
        result = check.run(ctx)
    except Exception as exc:  # the audit goes on; the report says what broke
        log.warning("check %s raised %s: %s", check.name, type(exc).__name__, exc)
        log.debug("check %s failed", check.name, exc_info=True)
        result = CheckResult("error", reason=f"{type(exc).__name__}: {exc}",
                             settings=dict(ctx.check_settings(check.name)))
    finally:
        torch.set_num_threads(threads)
    seconds = time.perf_counter() - start
    if not result.settings:
        result.settings = dict(ctx.check_settings(check.name))
    return check_entry(check, result, seconds=seconds, input_fingerprint=fp)
