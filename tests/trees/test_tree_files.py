"""Native tree files: scanned, parsed by bastion, validated before any predict."""

from __future__ import annotations

import struct

import lightgbm as lgb
import numpy as np
import pytest
import skops.io as sio
import torch
import xgboost as xgb
from sklearn.ensemble import RandomForestClassifier

from bastion.artifacts.scan import scan_path
from bastion.artifacts.scan._trees import decode_ubjson, sniff_tree
from bastion.errors import ModelLoadError, UnsafeArtifactError
from bastion.models.loading import detect_format, load_model
from bastion.models.trees import TreeClassifier


@pytest.fixture(scope="module")
def xgb_model(multi_data):
    X, y = multi_data
    return xgb.XGBClassifier(n_estimators=6, max_depth=3, n_jobs=1, random_state=0).fit(X, y)


@pytest.fixture(scope="module")
def lgb_model(binary_data):
    X, y = binary_data
    return lgb.LGBMClassifier(n_estimators=6, num_leaves=8, n_jobs=1, verbose=-1).fit(X, y)


def _probs(clf, X):
    return torch.softmax(clf.logits(torch.tensor(X)), dim=1).numpy()


@pytest.mark.parametrize("suffix, fmt", [("json", "xgboost-json"), ("ubj", "xgboost-ubj")])
def test_xgboost_files_load_safely(tmp_path, xgb_model, multi_data, suffix, fmt):
    X, _ = multi_data
    path = tmp_path / f"model.{suffix}"
    xgb_model.save_model(path)
    assert detect_format(path) == fmt
    scan = scan_path(path)
    assert scan.verdict.value == "clean" and scan.format == fmt
    clf = load_model(path, num_classes=3)
    assert isinstance(clf, TreeClassifier)
    np.testing.assert_allclose(_probs(clf, X), xgb_model.predict_proba(X), rtol=1e-5, atol=1e-6)


def test_lightgbm_text_loads_safely(tmp_path, lgb_model, binary_data):
    X, _ = binary_data
    path = tmp_path / "model.txt"
    lgb_model.booster_.save_model(path)
    assert detect_format(path) == "lightgbm-text"
    assert scan_path(path).verdict.value == "clean"
    clf = load_model(path)
    np.testing.assert_allclose(_probs(clf, X), lgb_model.predict_proba(X), rtol=1e-6)


def test_crafted_xgboost_json_is_refused_before_predict(tmp_path, xgb_model):
    path = tmp_path / "model.json"
    xgb_model.save_model(path)
    text = path.read_text()
    # Point the first tree's root at a child far outside the tree.
    key = '"left_children":['
    i = text.index(key) + len(key)
    path.write_text(text[:i] + "4096" + text[text.index(",", i) :])
    scan = scan_path(path)
    assert scan.verdict.value == "unsafe"
    assert scan.findings[0].operator == "tree-structure" and "outside" in scan.findings[0].why
    with pytest.raises(UnsafeArtifactError, match="outside"):
        load_model(path)


def test_crafted_ubj_child_is_refused(tmp_path, xgb_model):
    raw = bytearray(bytes(xgb_model.get_booster().save_raw(raw_format="ubj")))
    key = b"left_children[$l#L"
    i = raw.index(key) + len(key) + 8  # skip the int64 count
    raw[i : i + 4] = struct.pack(">i", 1 << 20)
    path = tmp_path / "model.ubj"
    path.write_bytes(bytes(raw))
    assert scan_path(path).verdict.value == "unsafe"
    with pytest.raises(UnsafeArtifactError, match="outside"):
        load_model(path)
    # The decoder itself is bounded: a truncated document is an error, not a crash.
    with pytest.raises(ModelLoadError, match=r"past the end|exceeds"):
        decode_ubjson(bytes(raw[: len(raw) // 2]))


def test_crafted_lightgbm_feature_is_refused(tmp_path, lgb_model):
    text = lgb_model.booster_.model_to_string()
    lines = text.split("\n")
    j = next(k for k, ln in enumerate(lines) if ln.startswith("split_feature="))
    lines[j] = "split_feature=" + " ".join(["999", *lines[j].split("=")[1].split()[1:]])
    path = tmp_path / "model.txt"
    path.write_text("\n".join(lines))
    assert scan_path(path).verdict.value == "unsafe"
    with pytest.raises(UnsafeArtifactError, match="feature 999"):
        load_model(path)


def test_skops_forest_is_validated(tmp_path, binary_data):
    X, y = binary_data
    rf = RandomForestClassifier(n_estimators=3, max_depth=3, random_state=0).fit(X, y)
    good = tmp_path / "rf.skops"
    sio.dump(rf, good)
    clf = load_model(good, bounds=(0.0, 5000.0))
    assert isinstance(clf, TreeClassifier) and clf.ensemble.n_trees == 3
    np.testing.assert_allclose(_probs(clf, X), rf.predict_proba(X), rtol=1e-6, atol=1e-9)
    # A crafted child index inside an allowlisted sklearn Tree is refused by bastion's check.
    rf.estimators_[1].tree_.children_left[0] = 10_000
    bad = tmp_path / "rf-bad.skops"
    sio.dump(rf, bad)
    with pytest.raises(ModelLoadError, match="outside"):
        load_model(bad, bounds=(0.0, 5000.0))


def test_sniff_ignores_other_json():
    assert sniff_tree(b'{"schema": "bastion.audit/1"}') is None
    assert sniff_tree(b"tree of life") is None
