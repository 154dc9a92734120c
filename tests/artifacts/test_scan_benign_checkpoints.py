"""Files people really have scan clean, and loading them is shown to run no code from the file.

pandas DataFrame and Series pickles, Lightning-style checkpoints (``argparse.Namespace`` and
``pathlib`` paths among the hyper-parameters), quantized tensors and whole-model saves with
weight and spectral normalisation. Each file is then loaded for real in a subprocess under an
audit hook (PEP 578) that records every process, network, code-compilation and file event:
the load may only read the file itself and library code already installed.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch

from bastion.artifacts.scan import Verdict, scan_path

pd = pytest.importorskip("pandas")


def _write_files(d: Path) -> dict[str, str]:
    """name -> how to load it ("pickle" or "torch")."""
    out: dict[str, str] = {}
    df = pd.DataFrame({"a": [1, 2], "b": [0.5, 1.5], "c": ["x", "y"],
                       "d": pd.date_range("2020-01-01", periods=2),
                       "k": pd.Categorical(["u", "v"])})
    for proto in (2, 4, 5):
        df.to_pickle(d / f"frame{proto}.pkl", protocol=proto)
        out[f"frame{proto}.pkl"] = "pickle"
    pd.Series([1.0, 2.0], index=["a", "b"], name="s").to_pickle(d / "series.pkl")
    out["series.pkl"] = "pickle"
    hparams = argparse.Namespace(lr=0.1, data_dir=pathlib.Path("/data/train"),
                                 log=pathlib.PurePosixPath("logs/run1"), layers=[64, 64])
    torch.save({"epoch": 3, "global_step": 300, "state_dict": {"w": torch.ones(2)},
                "hyper_parameters": hparams, "hparams_name": "hparams"}, d / "lightning.ckpt")
    out["lightning.ckpt"] = "torch"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = {"t": torch.quantize_per_tensor(torch.rand(4), 0.1, 10, torch.quint8),
             "c": torch.quantize_per_channel(torch.rand(2, 3), torch.tensor([0.1, 0.2]),
                                             torch.tensor([0, 1]), 0, torch.qint8),
             "i": torch.quantize_per_tensor(torch.rand(3), 0.1, 0, torch.qint32)}
        torch.save(q, d / "quantized.pt")
        torch.save(q, d / "quantized_legacy.pt", _use_new_zipfile_serialization=False)
        model = torch.nn.Sequential(
            torch.nn.utils.weight_norm(torch.nn.Linear(3, 4)),
            torch.nn.utils.spectral_norm(torch.nn.Linear(4, 2)),
        )
        torch.save(model, d / "normed_model.pt")
    out.update({"quantized.pt": "torch", "quantized_legacy.pt": "torch",
                "normed_model.pt": "torch"})
    return out


_LOADER = textwrap.dedent("""
    import json, os, pickle, sys, warnings
    warnings.simplefilter("ignore")
    import numpy, pandas, torch, pyarrow, argparse, pathlib  # library code, imported first
    todo = json.loads(sys.argv[1])
    roots = tuple(os.path.realpath(p) for p in {sys.prefix, sys.base_prefix, sys.exec_prefix})
    events = []
    path = ""
    WATCH = ("os.system", "subprocess.Popen", "os.exec", "os.posix_spawn", "os.spawn",
             "os.fork", "socket.", "ctypes.", "os.remove", "os.rename", "os.unlink",
             "shutil.", "urllib.", "os.chmod", "os.mkdir", "os.putenv", "compile", "exec",
             "open", "builtins.input", "pty.spawn", "webbrowser.open")

    def library(filename):
        return os.path.realpath(str(filename)).startswith(roots)

    def hook(event, args):
        global events
        if not event.startswith(WATCH):
            return
        if event == "open":
            name, mode = args[0], args[1] or "r"
            if isinstance(name, (str, bytes, os.PathLike)) and (
                os.path.realpath(name) == os.path.realpath(path) or library(name)
            ) and not any(c in str(mode) for c in "wax+"):
                return
        if event == "exec" and library(getattr(args[0], "co_filename", "")):
            return  # a lazily imported library module
        if event == "compile" and library(args[1] if len(args) > 1 else ""):
            return
        source = args[0] if event == "compile" and args else None
        if isinstance(source, bytes) and source.decode("latin-1").isidentifier():
            return  # torch.load evaluates a bare name of its own (an enum member)
        events.append([event, repr(args)[:200]])

    sys.addaudithook(hook)
    report = {}
    for path, how in todo:
        events = []
        try:
            if how == "pickle":
                with open(path, "rb") as f:
                    pickle.load(f)
            else:
                torch.load(path, weights_only=False)
        except Exception as exc:
            events.append(["load failed", repr(exc)[:200]])
        report[os.path.basename(path)] = events
    print(json.dumps(report))
""")


def _load_under_audit(todo: list[tuple[Path, str]]) -> dict[str, list[list[str]]]:
    proc = subprocess.run(
        [sys.executable, "-c", _LOADER, json.dumps([[str(p), how] for p, how in todo])],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_real_checkpoints_scan_clean_and_load_without_running_code(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    files = _write_files(tmp_path)
    for name in files:
        result = scan_path(tmp_path / name)
        assert result.verdict is Verdict.CLEAN, (name, result.to_dict())
    # the proof can fail: a pickle that runs a command is seen by the same hook
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00trueq\x00\x85R.")
    assert scan_path(evil).verdict is Verdict.UNSAFE
    report = _load_under_audit([(tmp_path / n, how) for n, how in files.items()]
                               + [(evil, "pickle")])
    assert any(event == "os.system" for event, _ in report.pop("evil.pkl"))
    assert report == {name: [] for name in files}
