"""Safe loading: clean files load with the safest loader; anything else is refused."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import joblib
import numpy as np
import pytest
import torch
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from bastion.artifacts import load, scan_path
from bastion.errors import InputError, ModelLoadError, UnsafeArtifactError


class _Call:
    def __reduce__(self) -> tuple[object, tuple[()]]:
        return os.getcwd, ()


def test_torch_state_dict_and_legacy_load(tmp_path: Path) -> None:
    net = torch.nn.Linear(3, 2)
    torch.save(net.state_dict(), tmp_path / "sd.pt")
    torch.save(net.state_dict(), tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    for name in ("sd.pt", "old.pt"):
        loaded = load(tmp_path / name)
        assert torch.equal(loaded["weight"], net.weight.detach())


def test_malicious_torch_file_is_refused_with_its_findings(tmp_path: Path) -> None:
    torch.save({"w": torch.ones(1), "x": _Call()}, tmp_path / "bad.pt")
    with pytest.raises(UnsafeArtifactError, match=r"posix\.getcwd \(critical\)"):
        load(tmp_path / "bad.pt")


def test_sklearn_joblib_loads_and_predicts(tmp_path: Path) -> None:
    x, y = load_iris(return_X_y=True)
    model = LogisticRegression(max_iter=300).fit(x, y)
    joblib.dump(model, tmp_path / "m.joblib", compress=3)
    loaded = load(tmp_path / "m.joblib")
    assert (loaded.predict(x) == model.predict(x)).all()
    bad = tmp_path / "bad.joblib"
    joblib.dump({"m": model, "hook": _Call()}, bad)
    with pytest.raises(UnsafeArtifactError, match="getcwd"):
        load(bad)


def test_numpy_safetensors_onnx_and_skops(tmp_path: Path) -> None:
    import onnx
    import skops.io as sio
    from safetensors.numpy import save_file

    np.save(tmp_path / "a.npy", np.arange(4))
    assert load(tmp_path / "a.npy").tolist() == [0, 1, 2, 3]
    save_file({"w": np.ones((2, 2), np.float32)}, str(tmp_path / "w.safetensors"))
    assert load(tmp_path / "w.safetensors")["w"].sum().item() == 4.0
    np.save(tmp_path / "obj.npy", np.array([1, None], dtype=object), allow_pickle=True)
    with pytest.raises(ModelLoadError):
        load(tmp_path / "obj.npy")  # clean, but numpy refuses object arrays without pickle
    graph = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"])], "g",
                                   [onnx.helper.make_tensor_value_info("x", 1, [1])],
                                   [onnx.helper.make_tensor_value_info("y", 1, [1])])
    onnx.save(onnx.helper.make_model(graph), str(tmp_path / "m.onnx"))
    assert load(tmp_path / "m.onnx").graph.node[0].op_type == "Relu"
    x, y = load_iris(return_X_y=True)
    model = LogisticRegression(max_iter=300).fit(x, y)
    sio.dump(model, tmp_path / "m.skops")
    assert scan_path(tmp_path / "m.skops").format == "skops"
    assert (load(tmp_path / "m.skops").predict(x) == model.predict(x)).all()


def test_unscannable_unknown_and_missing_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / "cut.pkl").write_bytes(pickle.dumps({"a": 1})[:-3])
    with pytest.raises(UnsafeArtifactError, match="could not be scanned"):
        load(tmp_path / "cut.pkl")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(UnsafeArtifactError, match="not one bastion knows"):
        load(tmp_path / "notes.txt")
    with pytest.raises(InputError):
        load(tmp_path / "missing.pt")


def test_torchscript_is_not_loaded(tmp_path: Path) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(torch.nn.Linear(2, 2)).save(str(tmp_path / "ts.pt"))
    with pytest.raises(ModelLoadError, match="torchscript"):
        load(tmp_path / "ts.pt")
