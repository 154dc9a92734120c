"""The generated corpus: every malicious file is unsafe, every benign file is clean."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from bastion.artifacts.scan import Severity, Verdict, scan_path

ROOT = Path(__file__).resolve().parents[2]


def _corpus_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("scan_corpus", ROOT / "benchmarks" /
                                                  "scan_corpus.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["scan_corpus"] = module
    spec.loader.exec_module(module)
    return module


corpus = _corpus_module()


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> list:
    return corpus.build_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.mark.parametrize("container", sorted(corpus.CONTAINERS))
def test_every_opcode_form_is_detected_in_container(samples: list, container: str) -> None:
    chosen = [s for s in samples if s.malicious and s.container == container]
    assert len(chosen) == len(corpus.PAYLOADS)
    missed = {}
    for s in chosen:
        result = scan_path(s.path)
        if result.verdict is not Verdict.UNSAFE or result.severity < Severity.HIGH:
            missed[s.payload] = (result.verdict.value, result.error)
    assert missed == {}


def test_format_level_malicious_files_are_unsafe(samples: list) -> None:
    chosen = [s for s in samples if s.malicious and s.container not in corpus.CONTAINERS]
    assert {s.container for s in chosen} >= {"keras", "keras_h5", "onnx", "safetensors"}
    verdicts = {s.path.name: scan_path(s.path).verdict for s in chosen}
    # what the scanner cannot inspect (an encrypted member, a stored member whose sizes
    # disagree, lz4 without the lz4 package) is an error, never clean or skipped
    unreadable = {"encrypted__zip_encrypted.zip", "size_lie__zip_sizes.zip",
                  "lz4__joblib_lz4.joblib"}
    assert all(v is (Verdict.ERROR if name in unreadable else Verdict.UNSAFE)
               or (name in unreadable and v is Verdict.UNSAFE)
               for name, v in verdicts.items()), verdicts


def test_benign_files_scan_clean(samples: list) -> None:
    benign = [s for s in samples if not s.malicious]
    assert len(benign) >= 20
    results = {s.path.name: scan_path(s.path) for s in benign}
    bad = {name: (r.verdict.value, r.error, [(f.operator, f.target) for _, f in r.all_findings()])
           for name, r in results.items() if r.verdict is not Verdict.CLEAN}
    assert bad == {}
    formats = {r.format for r in results.values()}
    assert {"pytorch", "pytorch-legacy", "torchscript", "joblib", "numpy", "npz",
            "safetensors", "onnx", "keras", "keras-h5"} <= formats


def test_payload_findings_name_the_callable(samples: list) -> None:
    by_name = {(s.payload, s.container): s for s in samples if s.malicious}
    expected = {
        "stack_global_memo": ("STACK_GLOBAL", "os", "getcwd"),
        "stack_global_string": ("STACK_GLOBAL", "os", "getcwd"),
        "inst": ("INST", "builtins", "eval"),
        "builtin_py2_name": ("GLOBAL", "builtins", "eval"),
        "dotted_name": ("STACK_GLOBAL", "torch", "serialization.os.getcwd"),
    }
    for payload, (op, module, name) in expected.items():
        for container in ("raw", "torch_zip_bad_crc", "nested"):
            found = scan_path(by_name[(payload, container)].path).all_findings()
            assert any((f.operator, f.module, f.name) == (op, module, name) for _, f in found), (
                payload, container, found)


def test_nested_payload_is_reported_from_inside(samples: list) -> None:
    s = next(s for s in samples if s.payload == "nested_codecs" and s.container == "raw")
    found = [f for _, f in scan_path(s.path).all_findings()]
    inner = [f for f in found if f.name == "getcwd"]
    assert inner and "pickle.loads" in inner[0].why


def test_mutated_files_never_crash_the_scanner(samples: list) -> None:
    import io
    import random

    from bastion.artifacts.scan._scanner import _Context, scan_stream
    from bastion.artifacts.scan._stream import Budget

    rng = random.Random(0)
    pool = [s for s in samples if s.container in (
        "raw", "torch_zip", "torch_legacy", "joblib", "npz", "tar_gz", "7z", "nested",
        "safetensors", "onnx", "keras", "keras_h5")] + [s for s in samples if not s.malicious]
    verdicts = set()
    for _ in range(300):
        sample = rng.choice(pool)
        data = bytearray(sample.path.read_bytes())
        for _ in range(rng.randint(1, 6)):
            if not data:
                break
            i = rng.randrange(len(data))
            if rng.random() < 0.7:
                data[i] = rng.randrange(256)
            else:
                del data[i : i + rng.randint(1, 64)]
        result = scan_stream(io.BytesIO(bytes(data)), sample.path.name,
                             _Context(5, Budget(1 << 26)), 0, (sample.path.name,))
        assert "scanner failure" not in (result.error or ""), (sample.path.name, result.error)
        verdicts.add(result.verdict)
    assert Verdict.ERROR in verdicts and Verdict.UNSAFE in verdicts
