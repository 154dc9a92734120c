"""Registry benchmark (issue 19): push and pull throughput of a 1 GB model, local and S3.

Each push reads the model once into a private copy, scans that copy (the scanner is replaced
by a no-op here: the scan has its own benchmark), hashes and stores it; each pull downloads,
hashes every byte and renames into place. The reference in the same run is the plain copy the
registry cannot beat: ``shutil.copyfile`` plus an fsync for the local folder (the registry
fsyncs what it stores), boto3's ``upload_file`` / ``download_file`` for S3 (both with no
hashing and no scanning copy). Reported: the median seconds over
``--reps`` repetitions, MB/s, and the ratio registry / reference, plus the process's peak RSS.

Run it in the package venv with the S3 server of the tests (moto) started::

    eval "$(scripts/start-s3.sh)"
    nice .venv/bin/python benchmarks/registry_bench.py --size-mb 1024 --reps 3 \\
        --out bench-out/registry.json

Without ``BASTION_TEST_S3_URL`` only the local rows are measured.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from bastion.artifacts.registry import Registry


def _median_seconds(fn: Callable[[int], None], reps: int) -> float:
    times = []
    for i in range(reps):
        t0 = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _make_model(path: Path, size_mb: int) -> None:
    block = os.urandom(1 << 20)
    with open(path, "wb") as fh:
        for i in range(size_mb):
            fh.write(block[:-8] + i.to_bytes(8, "little"))  # incompressible, not repeated


def _durable_copy(src: Path, dst: Path) -> None:
    """``shutil.copyfile`` and an fsync: the registry makes every stored byte durable too."""
    shutil.copyfile(src, dst)
    fd = os.open(dst, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _row(label: str, seconds: float, ref: float, size_mb: int) -> dict[str, Any]:
    return {"case": label, "median_s": round(seconds, 3), "mb_per_s": round(size_mb / seconds, 1),
            "reference_s": round(ref, 3), "ratio_to_reference": round(seconds / ref, 2)}


def bench_backend(name: str, storage_url: str, model: Path, work: Path, size_mb: int,
                  reps: int, reference_push: Callable[[int], None],
                  reference_pull: Callable[[int], None]) -> list[dict[str, Any]]:
    reg = Registry(f"sqlite:///{work / f'{name}.db'}", storage_url, actor="bench",
                   scanner=lambda p: ("clean", {}))
    try:
        reg.push("warmup", model)  # first write of the blob; later pushes measure the same work

        def push(i: int) -> None:
            reg.push("bench", model)

        def pull(i: int) -> None:
            out = work / f"pulled-{name}-{i}.bin"
            reg.pull("warmup", 1, out)
            out.unlink()

        push_s, pull_s = _median_seconds(push, reps), _median_seconds(pull, reps)
        ref_push, ref_pull = _median_seconds(reference_push, reps), \
            _median_seconds(reference_pull, reps)
    finally:
        reg.close()
    return [_row(f"{name} push", push_s, ref_push, size_mb),
            _row(f"{name} pull", pull_s, ref_pull, size_mb)]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-mb", type=int, default=1024)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--workdir", default=None, help="Where the model and blobs go (a disk).")
    ap.add_argument("--out", default="bench-out/registry.json")
    ap.add_argument("--no-s3", action="store_true", help="Measure the local folder only.")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bastion-registry-bench-", dir=args.workdir))
    rows: list[dict[str, Any]] = []
    try:
        model = work / "model.bin"
        _make_model(model, args.size_mb)
        blobs = work / "blobs"

        def copy_in(i: int) -> None:
            _durable_copy(model, work / "ref.bin")

        def copy_out(i: int) -> None:
            _durable_copy(work / "ref.bin", work / "ref-out.bin")
            (work / "ref-out.bin").unlink()

        rows += bench_backend("local", blobs.as_uri(), model, work, args.size_mb, args.reps,
                              copy_in, copy_out)
        (work / "ref.bin").unlink(missing_ok=True)
        shutil.rmtree(blobs, ignore_errors=True)
        s3 = None if args.no_s3 else os.environ.get("BASTION_TEST_S3_URL")
        if s3:
            import boto3

            for var, value in (("AWS_ACCESS_KEY_ID", "testing"),
                               ("AWS_SECRET_ACCESS_KEY", "testing"),
                               ("AWS_DEFAULT_REGION", "us-east-1")):
                os.environ.setdefault(var, value)
            parsed = urlparse(s3)
            endpoint = parse_qs(parsed.query)["endpoint_url"][0]
            prefix = f"{parsed.path.strip('/')}/bench-{uuid.uuid4().hex[:8]}"
            client = boto3.client("s3", endpoint_url=endpoint)

            def upload(i: int) -> None:
                client.upload_file(str(model), parsed.netloc, f"{prefix}/ref.bin")

            def download(i: int) -> None:
                client.download_file(parsed.netloc, f"{prefix}/ref.bin", str(work / "ref-out"))
                (work / "ref-out").unlink()

            url = f"s3://{parsed.netloc}/{prefix}?endpoint_url={endpoint}"
            try:
                rows += bench_backend("s3", url, model, work, args.size_mb, args.reps,
                                      upload, download)
            finally:
                keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(
                    Bucket=parsed.netloc, Prefix=prefix) for o in page.get("Contents", [])]
                for k in keys:
                    client.delete_object(Bucket=parsed.netloc, Key=k)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {"size_mb": args.size_mb, "reps": args.reps, "rows": rows,
              "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
              "python": sys.version.split()[0]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    for r in rows:
        print(f"{r['case']:<10} median {r['median_s']:7.2f} s  {r['mb_per_s']:7.1f} MB/s"
              f"  reference {r['reference_s']:6.2f} s  ratio {r['ratio_to_reference']:.2f}")
    print(f"peak RSS {result['peak_rss_mb']} MB")
    return result


if __name__ == "__main__":
    main()
