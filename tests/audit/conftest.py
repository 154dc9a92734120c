"""Files an audit runs on: a TorchScript digits MLP, its training and test sets; and the
session's Ray cluster for every Ray test."""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from bastion.data import load_digits

HERE = Path(__file__).parent


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


@pytest.fixture(scope="session")
def ray_cluster():
    """One two-node Ray cluster on loopback for every Ray test of the session (a head with one
    CPU, a second node with one CPU and the custom resource ``node2``), stopped at the end.
    ``ray.init`` is attached to it, so ``RayExecutor()`` runs there."""
    ray = pytest.importorskip("ray", reason="the Ray tests need Ray: pip install 'bastion-ml[ray]'")
    sys.path.insert(0, str(HERE))
    from _ray_cluster import LocalCluster

    pythonpath = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p)
    local = LocalCluster(head_cpus=1, env={"PYTHONPATH": pythonpath})
    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_USAGE_STATS_ENABLED")}
    os.environ.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    try:
        local.add_node(1, {"node2": 1})
        ray.init(address=local.address, log_to_driver=False)
        yield local
    finally:
        ray.shutdown()
        local.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        sys.path.remove(str(HERE))
