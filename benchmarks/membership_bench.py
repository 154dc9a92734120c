"""Membership inference and model inversion: bastion against adversarial-robustness-toolbox.

Run it in the benchmark venv (ART 1.20.1, bastion installed editable)::

    nice .bench-venv/bin/python benchmarks/membership_bench.py --out bench-out/membership.json

Victims (seeded, trained here, nothing downloaded):

- ``digits-mlp``: a one-hidden-layer MLP (256 units) overfit on 400 scikit-learn digits;
- ``mnist-mlp``: the same architecture on 1,000 images of the MNIST test idx files
  (``bastion.data.load_mnist``), skipped when they are absent.

For each victim the members and as many non-members are split in halves. ART's
``MembershipInferenceBlackBox`` trains its attack model on the first halves (it needs known
members, a stronger adversary than ours) and every attack is scored on the second halves,
the same samples for every library. Bastion's shadow and LiRA attacks use only disjoint
population data from the same distribution. Reported: AUC, TPR at 1% and 0.1% FPR (computed
here with one ROC routine for all), queries sent to the victim, and the best (and median)
seconds of ``--repeats`` interleaved runs, attack training included (the best run is the one
least disturbed by other load on a shared machine).

Like for like with bastion's shadow attack, ART's shadow-model pipeline
(``ShadowModels`` with as many shadow models, each on a random half of the same population,
trained with the victim's recipe -- same MLP, epochs, batch size, Adam and learning rate --
feeding ``MembershipInferenceBlackBox`` with the shadows' predictions) is timed the same way.
Bastion trains its reference models in one batched loop (``DefaultTrainer``); the rows marked
"one by one" train the same models sequentially (``batched=False``), for the speed-up.

Model inversion: ART's ``MIFace`` and bastion's ``MIFace`` (white-box, and score-based)
reconstruct the ten classes of an MLP trained on 900 digits, with the same iteration budget.
Reported: the victim's mean confidence in the reconstructions, the fraction recognised by an
independently trained MLP (on the other 897 digits), the fraction closer (MSE) to their own
class mean than to any other, mean SSIM to the class mean, gradient/score queries, seconds.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bastion.attacks.inference import (
    DefaultTrainer,
    InversionResult,
    LiRA,
    MIFace,
    ShadowModelAttack,
    ThresholdAttack,
    reconstruction_metrics,
    roc_curve,
)
from bastion.data import load_digits, load_mnist
from bastion.models import TorchClassifier
from bastion.models.zoo import small_mlp, train_classifier

HIDDEN = 256


BATCH = 64


def _trainer(shape: tuple[int, ...], epochs: int, lr: float, *, batched: bool = True) -> Any:
    """The victim's recipe: ``small_mlp(hidden=256)``, Adam, batches of 64, seeded init."""
    return DefaultTrainer(
        shape,
        10,
        arch="mlp",
        hidden=HIDDEN,
        epochs=epochs,
        lr=lr,
        batch_size=BATCH,
        batched=batched,
    )


def _metrics(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    roc = roc_curve(scores, labels)
    return {
        "auc": roc.auc,
        "tpr_at_1pct_fpr": roc.tpr_at(0.01),
        "tpr_at_0_1pct_fpr": roc.tpr_at(0.001),
    }


def _art_classifier(net: nn.Module, shape: tuple[int, ...]) -> Any:
    from art.estimators.classification import PyTorchClassifier

    return PyTorchClassifier(
        model=net,
        loss=nn.CrossEntropyLoss(),
        input_shape=shape,
        nb_classes=10,
        clip_values=(0.0, 1.0),
    )


def _art_shadow_template(shape: tuple[int, ...], epochs: int, lr: float) -> Any:
    """An untrained ART estimator whose ``fit`` uses the victim's epochs and batch size.

    ``ShadowModels`` clones it (``clone_for_refitting`` keeps the subclass) and calls
    ``fit(x, y)`` without arguments, so the recipe goes in as the defaults.
    """
    from art.estimators.classification import PyTorchClassifier

    class Recipe(PyTorchClassifier):  # type: ignore[misc]
        def fit(
            self, x: Any, y: Any, batch_size: int = BATCH, nb_epochs: int = epochs, **kwargs: Any
        ) -> None:
            super().fit(x, y, batch_size=batch_size, nb_epochs=nb_epochs, **kwargs)

    torch.manual_seed(0)
    net = small_mlp(int(np.prod(shape)), 10, hidden=HIDDEN)
    return Recipe(
        model=net,
        loss=nn.CrossEntropyLoss(),
        optimizer=torch.optim.Adam(net.parameters(), lr=lr),
        input_shape=shape,
        nb_classes=10,
        clip_values=(0.0, 1.0),
    )


class _Counter:
    """Counts the rows an ART estimator sends to the victim (predictions and losses)."""

    def __init__(self, est: Any) -> None:
        self.n = 0
        for method in ("predict", "compute_loss"):
            setattr(est, method, self._wrap(getattr(est, method)))

    def _wrap(self, original: Any) -> Any:
        def counted(x: np.ndarray, *args: Any, **kwargs: Any) -> Any:
            self.n += len(x)
            return original(x, *args, **kwargs)

        return counted


def membership_victim(
    name: str,
    x: torch.Tensor,
    y: torch.Tensor,
    m: int,
    epochs: int,
    lr: float,
    n_ref: int,
    repeats: int,
    rows_filter: tuple[str, ...] = (),
    art_shadow_kinds: tuple[str, ...] = ("nn", "rf"),
) -> dict[str, Any]:
    from art.attacks.inference.membership_inference import MembershipInferenceBlackBox

    shape = tuple(x.shape[1:])
    train = _trainer(shape, epochs, lr)
    one_by_one = _trainer(shape, epochs, lr, batched=False)
    xm, ym, xn, yn = x[:m], y[:m], x[m : 2 * m], y[m : 2 * m]
    xp, yp = x[2 * m :], y[2 * m :]
    net = train(xm, ym, 0)
    h = m // 2
    # evaluation halves, the same for everyone
    xe, ye = torch.cat([xm[h:], xn[h:]]), torch.cat([ym[h:], yn[h:]])
    truth = np.r_[np.ones(m - h, bool), np.zeros(m - h, bool)]
    rows: dict[str, Any] = {}
    with torch.no_grad():
        acc_train = float((net(xm).argmax(1) == ym).float().mean())
        acc_test = float((net(xn).argmax(1) == yn).float().mean())

    runners: dict[str, Any] = {}

    def art_runner(input_type: str, kind: str) -> Any:
        def run() -> tuple[np.ndarray, int]:
            torch.manual_seed(0)  # ART's attack models draw from the global generators
            np.random.seed(0)
            est = _art_classifier(net, shape)
            counter = _Counter(est)
            attack = MembershipInferenceBlackBox(est, input_type=input_type, attack_model_type=kind)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                attack.fit(xm[:h].numpy(), ym[:h].numpy(), xn[:h].numpy(), yn[:h].numpy())
                proba = attack.infer(xe.numpy(), ye.numpy(), probabilities=True)
            return np.asarray(proba).reshape(len(xe), -1)[:, -1], counter.n

        return run

    for input_type, kind in (
        ("prediction", "nn"),
        ("prediction", "rf"),
        ("loss", "nn"),
        ("loss", "rf"),
    ):
        runners[f"ART MembershipInferenceBlackBox ({input_type}, {kind})"] = art_runner(
            input_type, kind
        )

    half = n_ref // 2

    def art_shadow_runner(kind: str) -> Any:
        def run() -> tuple[np.ndarray, int]:
            from art.attacks.inference.membership_inference import ShadowModels

            torch.manual_seed(0)
            np.random.seed(0)
            est = _art_classifier(net, shape)
            counter = _Counter(est)
            shadows = ShadowModels(
                _art_shadow_template(shape, epochs, lr), num_shadow_models=half, random_state=0
            )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                (mx, my, mp), (nx, ny, npred) = shadows.generate_shadow_dataset(
                    xp.numpy(), yp.numpy(), member_ratio=0.5
                )
                attack = MembershipInferenceBlackBox(
                    est, input_type="prediction", attack_model_type=kind
                )
                attack.fit(mx, my, nx, ny, mp, npred)
                proba = attack.infer(xe.numpy(), ye.numpy(), probabilities=True)
            return np.asarray(proba).reshape(len(xe), -1)[:, -1], counter.n

        return run

    for kind in art_shadow_kinds:
        runners[f"ART ShadowModels ({half} shadows) + BlackBox (prediction, {kind})"] = (
            art_shadow_runner(kind)
        )

    def ours_runner(make: Any) -> Any:
        def run() -> tuple[np.ndarray, int]:
            attack = make()
            clf = TorchClassifier(net, input_shape=shape, num_classes=10, query_budget=len(xe))
            if attack.needs_fit:
                attack.fit(clf, xp, yp)
            res = attack.infer(clf, xe, ye, membership=torch.from_numpy(truth))
            return res.scores.numpy(), res.queries

        return run

    runners["bastion loss threshold"] = ours_runner(lambda: ThresholdAttack())
    runners[f"bastion shadow ({half} shadows)"] = ours_runner(
        lambda: ShadowModelAttack(n_shadows=half, train_fn=train)
    )
    runners[f"bastion LiRA offline ({half} refs)"] = ours_runner(
        lambda: LiRA(n_reference=half, online=False, train_fn=train)
    )
    runners[f"bastion LiRA offline ({n_ref} refs)"] = ours_runner(
        lambda: LiRA(n_reference=n_ref, online=False, train_fn=train)
    )
    runners[f"bastion LiRA online ({n_ref} refs)"] = ours_runner(
        lambda: LiRA(n_reference=n_ref, online=True, train_fn=train)
    )
    runners[f"bastion shadow ({half} shadows), one by one"] = ours_runner(
        lambda: ShadowModelAttack(n_shadows=half, train_fn=one_by_one)
    )
    runners[f"bastion LiRA online ({n_ref} refs), one by one"] = ours_runner(
        lambda: LiRA(n_reference=n_ref, online=True, train_fn=one_by_one)
    )
    if rows_filter:  # rerun only some rows
        runners = {k: v for k, v in runners.items() if any(f in k for f in rows_filter)}
    times: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(repeats):  # interleaved, so that load on a shared machine hits all alike
        for label, run in runners.items():
            start = time.perf_counter()
            scores, queries = run()
            times[label].append(time.perf_counter() - start)
            rows[label] = {**_metrics(scores, truth), "queries": queries}
    for label in runners:
        rows[label]["seconds"] = min(times[label])
        rows[label]["seconds_median"] = statistics.median(times[label])
        rows[label]["seconds_all"] = times[label]
    return {
        "victim": name,
        "members": m,
        "evaluated": len(xe),
        "population": len(xp),
        "train_accuracy": acc_train,
        "test_accuracy": acc_test,
        "attacks": rows,
    }


def inversion_bench(steps: int) -> dict[str, Any]:
    from art.attacks.inference.model_inversion import MIFace as ArtMIFace

    data = load_digits()
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
    x, y = data.x[perm], data.y[perm]
    torch.manual_seed(0)
    net = train_classifier(small_mlp(64, 10), x[:900], y[:900], epochs=20, lr=3e-3, seed=0)
    torch.manual_seed(1)
    rec = train_classifier(small_mlp(64, 10), x[900:], y[900:], epochs=20, lr=3e-3, seed=1)
    recognizer = TorchClassifier(rec, input_shape=(1, 8, 8), num_classes=10)
    classes = list(range(10))
    rows: dict[str, Any] = {}

    def record(label: str, res: InversionResult) -> None:
        m = reconstruction_metrics(res, x[:900], y[:900], recognizer=recognizer)
        rows[label] = {
            "mean_confidence": float(res.confidence.mean()),
            "recognised": m.recognition_rate,
            "closer_to_own_mean": m.closer_to_own_mean,
            "mean_ssim": float(m.ssim.mean()),
            "mean_mse": float(m.mse.mean()),
            "queries": res.queries,
            "seconds": res.seconds,
        }

    est = _art_classifier(net, (1, 8, 8))
    start = time.perf_counter()
    art = ArtMIFace(
        est,
        max_iter=steps,
        window_length=steps,
        threshold=1.0,
        learning_rate=0.1,
        batch_size=10,
        verbose=False,
    )
    x_art = art.infer(None, np.array(classes))
    seconds = time.perf_counter() - start
    clf = TorchClassifier(net, input_shape=(1, 8, 8), num_classes=10)
    with torch.no_grad():
        conf = torch.softmax(net(torch.from_numpy(x_art).float()), 1)[torch.arange(10), classes]
    record(
        f"ART MIFace ({steps} iterations)",
        InversionResult(
            attack="art-miface",
            params={},
            method="white-box",
            classes=torch.tensor(classes),
            x=torch.from_numpy(np.asarray(x_art)).float(),
            confidence=conf,
            queries=10 * steps,
            seconds=seconds,
        ),
    )
    record(f"bastion MIFace white-box ({steps} steps)", MIFace(steps=steps).infer(clf, classes))
    record(
        f"bastion MIFace white-box + TV ({steps} steps)",
        MIFace(steps=steps, tv=0.3).infer(clf, classes),
    )
    from bastion.models import BaseClassifier, Capability

    class ScoreOnly(BaseClassifier):
        def __init__(self) -> None:
            super().__init__(
                input_shape=(1, 8, 8), num_classes=10, capabilities=Capability.score_only()
            )

        def _logits(self, x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return torch.log_softmax(net(x), 1)

    record(
        f"bastion MIFace score-based ({steps // 2} steps x 16 queries)",
        MIFace(steps=steps // 2, samples=8, tv=0.3).infer(ScoreOnly(), classes),
    )
    return {"victim": "digits-mlp (900 training digits)", "attacks": rows}


def main(argv: list[str] | None = None) -> None:
    """Run the comparison; ``argv`` as on the command line (``None``: ``sys.argv[1:]``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench-out/membership.json"))
    parser.add_argument("--n-reference", type=int, default=8)
    parser.add_argument("--mnist-members", type=int, default=1000)
    parser.add_argument("--inversion-steps", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs (median reported)")
    parser.add_argument(
        "--rows", default="", help="comma-separated substrings: run only the rows they match"
    )
    parser.add_argument(
        "--art-shadow-kinds",
        default="nn,rf",
        help="attack models of the ART shadow-model rows (nn is slow: 100 epochs on the "
        "shadow records)",
    )
    parser.add_argument("--skip-inversion", action="store_true")
    args = parser.parse_args(argv)
    rows_filter = tuple(r.strip() for r in args.rows.split(",") if r.strip())
    kinds = tuple(k.strip() for k in args.art_shadow_kinds.split(",") if k.strip())
    torch.set_num_threads(args.threads)
    import art

    results: dict[str, Any] = {
        "command": " ".join(sys.argv),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "art": art.__version__,
        "membership": [],
    }
    data = load_digits()
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
    results["membership"].append(
        membership_victim(
            "digits-mlp",
            data.x[perm],
            data.y[perm],
            400,
            60,
            1e-2,
            args.n_reference,
            args.repeats,
            rows_filter,
            kinds,
        )
    )
    try:
        mnist = load_mnist()
    except Exception as exc:
        print(f"MNIST skipped: {exc}", file=sys.stderr)
    else:
        perm = torch.randperm(len(mnist), generator=torch.Generator().manual_seed(0))
        x, y = mnist.x[perm][:6000], mnist.y[perm][:6000]
        results["membership"].append(
            membership_victim(
                "mnist-mlp",
                x,
                y,
                args.mnist_members,
                40,
                3e-3,
                args.n_reference,
                args.repeats,
                rows_filter,
                kinds,
            )
        )
    if not args.skip_inversion:
        results["inversion"] = inversion_bench(args.inversion_steps)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    for v in results["membership"]:
        print(
            f"\n### {v['victim']}: {v['members']} members, train acc {v['train_accuracy']:.3f}, "
            f"test acc {v['test_accuracy']:.3f}; scored on {v['evaluated']}\n"
        )
        print("| attack | AUC | TPR@1%FPR | TPR@0.1%FPR | victim queries | seconds |")
        print("|---|---:|---:|---:|---:|---:|")
        for name, r in v["attacks"].items():
            print(
                f"| {name} | {r['auc']:.3f} | {r['tpr_at_1pct_fpr']:.3f} | "
                f"{r['tpr_at_0_1pct_fpr']:.3f} | {r['queries']} | {r['seconds']:.2f} |"
            )
    if "inversion" not in results:
        return
    inv = results["inversion"]
    print(f"\n### inversion: {inv['victim']}\n")
    print("| attack | confidence | recognised | closer to own mean | SSIM | queries | seconds |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, r in inv["attacks"].items():
        print(
            f"| {name} | {r['mean_confidence']:.3f} | {r['recognised']:.2f} | "
            f"{r['closer_to_own_mean']:.2f} | {r['mean_ssim']:.3f} | {r['queries']} | "
            f"{r['seconds']:.2f} |"
        )


if __name__ == "__main__":
    main()
