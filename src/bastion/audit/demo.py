"""The bundled demo: a small CNN trained on scikit-learn's digits, then audited with every check
that applies (``bastion demo``).

Everything is seeded, so two runs with the same seed give the same model, the same data split
and the same report (timings aside). The demo writes ``model.pt`` (a torch state dict),
``train.npz`` and ``test.npz`` beside the report, so the same audit can be rerun with
``bastion audit --model OUT/model.pt --factory ...`` or any other tool.

The tabular demo (``bastion demo --tabular``) writes a credit-style table
(:func:`~bastion.data.tabular.make_mixed_table`: integer, categorical, one-hot and immutable
columns, label ``default``) as ``train.csv`` and ``test.csv``, its data contract
``contract.yaml`` (inferred from the whole table, with the attack rules), an XGBoost model
``model.json``, and audits it with ``region`` as the sensitive column and an L∞ budget of
0.5 in the contract's cost units (half a standard deviation of the floats, five years of age,
one account): rerunning
``bastion audit`` with the same files and flags into the same folder reuses every check.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bastion.audit.config import AuditConfig, AuditThreat
from bastion.audit.executor import Executor
from bastion.audit.runner import AuditOutcome, run_audit

__all__ = ["DEMO_TRAIN", "run_demo", "run_tabular_demo"]

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


#: the tabular demo's sensitive column (attribute inference) and label column
TABULAR_SENSITIVE = "region"
TABULAR_LABEL = "default"
#: per-column costs of the tabular demo's contract, and its L∞ budget in cost units
TABULAR_COSTS = {"age": 0.1, "n_accounts": 0.5}
TABULAR_EPS = 0.5


def run_tabular_demo(out: str | Path, *, seed: int = 0, progress: bool = False,
                     executor: Executor | None = None) -> AuditOutcome:
    """Write the tabular demo's table, contract and XGBoost model into ``out`` and audit them
    (see the module docstring)."""
    import xgboost as xgb

    from bastion.data.contracts import infer_contract, save_contract
    from bastion.data.tabular import make_mixed_table

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    frame, y, rules = make_mixed_table(800, seed=seed)
    order = np.random.default_rng(seed).permutation(len(frame))
    table = frame.iloc[order].reset_index(drop=True)
    table[TABULAR_LABEL] = y[order]
    train, test = table.iloc[:600], table.iloc[600:]
    train.to_csv(out / "train.csv", index=False)
    test.to_csv(out / "test.csv", index=False)
    # the contract of all the reference data the lender holds (both splits)
    # costs make one unit of eps comparable across columns: a standard deviation of the
    # floats, ten years of age, two accounts
    save_contract(infer_contract(table, name="credit", immutable=rules["immutable"],
                                 one_hot=rules["one_hot"], categorical=rules["categorical"],
                                 costs=TABULAR_COSTS),
                  out / "contract.yaml")
    model = xgb.XGBClassifier(n_estimators=40, max_depth=4, random_state=seed, n_jobs=1)
    model.fit(train.drop(columns=[TABULAR_LABEL]), train[TABULAR_LABEL])
    model.get_booster().save_model(str(out / "model.json"))
    config = AuditConfig(
        model=str(out / "model.json"), train=out / "train.csv", test=out / "test.csv",
        out=out, seed=seed, contract=out / "contract.yaml", label=TABULAR_LABEL,
        threat=AuditThreat(eps=TABULAR_EPS),
        settings={"inversion": {"sensitive_column": TABULAR_SENSITIVE}},
    )
    return run_audit(config, command="demo", progress=progress, executor=executor)
