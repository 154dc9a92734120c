"""Score-only adapter over an ONNX model run by onnxruntime on the CPU.

The graph's first input is fed the batch (cast to the input's element type), and the first
rank-2 floating output is read as the scores. What the scores are is given by ``output``:

- ``"logits"``: returned by :meth:`OnnxClassifier.logits` as they are;
- ``"probabilities"``: returned as ``log(p)`` clamped at ``log(1e-12)``;
- ``"auto"`` (default): ``"probabilities"`` when the node producing the output is a
  ``Softmax`` (or the output's name contains ``prob``), else ``"logits"``.

Either way ``softmax(logits(x))`` is the model's class distribution and ``predict`` is the
argmax. Score-only: nothing here is differentiable.

The input shape and the number of classes are read from the graph when its dimensions are
fixed; pass ``input_shape`` / ``num_classes`` for symbolic ones. A symbolic (dynamic) batch
dimension takes the whole batch in one run; a fixed batch size ``b`` is fed ``b`` rows at a
time (the last chunk is padded and the padding dropped).

Example
-------
>>> import onnx, torch
>>> from onnx import TensorProto, helper
>>> from bastion.models.onnx_model import OnnxClassifier
>>> w = helper.make_tensor("w", TensorProto.FLOAT, [2, 3], [1, 0, 0, 0, 1, 0])
>>> graph = helper.make_graph(
...     [helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
...     [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2])],
...     [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])], [w])
>>> model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
>>> clf = OnnxClassifier(model.SerializeToString())
>>> clf.input_shape, clf.num_classes
((2,), 3)
>>> clf.predict(torch.tensor([[0.9, 0.1], [0.2, 0.8]])).tolist()
[0, 1]
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from bastion.errors import ConfigurationError, InputError, ModelError, ModelLoadError
from bastion.models.base import BaseClassifier, Capability

__all__ = ["OnnxClassifier"]

Output = Literal["auto", "logits", "probabilities"]
_OUTPUTS = ("auto", "logits", "probabilities")
_LOG_EPS = 1e-12
_NP_TYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
}


def _fixed(dims: Sequence[Any]) -> tuple[int, ...] | None:
    """The dimensions as ints, or ``None`` if any is symbolic/unknown."""
    if any(not isinstance(d, int) or d <= 0 for d in dims):
        return None
    return tuple(int(d) for d in dims)


class OnnxClassifier(BaseClassifier):
    """Score-only classifier over an ONNX model (a path or the serialized bytes).

    Parameters
    ----------
    path_or_bytes:
        A ``.onnx`` file path or the model's bytes.
    input_shape, num_classes:
        The shape of one input and the number of classes; inferred from the graph when its
        dimensions are fixed. A given ``input_shape`` with the right number of elements is
        reshaped to the graph's input shape.
    output:
        ``"auto"``, ``"logits"`` or ``"probabilities"`` (see the module docstring).
    """

    def __init__(
        self,
        path_or_bytes: str | os.PathLike[str] | bytes,
        *,
        input_shape: Sequence[int] | None = None,
        num_classes: int | None = None,
        bounds: tuple[float, float] = (0.0, 1.0),
        output: Output = "auto",
        query_budget: int | None = None,
    ) -> None:
        if output not in _OUTPUTS:
            raise ConfigurationError(f"output must be one of {_OUTPUTS}, got {output!r}")
        self._source = (
            "<bytes>" if isinstance(path_or_bytes, bytes | bytearray) else str(path_or_bytes)
        )
        src = self._source_of(path_or_bytes)
        session = self._open(src)
        inputs = session.get_inputs()
        if not inputs:
            raise ModelLoadError(f"ONNX model {self._source} has no inputs")
        inp = inputs[0]
        if inp.type not in _NP_TYPES:
            raise ModelLoadError(
                f"ONNX model {self._source} takes {inp.type} input; only float tensors are "
                "supported"
            )
        out = self._pick_output(session)
        graph_in = list(inp.shape or [])
        if len(graph_in) < 2:
            raise ModelLoadError(
                f"ONNX model {self._source} input {inp.name!r} has shape {graph_in}; expected a "
                "batch dimension followed by the input's dimensions"
            )
        shape = self._resolve_input_shape(graph_in[1:], input_shape)
        classes = self._resolve_classes(out.shape[1], num_classes)
        super().__init__(
            input_shape=shape,
            num_classes=classes,
            bounds=bounds,
            capabilities=Capability.score_only(),
            query_budget=query_budget,
        )
        self._session = session
        self._input_name = inp.name
        self._input_dtype = _NP_TYPES[inp.type]
        fixed_in = _fixed(graph_in[1:])
        self._feed_shape = fixed_in if fixed_in is not None else shape
        batch = graph_in[0]
        self._fixed_batch = int(batch) if isinstance(batch, int) and batch > 0 else None
        self._output_name = out.name
        self.output = self._resolve_kind(output, out.name, src)

    # -- construction helpers -------------------------------------------------------------
    def _source_of(self, path_or_bytes: str | os.PathLike[str] | bytes) -> str | bytes:
        if isinstance(path_or_bytes, bytes | bytearray):
            return bytes(path_or_bytes)
        p = Path(path_or_bytes)
        if not p.is_file():
            raise ModelLoadError(f"ONNX model file {p} does not exist or is not a file")
        return str(p)

    def _open(self, src: str | bytes) -> Any:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        try:
            return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own, unexported exception types
            raise ModelLoadError(
                f"cannot load ONNX model {self._source}: {str(exc).strip()[:300]}; check that "
                "the file is a complete, valid ONNX model (onnx.checker.check_model)"
            ) from exc

    def _pick_output(self, session: Any) -> Any:
        for out in session.get_outputs():
            if out.type in _NP_TYPES and len(out.shape or []) == 2:
                return out
        names = [f"{o.name}: {o.type} {o.shape}" for o in session.get_outputs()]
        raise ModelLoadError(
            f"ONNX model {self._source} has no (batch, classes) float output (outputs: "
            f"{names}); export the scores as one 2-d tensor (for skl2onnx, zipmap=False)"
        )

    def _resolve_input_shape(
        self, graph_dims: Sequence[Any], given: Sequence[int] | None
    ) -> tuple[int, ...]:
        fixed = _fixed(graph_dims)
        if given is None:
            if fixed is None:
                raise ConfigurationError(
                    f"ONNX model {self._source} has symbolic input dimensions {list(graph_dims)}; "
                    "pass input_shape"
                )
            return fixed
        shape = tuple(int(s) for s in given)
        if fixed is not None and math.prod(shape) != math.prod(fixed):
            raise ConfigurationError(
                f"input_shape {shape} does not match the ONNX model's input {fixed}"
            )
        return shape

    def _resolve_classes(self, dim: Any, given: int | None) -> int:
        if given is None:
            if not isinstance(dim, int) or dim <= 0:
                raise ConfigurationError(
                    f"ONNX model {self._source} has a symbolic class dimension {dim!r}; "
                    "pass num_classes"
                )
            return int(dim)
        if isinstance(dim, int) and dim > 0 and int(given) != dim:
            raise ConfigurationError(
                f"num_classes={given} but the ONNX model outputs {dim} scores per input"
            )
        return int(given)

    def _resolve_kind(self, output: str, name: str, src: str | bytes) -> str:
        if output != "auto":
            return output
        import onnx

        try:  # the session keeps no graph: read it again, without external weights
            if isinstance(src, bytes):
                model = onnx.load_from_string(src)
            else:
                model = onnx.load(src, load_external_data=False)
        except Exception:  # pragma: no cover - the session already parsed it
            model = None
        if model is not None:
            for node in model.graph.node:
                if name in node.output and node.op_type == "Softmax":
                    return "probabilities"
        return "probabilities" if "prob" in name.lower() else "logits"

    # -- queries --------------------------------------------------------------------------
    def _run(self, batch: np.ndarray) -> np.ndarray:
        try:
            outs = self._session.run([self._output_name], {self._input_name: batch})
        except Exception as exc:  # onnxruntime's exception types are not public
            raise ModelError(
                f"ONNX model {self._source} failed on a batch of shape {batch.shape}: "
                f"{str(exc).strip()[:300]}"
            ) from exc
        return np.asarray(outs[0], dtype=np.float64)

    def _scores(self, x: torch.Tensor) -> np.ndarray:
        n = x.shape[0]
        arr = x.detach().to("cpu").numpy().astype(self._input_dtype, copy=False)
        arr = np.ascontiguousarray(arr.reshape((n, *self._feed_shape)))
        if self._fixed_batch is None:
            scores = self._run(arr) if n else np.zeros((0, self.num_classes))
        else:
            b = self._fixed_batch
            parts = []
            for start in range(0, n, b):
                chunk = arr[start : start + b]
                pad = b - chunk.shape[0]
                if pad:
                    chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)])
                parts.append(self._run(chunk)[: b - pad])
            scores = np.concatenate(parts) if parts else np.zeros((0, self.num_classes))
        if scores.shape != (n, self.num_classes):
            raise ModelError(
                f"ONNX model {self._source} returned scores of shape {scores.shape}, expected "
                f"{(n, self.num_classes)}"
            )
        return scores

    @property
    def score_floor(self) -> float | None:  # type: ignore[override]
        """``log(1e-12)`` when the model outputs probabilities (clamped before the log)."""
        return math.log(_LOG_EPS) if self.output == "probabilities" else None

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_floating_point(x):
            raise InputError(f"expected a floating-point batch, got {x.dtype}")
        scores = self._scores(x)
        if self.output == "probabilities":
            scores = np.log(np.clip(scores, _LOG_EPS, None))
        return torch.from_numpy(scores).to(x.device, torch.float32)

    def __repr__(self) -> str:
        return (
            f"OnnxClassifier({self._source!r}, input_shape={self.input_shape}, "
            f"num_classes={self.num_classes}, output={self.output!r}, bounds={self.bounds})"
        )
