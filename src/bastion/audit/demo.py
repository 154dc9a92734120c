"""The bundled demo: a small CNN trained on scikit-learn's digits, then audited with every check
that applies (``bastion demo``).

Everything is seeded, so two runs with the same seed give the same model, the same data split
and the same report (timings aside). The demo writes ``model.pt`` (a torch state dict),
``train.npz`` and ``test.npz`` beside the report, so the same audit can be rerun with
``bastion audit --model OUT/model.pt --factory ...`` or any other tool.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bastion.audit.config import AuditConfig, AuditThreat
from bastion.audit.executor import Executor
from bastion.audit.runner import AuditOutcome, run_audit

__all__ = ["DEMO_TRAIN", "run_demo"]

#: digits in the training split (the remaining 397 are the test set)
DEMO_TRAIN = 1400


def run_demo(out: str | Path, *, eps: float = 0.1, seed: int = 0, device: str = "cpu",
             progress: bool = False, executor: Executor | None = None) -> AuditOutcome:
    """Train the demo CNN and audit it into ``out`` (report.json, .html, .md), its checks run
    by ``executor`` (default in this process)."""
    import torch

    from bastion.data import load_digits
    from bastion.models import TorchClassifier
    from bastion.models.zoo import small_cnn, train_classifier

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_digits()
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    x, y = data.x[perm], data.y[perm]
    x_train, y_train, x_test, y_test = x[:DEMO_TRAIN], y[:DEMO_TRAIN], x[DEMO_TRAIN:], \
        y[DEMO_TRAIN:]
    torch.manual_seed(seed)  # the initial weights too, so the whole demo repeats exactly
    net = small_cnn((1, 8, 8), 10, width=8).to(device)
    train_classifier(net, x_train, y_train, epochs=10, lr=3e-3, seed=seed)
    clf = TorchClassifier(net, input_shape=(1, 8, 8), num_classes=10, bounds=(0.0, 1.0))
    torch.save(net.state_dict(), out / "model.pt")
    np.savez(out / "train.npz", x=x_train.numpy(), y=y_train.numpy())
    np.savez(out / "test.npz", x=x_test.numpy(), y=y_test.numpy())
    config = AuditConfig(
        model=str(out / "model.pt"), train=out / "train.npz", test=out / "test.npz", out=out,
        seed=seed, threat=AuditThreat(eps=eps),
    )
    return run_audit(config, classifier=clf, command="demo", fresh=True, progress=progress,
                     executor=executor)
