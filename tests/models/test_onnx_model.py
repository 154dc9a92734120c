"""OnnxClassifier: round trip from torch, output kinds, batching, failures."""

from __future__ import annotations

import io
import warnings

import onnx
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

from bastion.errors import ConfigurationError, ModelLoadError, QueryBudgetExceeded
from bastion.models import Capability
from bastion.models.onnx_model import OnnxClassifier


def _net(softmax: bool = False) -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Flatten(), nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 10)]
    if softmax:
        layers.append(nn.Softmax(dim=1))
    return nn.Sequential(*layers).eval()


def _export(net: nn.Module, *, dynamic: bool = True, batch: int = 1) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # torch 2.13 deprecates the TorchScript-based exporter; the dynamo one needs onnxscript
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            net,
            (torch.zeros(batch, 1, 8, 8),),
            buf,
            dynamo=False,
            input_names=["x"],
            output_names=["logits"],
            dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}} if dynamic else None,
        )
    return buf.getvalue()


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.rand(20, 1, 8, 8, generator=torch.Generator().manual_seed(1))


def test_round_trip_from_a_file_matches_torch(tmp_path, x):
    net = _net()
    path = tmp_path / "net.onnx"
    path.write_bytes(_export(net))
    clf = OnnxClassifier(path)
    assert clf.input_shape == (1, 8, 8) and clf.num_classes == 10
    assert clf.output == "logits"
    assert clf.capabilities == Capability.score_only()
    with torch.no_grad():
        ref = net(x)
    got = clf.logits(x)
    torch.testing.assert_close(
        torch.log_softmax(got, 1), torch.log_softmax(ref, 1), atol=1e-5, rtol=0
    )
    assert torch.equal(clf.predict(x), ref.argmax(1))
    assert clf.queries == 40


def test_softmax_output_is_read_as_probabilities(x):
    net = _net(softmax=True)
    clf = OnnxClassifier(_export(net))
    assert clf.output == "probabilities"
    with torch.no_grad():
        ref = torch.log(net(x))
    torch.testing.assert_close(clf.logits(x), ref, atol=1e-5, rtol=0)
    forced = OnnxClassifier(_export(net), output="logits")
    # read as logits, probabilities give a different (wrong) distribution: the option matters
    assert not torch.allclose(torch.log_softmax(forced.logits(x), 1), ref, atol=1e-3)


def test_fixed_batch_graph_is_fed_in_chunks(x):
    net = _net()
    clf = OnnxClassifier(_export(net, dynamic=False, batch=4))
    got = clf.logits(x[:10])  # 10 rows through a batch-4 graph: 4 + 4 + 2 (padded)
    with torch.no_grad():
        ref = net(x[:10])
    torch.testing.assert_close(
        torch.log_softmax(got, 1), torch.log_softmax(ref, 1), atol=1e-5, rtol=0
    )


def test_symbolic_dims_need_shapes_and_shapes_are_checked():
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", "d"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", "d"])],
    )
    data = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    blob = data.SerializeToString()
    with pytest.raises(ConfigurationError, match="input_shape"):
        OnnxClassifier(blob)
    with pytest.raises(ConfigurationError, match="num_classes"):
        OnnxClassifier(blob, input_shape=(3,))
    clf = OnnxClassifier(blob, input_shape=(3,), num_classes=3)
    assert clf.predict(torch.tensor([[0.1, 0.9, 0.2]])).tolist() == [1]
    with pytest.raises(ConfigurationError, match="num_classes=5"):
        OnnxClassifier(_export(_net()), num_classes=5)
    with pytest.raises(ConfigurationError, match="does not match"):
        OnnxClassifier(_export(_net()), input_shape=(65,))


def test_broken_and_missing_files_raise_model_load_error(tmp_path):
    good = _export(_net())
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(good[: len(good) // 2])
    with pytest.raises(ModelLoadError, match=r"broken\.onnx"):
        OnnxClassifier(broken)
    with pytest.raises(ModelLoadError, match="cannot load ONNX model"):
        OnnxClassifier(b"this is not a model")
    with pytest.raises(ModelLoadError, match="does not exist"):
        OnnxClassifier(tmp_path / "missing.onnx")
    assert onnx.load_from_string(good).graph.output  # the intact export is valid


def test_query_budget_is_enforced_before_running(x):
    clf = OnnxClassifier(_export(_net()), query_budget=25)
    clf.logits(x)
    with pytest.raises(QueryBudgetExceeded):
        clf.predict(x[:6])
    assert clf.queries == 20
    clf.predict(x[:5])
    assert clf.queries == 25
