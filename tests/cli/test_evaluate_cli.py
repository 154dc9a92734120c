"""The ``bastion evaluate evasion`` command, invoked in-process: exit codes and outputs."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from bastion.cli.main import app

runner = CliRunner()


@pytest.fixture(scope="module")
def files(tmp_path_factory, digits_mlp) -> dict[str, Path]:
    net, x, y = digits_mlp
    d = tmp_path_factory.mktemp("cli")
    with (
        warnings.catch_warnings()
    ):  # TorchScript is deprecated upstream but still a format users ship
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.trace(net, x[:2])
    scripted.save(str(d / "model.pt"))
    np.savez(d / "data.npz", x=x[:60].numpy(), y=y[:60].numpy())
    np.savez(d / "wrong_shape.npz", x=x[:10].reshape(10, 64).numpy(), y=y[:10].numpy())
    np.savez(d / "tiny_images.npz", x=x[:10, :, :4, :4].numpy(), y=y[:10].numpy())
    np.savez(d / "out_of_bounds.npz", x=(x[:10] * 255).numpy(), y=y[:10].numpy())
    np.savez(d / "no_labels.npz", x=x[:10].numpy())
    np.savez(d / "float_labels.npz", x=x[:10].numpy(), y=y[:10].numpy() + 0.5)
    (d / "garbage.pt").write_bytes(b"this is not a model")
    return {p.stem: p for p in d.iterdir()}


def _run(*args: str):
    return runner.invoke(app, [*map(str, args)])


def test_evaluate_evasion_writes_json_and_html(files, tmp_path) -> None:
    out = tmp_path / "report"
    result = _run(
        "evaluate",
        "evasion",
        "--model",
        files["model"],
        "--data",
        files["data"],
        "--attack",
        "fgsm",
        "--attack",
        "pgd",
        "--norm",
        "linf",
        "--eps",
        "0.2",
        "--steps",
        "10",
        "--curve-points",
        "3",
        "--out",
        out,
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    assert "robust accuracy" in result.output
    doc = json.loads((out / "report.json").read_text())
    assert doc["schema"] == "bastion.audit/1" and doc["command"] == "evaluate evasion"
    [ev] = doc["checks"]
    assert ev["name"] == "evasion" and ev["settings"]["attacks"] == ["fgsm", "pgd"]
    clean = ev["metrics"]["clean_accuracy"]["value"]
    robust = ev["metrics"]["robust_accuracy"]
    for name in ("fgsm", "pgd"):
        assert ev["metrics"][f"robust_accuracy.{name}"]["value"] < clean
    assert robust["value"] <= min(ev["metrics"][f"robust_accuracy.{n}"]["value"]
                                  for n in ("fgsm", "pgd"))
    assert robust["ci_method"] == "clopper-pearson" and robust["n"] == 60
    [curve] = [p for p in ev["plots"] if p["kind"] == "line"]
    assert len(curve["series"][0]["x"]) == 3
    assert not list(out.glob(".*tmp"))  # no temporary files left behind
    again = _run("evaluate", "evasion", "--model", files["model"], "--data", files["data"],
                 "--attack", "fgsm", "--out", out, "--quiet", "--curve-points", "0")
    assert again.exit_code == 2 and "--force" in again.output  # never overwritten silently


def test_fail_under_gates_a_pipeline(files, tmp_path) -> None:
    result = _run(
        "evaluate",
        "evasion",
        "-m",
        files["model"],
        "-d",
        files["data"],
        "-a",
        "fgsm",
        "--eps",
        "0.3",
        "--curve-points",
        "0",
        "--fail-under",
        "0.99",
        "-o",
        tmp_path,
        "-q",
    )
    assert result.exit_code == 1
    assert "below --fail-under" in result.output


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--attack": "pgdd"}, "unknown attack 'pgdd'"),
        ({"--norm": "l3"}, "unknown norm"),
        ({"--eps": "-1"}, "eps must be"),
        ({"--data": "wrong_shape", "--input-shape": "1,8,8"}, "the model expects (n, 1, 8, 8)"),
        ({"--data": "tiny_images"}, "fails on a probe batch of shape (2, 1, 4, 4)"),
        ({"--data": "out_of_bounds"}, "outside the model's bounds"),
        ({"--data": "no_labels"}, "must hold arrays 'x' and 'y'"),
        ({"--data": "float_labels"}, "integer class labels"),
        ({"--data": "missing"}, "not found"),
        ({"--model": "garbage"}, "garbage.pt"),
        ({"--model": "missing"}, "missing"),
        ({"--bounds": "1"}, "--bounds needs 2"),
        ({"--attack": "cw", "--norm": "linf"}, "supports norm l2"),
    ],
)
def test_bad_input_gets_a_clear_error_and_exit_code_2(files, tmp_path, change, message) -> None:
    opts = {
        "--model": "model",
        "--data": "data",
        "--attack": "fgsm",
        "--eps": "0.1",
        "--norm": "linf",
    }
    for k, v in change.items():
        opts[k] = v
    args = ["evaluate", "evasion", "--out", str(tmp_path), "-q", "--curve-points", "0"]
    for k, v in opts.items():
        if k in {"--model", "--data"}:
            v = str(files.get(v, tmp_path / f"{v}.npz"))
        args += [k, v]
    result = _run(*args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "report.json").exists()


def test_version_and_help() -> None:
    assert _run("--version").exit_code == 0
    result = _run("evaluate", "evasion", "--help")
    assert result.exit_code == 0 and "--attack" in result.output


def _demo(out: Path) -> dict:
    result = _run("--threads", "1", "demo", "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    assert "Scorecard" in result.output
    for name in ("report.json", "report.html", "report.md", "model.pt", "train.npz"):
        assert (out / name).is_file()
    return json.loads((out / "report.json").read_text())


def test_demo_trains_and_audits_with_every_check(tmp_path) -> None:
    doc = _demo(tmp_path / "a")
    checks = {c["name"]: c for c in doc["checks"]}
    assert doc["command"] == "demo"
    assert set(checks) >= {"artifact", "data", "evasion", "extraction", "membership",
                           "inversion", "poisoning"}
    assert all(c["status"] in ("passed", "failed") for c in checks.values())  # all apply
    assert checks["artifact"]["status"] == "passed"
    ev = checks["evasion"]
    assert ev["metrics"]["clean_accuracy"]["value"] > 0.9
    assert ev["metrics"]["robust_accuracy"]["value"] < ev["metrics"]["clean_accuracy"]["value"]
    assert _readme_scorecard() == _scorecard_rows(doc)  # the README shows this scorecard


@pytest.mark.slow
def test_demo_repeats_exactly(tmp_path) -> None:
    first, second = _demo(tmp_path / "a"), _demo(tmp_path / "b")
    for a, b in zip(first["checks"], second["checks"], strict=True):
        assert a["status"] == b["status"] and a["metrics"] == b["metrics"]


def _readme_scorecard() -> list[list[str]]:
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = text[text.index("| threat | overall |"):].split("\n\n", 1)[0]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in block.splitlines()]
    return [rows[0][1:], *(r for r in rows[2:])]


def _scorecard_rows(doc: dict) -> list[list[str]]:
    card = doc["scorecard"]
    head = ["overall", *(p.replace("_", " ") for p in card["practices"])]
    out = [head]
    for row in card["threats"]:
        cells = [c["status"] for c in card["cells"] if c["threat"] == row["threat"]]
        out.append([row["title"], row["status"],
                    *("–" if c == "n/a" else c.replace("_", " ") for c in cells)])
    return out
