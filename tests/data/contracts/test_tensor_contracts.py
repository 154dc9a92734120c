"""Tensor contracts on real images: digits (n, 1, 8, 8) and MNIST (n, 1, 28, 28)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from bastion.data import load_digits, load_mnist, shared_mnist_dir
from bastion.data.contracts import ContractFailed, TensorContract, infer_contract, validate
from bastion.errors import DataContractError, InputError


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    x = load_digits().x.numpy()
    perm = np.random.default_rng(0).permutation(len(x))
    return x[perm[:1200]], x[perm[1200:]]


@pytest.fixture(scope="module")
def contract(digits) -> TensorContract:
    c = infer_contract(digits[0], name="digits")
    assert isinstance(c, TensorContract)
    return c


def _batches(held: np.ndarray, k: int, size: int):
    for seed in range(k):
        yield held[np.random.default_rng(seed).choice(len(held), size, replace=False)]


def test_inferred_fields(contract, digits):
    assert contract.shape == (None, 1, 8, 8)
    assert contract.dtype == "float32"
    assert (contract.min, contract.max) == (0.0, 1.0)
    assert contract.channel_axis == 1 and len(contract.channels) == 1
    assert contract.channels[0]["mean"] == pytest.approx(digits[0].mean(), rel=1e-4)
    assert contract.channels[0]["std"] == pytest.approx(digits[0].std(), rel=1e-4)
    assert contract.reference.n == 1200 and not contract.allow_nan


def test_clean_held_out_batches_pass(contract, digits):
    failed = [validate(b, contract).ok for b in _batches(digits[1], 10, 150)].count(False)
    assert failed <= 1  # FDR 0.05 per batch: one false alarm in ten is already unlucky


def test_torch_tensor_and_single_sample(contract, digits):
    assert validate(torch.from_numpy(digits[1][:50]), contract).ok
    one = validate(digits[1][0], contract, distribution=False)  # no batch axis
    assert one.ok and one.n_rows == 1


def test_brightness_shift_is_drift(contract, digits):
    shifted = np.clip(digits[1][:200] + 0.2, 0.0, 1.0)
    report = validate(shifted, contract)
    assert not report.ok and report.rules() == {"drift"}
    drifted = {d.column for d in report.drift if d.drifted}
    assert {"ch0.mean", "ch0.std"} <= drifted
    assert any(v.rule == "psi" and v.value >= 0.25 for v in report.warnings)
    mean_test = next(d for d in report.drift if d.column == "ch0.mean")
    assert mean_test.psi is not None and mean_test.psi > 1.0


def test_each_violation_located(contract, digits):
    batch = digits[1][:30].copy()
    batch[3, 0, 2, 5] = 1.5
    batch[7, 0, 0, 1] = -0.4
    batch[11, 0, 4, 4] = np.nan
    report = validate(batch, contract, distribution=False)
    got = {(v.rule, v.row, v.index) for v in report.errors}
    assert got == {("range", 3, (0, 2, 5)), ("range", 7, (0, 0, 1)), ("nan", 11, (0, 4, 4))}
    rng = next(v for v in report.errors if v.row == 3)
    assert rng.value == 1.5 and rng.expected == [-0.1, 1.1]


def test_tolerance_is_editable(contract, digits):
    batch = digits[1][:20].copy()
    batch[0, 0, 0, 0] = 1.05
    assert validate(batch, contract, distribution=False).ok
    strict = dataclasses.replace(contract, range_tolerance=0.0)
    assert [v.rule for v in validate(batch, strict, distribution=False).errors] == ["range"]


def test_wrong_shape_and_dtype(contract, digits):
    wrong_shape = validate(digits[1][:10].reshape(10, 64), contract)
    assert [(v.rule, v.value) for v in wrong_shape.errors] == [("shape", [10, 64])]
    wrong_dtype = validate(digits[1][:10].astype(np.float64), contract, distribution=False)
    assert [(v.rule, v.value, v.expected) for v in wrong_dtype.errors] == [
        ("dtype", "float64", "float32")
    ]
    text = validate(np.array([["a"] * 64]), contract)
    assert [v.rule for v in text.errors] == ["dtype"]


def test_duplicates_near_duplicates_and_outliers(contract, digits):
    batch = digits[1][:40].copy()
    batch[20] = batch[5]
    batch[30] = np.clip(batch[8] + 0.002, 0, 1)
    rng = np.random.default_rng(1)
    batch[35] = rng.random((1, 8, 8)).astype(np.float32)
    report = validate(batch, contract, distribution=False)
    assert report.ok  # duplicates and outliers are warnings by default
    groups = {(g.rows, g.exact) for g in report.duplicates}
    assert ((5, 20), True) in groups and ((8, 30), False) in groups
    assert 35 in {o.row for o in report.outliers}
    forbid = dataclasses.replace(contract, allow_duplicates=False)
    assert [(v.rule, v.row) for v in validate(batch, forbid, distribution=False).errors] == [
        ("duplicate", 20)
    ]


def test_strict_raises_with_report(contract, digits):
    batch = digits[1][:5] * 3
    with pytest.raises(ContractFailed) as info:
        validate(batch, contract, strict=True)
    assert isinstance(info.value, DataContractError)
    assert info.value.report.rules() == {"range"}
    assert "range" in str(info.value)


def test_bad_reference_rejected():
    with pytest.raises(InputError):
        infer_contract(np.zeros(5))
    with pytest.raises(InputError):
        infer_contract(np.array([[np.nan, np.nan]] * 3))


@pytest.mark.skipif(shared_mnist_dir() is None, reason="MNIST idx files not found")
def test_mnist_clean_passes_shift_fails():
    x = load_mnist().x.numpy()
    perm = np.random.default_rng(0).permutation(len(x))
    contract = infer_contract(x[perm[:3000]], name="mnist")
    assert contract.shape == (None, 1, 28, 28)
    held = x[perm[3000:6000]]
    failed = [validate(b, contract).ok for b in _batches(held, 6, 200)].count(False)
    assert failed <= 1
    darker = validate(held[:200] * 0.85, contract)
    assert "drift" in darker.rules() and darker.rules() <= {"drift"}
    batch = held[:20].copy()
    batch[4, 0, 27, 27] = 2.0
    batch[9, 0, 13, 1] = np.nan
    got = {(v.rule, v.row, v.index) for v in validate(batch, contract).errors}
    assert got == {("range", 4, (0, 27, 27)), ("nan", 9, (0, 13, 1))}
