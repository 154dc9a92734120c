"""Run an audit: resolve the inputs, plan, run each check (resuming finished ones), write the
report.

>>> from bastion.audit.runner import run_audit          # doctest: +SKIP
>>> outcome = run_audit(AuditConfig(model="model.pt", test=Path("test.npz")))  # doctest: +SKIP

Resume: each finished check (``passed`` or ``failed``) is saved as
``OUT/checks/<name>-<input fingerprint>.json``. The fingerprint covers the model digest, the
data digests, the seed, the threat model, the check's version and its settings, so a rerun
with the same inputs reuses the saved result instead of running the check again, and a change
of any input runs it afresh. ``fresh=True`` ignores saved results. A check that raises is
recorded as ``error`` with its cause (and never saved); the other checks still run.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from bastion.audit.config import AuditConfig, default_eps
from bastion.audit.contract import AuditContext, Check, CheckResult
from bastion.audit.document import (
    build_document,
    check_entry,
    check_entry_valid,
    environment,
    validate_document,
    write_json,
)
from bastion.audit.executor import Executor, InProcessExecutor, UnitFailed
from bastion.audit.plan import PlanEntry, check_selection, make_plan
from bastion.audit.sources import (
    ModelSource,
    data_info,
    file_digest,
    infer_domain,
    load_dataset,
    load_named_arrays,
    resolve_model,
)
from bastion.audit.tabular import align_columns, load_audit_contract, schema_for
from bastion.errors import ConfigurationError

__all__ = [
    "AuditOutcome", "config_record", "input_fingerprint", "prepare", "run_audit", "write_reports",
]

log = logging.getLogger(__name__)

REPORT_FORMATS = ("json", "html", "md")


@dataclass(frozen=True)
class AuditOutcome:
    """What :func:`run_audit` did: the document, the files written, what was reused."""

    document: dict[str, Any]
    out: Path
    written: dict[str, Path] = field(default_factory=dict)
    reused: tuple[str, ...] = ()
    replaced: tuple[Path, ...] = ()


@dataclass
class Prepared:
    """The context of one audit and what its document says about the inputs."""

    ctx: AuditContext
    checks: list[Check]
    plan: list[PlanEntry]
    model: ModelSource
    data: dict[str, Any]
    threat_model: dict[str, Any]


def input_fingerprint(check: Check, ctx: AuditContext, prepared_threat: Mapping[str, Any],
                      data: Mapping[str, Any]) -> str:
    """The resume key of one check (16 hex)."""
    threat = {k: v for k, v in prepared_threat.items() if k != "time_budget_s"}
    key = {
        "check": check.name,
        "version": check.version,
        "model": ctx.model_info.get("digest") or ctx.model_info.get("source"),
        "data": {role: d.get("sha256") for role, d in sorted(data.items())},
        "seed": ctx.seed,
        "threat": threat,
        "inputs": check.inputs(ctx),
    }
    text = json.dumps(key, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _catalogue(names: Sequence[str] | None) -> dict[str, type[Check]]:
    from bastion.audit.checks import load_catalogue

    catalogue = load_catalogue()
    if names is None:
        return catalogue
    unknown = [n for n in names if n not in catalogue]
    if unknown:
        raise ConfigurationError(f"unknown check(s) {unknown}; the checks are {list(catalogue)}")
    return {n: catalogue[n] for n in names}


def prepare(
    config: AuditConfig,
    catalogue: Mapping[str, type[Check]],
    *,
    classifier: Any = None,
    transport: Any = None,
) -> Prepared:
    """Load the data, resolve the model (scanned before loading), and plan."""
    from bastion.threat import Access, ThreatModel

    check_selection(catalogue, config.only, config.skip, config.settings)
    if config.model is None and classifier is None:
        raise ConfigurationError("give the model to audit: --model (or model: in --config)")
    opts = dict(config.model_options)
    raw = {role: load_named_arrays(p, config.label)
           for role, p in (("train", config.train), ("test", config.test)) if p is not None}
    shape = tuple(opts["input_shape"]) if opts.get("input_shape") else next(
        (tuple(x.shape[1:]) for x, _, _ in raw.values()), None)
    if classifier is not None and shape is None:
        shape = tuple(classifier.input_shape)
    domain = infer_domain(shape)
    bounds = _bounds(opts.get("bounds"), domain, raw, classifier)
    num_classes = opts.get("num_classes") or (
        max(int(y.max()) + 1 for _, y, _ in raw.values() if y.size) if raw else None)
    threat = config.threat
    if classifier is not None:
        model = _object_model(classifier, config, domain, bounds)
    else:
        model = resolve_model(
            str(config.model), options=opts, input_shape=shape, num_classes=num_classes,
            bounds=bounds, domain=domain, access=threat.access.value,
            query_budget=threat.query_budget, api_key_env=config.api_key_env,
            workdir=None, transport=transport)
    try:
        raw, names = align_columns(raw, getattr(model.classifier, "feature_names", None))
        contract = schema = None
        if config.contract is not None:
            contract = load_audit_contract(config.contract)
            width = int(np.prod(shape)) if shape else 0
            if model.classifier is not None:
                width = int(np.prod(model.classifier.input_shape))
            schema = schema_for(contract, names, width, config.label)
    except BaseException:
        model.close()
        raise
    paths = {role: p for role, p in (("train", config.train), ("test", config.test))
             if p is not None}
    datasets = {role: load_dataset(paths[role], bounds, num_classes, arrays=(x, y))
                for role, (x, y, _) in raw.items()}
    data = {role: data_info(paths[role], datasets[role], names) for role in raw}
    if config.contract is not None and contract is not None and schema is not None:
        data["contract"] = {"source": str(config.contract),
                            "sha256": file_digest(config.contract),
                            "n": int(contract.reference.n), "features": list(schema.names)}
    if model.classifier is not None:
        k = int(model.classifier.num_classes)
        datasets = {role: replace(ds, num_classes=k) for role, ds in datasets.items()}
    eps = threat.eps
    eps_source = "given"
    if eps is None:
        eps = default_eps(domain, threat.norm, bounds)
        eps_source = f"default for {domain} data ({threat.norm.value})"
    settings = {name: {**cls.defaults, **config.settings.get(name, {})}
                for name, cls in catalogue.items()}
    ctx = AuditContext(
        seed=config.seed, model=model.classifier, model_path=model.path,
        model_info=model.info, train=datasets.get("train"), test=datasets.get("test"),
        threat=None, query_budget=threat.query_budget, sensitive=threat.sensitive,
        time_budget_s=threat.time_budget_s,
        domain="image" if domain == "image" else "tabular" if domain == "tabular" else "other",
        settings=settings, signature_key=config.signature_key,
        output_policy=threat.output_policy,
        device=str(getattr(model.classifier, "device", "cpu")),
        feature_names=names, contract=contract, schema=schema, data_paths=dict(paths),
    )
    from bastion.audit.plan import effective_access

    access = effective_access(replace(ctx, threat=threat))
    if threat.access is Access.WHITE_BOX and getattr(ctx.model, "ensemble", None) is not None:
        access = "white-box"  # a tree model's structure is its white box (tree attacks use it)
    ctx.threat = ThreatModel(norm=threat.norm, eps=eps, bounds=bounds, targeted=threat.targeted,
                             access=threat.access if access == "none" else Access(access))
    threat_model = {**threat.to_dict(), "eps": eps, "eps_source": eps_source,
                    "access": ctx.threat.access.value}
    model.info["signature_status"] = model.signature_status
    checks = [cls() for cls in catalogue.values()]
    plan = make_plan(checks, ctx, only=config.only, skip=config.skip,
                     model_unavailable=model.unavailable)
    return Prepared(ctx, checks, plan, model, data, threat_model)


def _bounds(given: Any, domain: str, raw: Mapping[str, Any], classifier: Any
            ) -> tuple[float, float]:
    if given is not None:
        if len(given) != 2 or not float(given[0]) < float(given[1]):
            raise ConfigurationError(f"bounds must be low,high with low < high, got {given!r}")
        return float(given[0]), float(given[1])
    if classifier is not None:
        lo, hi = classifier.bounds
        return float(lo), float(hi)
    if domain == "image" or not raw:
        return 0.0, 1.0
    lo = min(float(x.min()) for x, *_ in raw.values())
    hi = max(float(x.max()) for x, *_ in raw.values())
    return (lo, hi) if lo < hi else (lo, lo + 1.0)


def _object_model(clf: Any, config: AuditConfig, domain: str, bounds: tuple[float, float]
                  ) -> ModelSource:
    """A classifier handed over in-process (``bastion demo``); its file, when named, is
    digested and scanned like any other."""
    from bastion.audit.sources import _capabilities, model_files

    path = Path(config.model) if config.model else None
    files, digest = model_files(path) if path is not None else ([], None)
    info = {"source": str(path) if path else f"<{type(clf).__name__}>",
            "kind": "file" if path else "object", "digest": digest, "files": files,
            "adapter": type(clf).__name__, "capabilities": _capabilities(clf),
            "input_shape": list(clf.input_shape), "num_classes": clf.num_classes,
            "bounds": list(bounds), "domain": domain}
    return ModelSource(clf, info, path)


class _Runner:
    """Runs the planned checks through an executor, saving and reusing finished ones.

    Each check is a unit of work (:func:`bastion.audit.workers.run_check_unit`) given the
    prepared context once (:class:`bastion.audit.workers.CheckPayload`). Results are saved here,
    in the driver, as they arrive, so an interrupted audit resumes whatever ran where. A check
    whose task keeps failing (its worker died on every attempt) is an ``error`` with the cause.
    """

    def __init__(self, prepared: Prepared, out: Path, *, fresh: bool, executor: Executor,
                 progress: Callable[[str, float], None] | None,
                 gpus_per_task: float = 0.0) -> None:
        self.p = prepared
        self.store = out / "checks"
        self.fresh = fresh
        self.executor = executor
        self.progress = progress
        self.gpus_per_task = gpus_per_task
        self.reused: list[str] = []

    def run(self) -> list[dict[str, Any]]:
        from bastion.audit import workers

        ctx = self.p.ctx
        entries = {e.check: e for e in self.p.plan}
        done: dict[str, dict[str, Any]] = {}
        todo: list[tuple[Check, str]] = []
        for check in self.p.checks:
            if not entries[check.name].will_run:
                continue
            fp = input_fingerprint(check, ctx, self.p.threat_model, self.p.data)
            saved = None if self.fresh else self._saved(check, fp)
            if saved is not None:
                done[check.name] = saved
            else:
                todo.append((check, fp))
        budget = ctx.time_budget_s
        deadline = None if budget is None else workers.wall_clock() + budget
        payload = workers.CheckPayload(ctx, deadline=deadline,
                                       load_options=self.p.model.load_options)

        def arrived(i: int, result: dict[str, Any] | UnitFailed) -> None:
            check, fp = todo[i]
            entry = self._entry(check, fp, result)
            if entry["status"] in ("passed", "failed"):
                write_json(self._path(check, fp), entry)
            done[check.name] = entry
            if self.progress is not None:
                self.progress(check.name, 1.0)

        self.executor.map(workers.run_check_unit, todo, shared=payload, errors="return",
                          gpus_per_task=self.gpus_per_task, on_result=arrived)
        out = []
        for check in self.p.checks:
            if check.name in done:
                out.append(done[check.name])
            else:
                e = entries[check.name]
                out.append(check_entry(check, CheckResult("not_run", reason=e.reason,
                                                          enable=e.enable),
                                       seconds=0.0, input_fingerprint=None))
        return out

    def _path(self, check: Check, fp: str) -> Path:
        return self.store / f"{check.name}-{fp}.json"

    def _saved(self, check: Check, fp: str) -> dict[str, Any] | None:
        path = self._path(check, fp)
        saved = _read_saved(path) if path.is_file() else None
        if saved is None or saved.get("input_fingerprint") != fp:
            return None
        log.info("%s: reusing the result saved in %s", check.name, path)
        self.reused.append(check.name)
        return saved

    def _entry(self, check: Check, fp: str, result: dict[str, Any] | UnitFailed
               ) -> dict[str, Any]:
        if not isinstance(result, UnitFailed):
            return result
        log.warning("check %s: its task failed: %s", check.name, result.cause)
        failed = CheckResult("error", reason=f"its task failed after {result.attempts} "
                             f"attempt(s): {result.cause}",
                             settings=dict(self.p.ctx.check_settings(check.name)))
        return check_entry(check, failed, seconds=0.0, input_fingerprint=fp)


def _read_saved(path: Path) -> dict[str, Any] | None:
    try:
        entry = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(entry, dict) or entry.get("status") not in ("passed", "failed"):
        return None
    return entry if check_entry_valid(entry) else None


def write_reports(doc: Mapping[str, Any], out: Path,
                  formats: Sequence[str] = REPORT_FORMATS) -> dict[str, Path]:
    """Write ``report.<fmt>`` for each format through :mod:`bastion.report`."""
    from bastion.report import write_report

    _check_formats(formats)
    return write_report(dict(doc), out, formats=tuple(formats))


def _check_formats(formats: Sequence[str]) -> None:
    from bastion.report import RENDERERS

    unknown = sorted(set(formats) - set(RENDERERS))
    if unknown:
        raise ConfigurationError(f"unknown report format(s) {', '.join(unknown)}; choose from "
                                 f"{', '.join(sorted(RENDERERS))}")


def config_record(config: AuditConfig, catalogue: Mapping[str, type[Check]]) -> dict[str, Any]:
    """The document's ``config``: the checks, their selection and configured settings, and the
    model's loading options, so that the same audit can be rerun on another model."""
    return {"checks": list(catalogue), "only": list(config.only), "skip": list(config.skip),
            "settings": {name: dict(v) for name, v in config.settings.items()},
            "model_options": dict(config.model_options), "label": config.label,
            "contract": None if config.contract is None else str(config.contract)}


def run_audit(
    config: AuditConfig,
    *,
    checks: Sequence[str] | None = None,
    classifier: Any = None,
    command: str = "audit",
    fresh: bool = False,
    progress: bool = False,
    executor: Executor | None = None,
    gpus_per_task: float = 0.0,
    transport: Any = None,
    formats: Sequence[str] = REPORT_FORMATS,
    write: bool = True,
    finalize: Callable[[dict[str, Any]], None] | None = None,
) -> AuditOutcome:
    """Audit ``config.model`` and write the report to ``config.out``.

    ``checks`` restricts the catalogue (the single-threat commands pass one name); checks left
    out that way are not in the report at all, while ``config.only``/``skip`` keep them in the
    plan as ``not_run``. ``classifier`` audits an in-process model (``config.model`` may then
    name its file, which is digested and scanned). ``progress`` shows a transient bar.
    ``executor`` runs the checks (default in this process; see :mod:`bastion.audit.executor`)
    and ``gpus_per_task`` is what each of its tasks asks for. ``finalize`` may amend the
    document (suppressions, the baseline's diff) before it is
    validated again and written.
    """
    from bastion._progress import progress_bar

    if write:
        _check_formats(formats)
    catalogue = _catalogue(checks)
    executor = executor or InProcessExecutor()
    prepared = prepare(config, catalogue, classifier=classifier, transport=transport)
    try:
        planned = sum(e.will_run for e in prepared.plan)
        with progress_bar(progress) as bar:
            task = bar.add_task("audit", total=max(planned, 1))
            names: list[str] = []

            def report(name: str, fraction: float) -> None:
                if not names or names[-1] != name:
                    names.append(name)
                bar.update(task, description=f"audit: {name}",
                           completed=len(names) - 1 + min(max(fraction, 0.0), 1.0))

            prepared.ctx.progress = report
            prepared.ctx.executor = executor
            runner = _Runner(prepared, config.out, fresh=fresh, executor=executor,
                             progress=report, gpus_per_task=gpus_per_task)
            entries = runner.run()
    finally:
        prepared.model.close()
    doc = build_document(
        command=command, seed=config.seed, model=prepared.model.info, data=prepared.data,
        threat_model=prepared.threat_model, plan=[e.to_dict() for e in prepared.plan],
        checks=entries, environment=environment(prepared.ctx.device, executor.name),
        catalogue=catalogue, config=config_record(config, catalogue))
    if finalize is not None:
        finalize(doc)
        validate_document(doc)
    written: dict[str, Path] = {}
    replaced: tuple[Path, ...] = ()
    if write:
        replaced = tuple(p for fmt in formats
                         if (p := config.out / f"report.{fmt}").exists())
        written = write_reports(doc, config.out, formats)
    return AuditOutcome(doc, config.out, written, tuple(runner.reused), replaced)
