"""Files an audit runs on: a TorchScript digits MLP, its training and test sets."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from bastion.data import load_digits


@pytest.fixture(scope="session")
def audit_files(tmp_path_factory, digits_mlp) -> dict[str, Path]:
    net, x_test, y_test = digits_mlp
    d = tmp_path_factory.mktemp("audit-inputs")
    data = load_digits()
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
    x, y = data.x[perm], data.y[perm]
    with warnings.catch_warnings():  # TorchScript is deprecated upstream but still shipped
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.trace(net, x[:2]).save(str(d / "model.pt"))
    np.savez(d / "train.npz", x=x[:400].numpy(), y=y[:400].numpy())
    np.savez(d / "test.npz", x=x_test[:120].numpy(), y=y_test[:120].numpy())
    return {"model": d / "model.pt", "train": d / "train.npz", "test": d / "test.npz"}

