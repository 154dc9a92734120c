"""Request and response bodies of the gateway: JSON only, never a pickle.

A prediction request carries its inputs either as nested JSON lists of numbers::

    {"inputs": [[0.0, 0.5, ...], ...]}

or as little-endian float32 bytes in base64 with their shape::

    {"inputs_b64": "AAAAAAAAAD8=", "shape": [1, 2]}

or, for a tabular model served with a table contract, as records keyed by feature name::

    {"records": [{"age": 41, "income": 3200.0, "region": 2}, ...]}

Each record must name every feature of the model and nothing else (an unknown or missing
feature is refused naming it); its values must be numbers (category codes, 0/1 for one-hot
columns). The gateway then validates the rows against the contract (range, integer,
category: each violation names its column).

:func:`parse_inputs` turns the raw body into a float32 array or raises
:class:`~bastion.errors.InputError` naming what is wrong (the gateway answers 422).

>>> parse_inputs(b'{"inputs": [[0, 0.5], [1, 0.25]]}').tolist()
[[0.0, 0.5], [1.0, 0.25]]
>>> parse_inputs(b'{"inputs_b64": "AAAAAAAAAD8=", "shape": [1, 2]}').tolist()
[[0.0, 0.5]]
>>> parse_inputs(b'{"inputs": [["a"]]}')
Traceback (most recent call last):
...
bastion.errors.InputError: inputs must be numbers (nested lists of numbers), got str values
>>> parse_inputs(b'{"records": [{"b": 2, "a": 1}]}', features=("a", "b")).tolist()
[[1.0, 2.0]]
>>> parse_inputs(b'{"records": [{"a": 1, "c": 3}]}', features=("a", "b"))
Traceback (most recent call last):
...
bastion.errors.InputError: record 0: unknown feature 'c'; the model takes a, b
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from bastion.errors import InputError

__all__ = [
    "ErrorBody",
    "FeedbackRequest",
    "FeedbackResponse",
    "ModelInfo",
    "PredictRequest",
    "PredictResponse",
    "parse_feedback",
    "parse_inputs",
    "short",
]

_MAX_ELEMENTS = 50_000_000


class PredictRequest(BaseModel):
    """The body of ``POST /v1/models/{name}/predict`` (give ``inputs`` or ``inputs_b64``)."""

    model_config = ConfigDict(extra="forbid")

    inputs: list[Any] | None = Field(
        None, description="a batch of samples as nested lists of numbers, e.g. shape "
        "(n, 1, 8, 8); one sample without its batch axis is accepted too")
    inputs_b64: str | None = Field(
        None, description="the batch as base64 of little-endian float32 bytes (C order)")
    shape: list[int] | None = Field(None, description="the shape of inputs_b64, batch axis first")
    records: list[dict[str, Any]] | None = Field(
        None, description="tabular models with a table contract: one object per sample, "
        "keyed by feature name, e.g. [{\"age\": 41, \"income\": 3200.0}]")


class PredictResponse(BaseModel):
    model: str
    version: str
    request_id: str = Field(description="quote it in POST .../feedback to report true labels")
    predictions: list[int] = Field(description="the predicted class of each sample")
    probabilities: list[list[float]] | None = Field(
        None, description="class scores after the output policy; absent when label-only")
    flagged: list[int] = Field(default_factory=list,
                               description="samples the screening flagged (served anyway)")


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(min_length=1, max_length=64)
    labels: list[int] = Field(description="the true class of each sample of that request")


class FeedbackResponse(BaseModel):
    accepted: int
    accuracy: float | None = Field(None, description="accuracy over the last complete window")
    degraded: bool = False


class ModelInfo(BaseModel):
    name: str
    version: str
    source: str
    input_shape: list[int]
    num_classes: int
    output_policy: str
    contract: str | None = None


class ErrorBody(BaseModel):
    """Every error answer: what went wrong, and what to do about it."""

    error: str = Field(description="a short machine-readable code, e.g. 'rate_limited'")
    detail: str = Field(description="what was wrong and what to do")
    violations: list[dict[str, Any]] | None = Field(
        None, description="every contract violation (422 contract_violation only)")


def _reject_constant(name: str) -> Any:
    raise InputError(f"{name} is not a JSON number; send finite numbers only")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        dupes: set[str] = set()
        for k, _ in pairs:
            (dupes if k in seen else seen).add(k)
        raise InputError(f"duplicate key(s) {[short(k) for k in sorted(dupes)]} in a JSON object; "
                         "send each key once")
    return out


def short(text: str, limit: int = 64) -> str:
    """``text`` cut to ``limit`` characters (an ellipsis marks the cut), for error messages."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def load_json(body: bytes) -> Any:
    """Decode a JSON body strictly (no NaN/Infinity, no duplicate keys, bounded nesting and
    integer literals)."""
    if not body:
        raise InputError("the request body is empty; send a JSON object")
    try:
        return json.loads(body, parse_constant=_reject_constant, object_pairs_hook=_unique_keys)
    except RecursionError:
        raise InputError("the JSON body is nested too deeply") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"the body is not UTF-8 text: {exc.reason}") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"the body is not valid JSON: {exc.msg} at line {exc.lineno} "
                         f"column {exc.colno}") from None
    except ValueError as exc:  # e.g. an integer literal over Python's 4,300-digit limit
        raise InputError(f"the body holds a number that cannot be read ({short(str(exc), 80)});"
                         " send ordinary numbers") from None


def _depth(value: Any) -> int:
    """Nesting depth of a nested list, following first elements."""
    depth = 0
    while isinstance(value, list):
        depth += 1
        value = value[0] if value else None
    return depth


def _check_batch(n: int, max_batch: int | None) -> None:
    if max_batch is not None and n > max_batch:
        raise InputError(f"{n} samples in one request; at most {max_batch} (server.max_batch)")


def _from_b64(data: dict[str, Any], max_batch: int | None, sample_ndim: int | None
              ) -> np.ndarray:
    text, shape = data.get("inputs_b64"), data.get("shape")
    if not isinstance(text, str):
        raise InputError("inputs_b64 must be a base64 string")
    if not isinstance(shape, list) or not shape or not all(
            isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape):
        raise InputError("inputs_b64 needs 'shape': a list of positive integers, batch first")
    if sample_ndim is not None and len(shape) == sample_ndim + 1:
        _check_batch(shape[0], max_batch)
    count = math.prod(shape)
    if count > _MAX_ELEMENTS:
        raise InputError(f"shape {shape} has too many elements")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InputError("inputs_b64 is not valid base64") from None
    if len(raw) != 4 * count:
        raise InputError(f"inputs_b64 holds {len(raw)} bytes; shape {shape} needs {4 * count} "
                         "(float32, little-endian)")
    arr = np.frombuffer(raw, dtype="<f4").reshape(shape).astype(np.float32)
    if not np.isfinite(arr).all():
        raise InputError("inputs_b64 holds NaN or infinite values; send finite numbers")
    return arr


def _from_records(records: Any, features: tuple[str, ...] | None,
                  max_batch: int | None) -> np.ndarray:
    """The ``(n, len(features))`` float32 rows of ``records`` (see the module docstring)."""
    if features is None:
        raise InputError("this model takes no named records (it is served without a table "
                         "contract); send 'inputs' as lists of numbers")
    if not isinstance(records, list) or not records:
        raise InputError("records must be a non-empty list of objects keyed by feature name")
    _check_batch(len(records), max_batch)
    known = set(features)
    out = np.empty((len(records), len(features)), dtype=np.float64)
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise InputError(f"record {i} must be an object keyed by feature name")
        unknown = [k for k in rec if k not in known]
        if unknown:
            raise InputError(f"record {i}: unknown feature {short(unknown[0])!r}; the model "
                             f"takes {short(', '.join(features), 300)}")
        missing = [f for f in features if f not in rec]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise InputError(f"record {i} lacks feature {missing[0]!r}{more}")
        for j, f in enumerate(features):
            v = rec[f]
            if isinstance(v, bool):
                v = int(v)
            if not isinstance(v, int | float):
                raise InputError(
                    f"record {i}, feature {f!r}: expected a number, got "
                    f"{short(json.dumps(v), 40)} (send category codes and 0/1 one-hot values)")
            if not math.isfinite(v) or abs(v) > 3.0e38:
                raise InputError(f"record {i}, feature {f!r}: {v} is not a finite float32")
            out[i, j] = v
    return out.astype(np.float32)


def parse_inputs(body: bytes, *, max_batch: int | None = None,
                 sample_ndim: int | None = None,
                 features: tuple[str, ...] | None = None) -> np.ndarray:
    """The float32 batch in a prediction request body (see the module docstring).

    With ``max_batch`` and ``sample_ndim`` (the dimensions of one sample), a batch of more
    than ``max_batch`` samples is refused right after the JSON is decoded, before any array
    is built or validated. ``features`` are the model's named columns, in its order: a body
    of ``records`` is read by them.
    """
    data = load_json(body)
    if not isinstance(data, dict):
        raise InputError("the body must be a JSON object with 'inputs' or 'inputs_b64'")
    extra = sorted(set(data) - {"inputs", "inputs_b64", "shape", "records"})
    if extra:
        raise InputError(f"unknown field(s) {extra}; send 'inputs' or 'inputs_b64' + 'shape'")
    if data.get("records") is not None:
        if any(data.get(k) is not None for k in ("inputs", "inputs_b64", "shape")):
            raise InputError("send 'records' alone, without 'inputs', 'inputs_b64' or 'shape'")
        return _from_records(data["records"], features, max_batch)
    has_list, has_b64 = data.get("inputs") is not None, data.get("inputs_b64") is not None
    if has_list == has_b64:
        raise InputError("send exactly one of 'inputs' (nested lists) or 'inputs_b64' + 'shape'")
    if has_b64:
        return _from_b64(data, max_batch, sample_ndim)
    if data.get("shape") is not None:
        raise InputError("'shape' goes with 'inputs_b64' only; nested 'inputs' carry their shape")
    inputs = data["inputs"]
    if not isinstance(inputs, list) or not inputs:
        raise InputError("inputs must be a non-empty list of samples")
    if sample_ndim is not None and _depth(inputs) == sample_ndim + 1:
        _check_batch(len(inputs), max_batch)
    try:
        arr = np.array(inputs)
    except (ValueError, TypeError):
        raise InputError("inputs are ragged: every sample must have the same shape") from None
    if arr.dtype.kind not in "iuf":
        what = {"U": "str", "b": "bool", "O": "mixed or ragged"}.get(arr.dtype.kind,
                                                                     str(arr.dtype))
        raise InputError(f"inputs must be numbers (nested lists of numbers), got {what} values")
    if arr.size == 0:
        raise InputError("inputs hold no numbers")
    with np.errstate(over="ignore"):
        out = arr.astype(np.float32)
    if not np.isfinite(out).all():
        raise InputError("inputs hold values too large for float32; send finite numbers")
    return out


def parse_feedback(body: bytes) -> FeedbackRequest:
    """The body of ``POST .../feedback``."""
    data = load_json(body)
    if not isinstance(data, dict):
        raise InputError("the body must be a JSON object with 'request_id' and 'labels'")
    rid, labels = data.get("request_id"), data.get("labels")
    extra = sorted(set(data) - {"request_id", "labels"})
    if extra:
        raise InputError(f"unknown field(s) {extra}; send 'request_id' and 'labels'")
    if not isinstance(rid, str) or not 0 < len(rid) <= 64:
        raise InputError("request_id must be the string the predict answer returned")
    if not isinstance(labels, list) or not labels or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in labels):
        raise InputError("labels must be a non-empty list of integers (one per sample)")
    return FeedbackRequest(request_id=rid, labels=labels)
