"""Confidentiality benchmark (issue 4): extraction, membership inference and model inversion,
bastion against adversarial-robustness-toolbox, in one run.

Run it in the benchmark venv (``bash benchmarks/setup_venv.sh`` creates it)::

    nice .bench-venv/bin/python benchmarks/confidentiality.py

It runs, one after the other and with the options given after ``--extraction`` /
``--membership`` (each a single quoted string of that script's own flags):

1. :mod:`extraction_bench` — CopycatCNN and KnockoffNets (random, and bastion's adaptive
   policy) on the MNIST CNN and digits victims: fidelity at 1k/5k/10k queries and seconds;
   ART's FunctionallyEquivalentExtraction on the digits MLP; bastion's equation solving;
2. :mod:`membership_bench` — MembershipInferenceBlackBox against bastion's threshold, shadow
   and LiRA attacks (AUC, TPR at 1% and 0.1% FPR, seconds), and MIFace against bastion's MIFace.

The two scripts still run on their own; this entry point only calls their ``main`` functions
and writes both JSON files (``bench-out/extraction.json`` and ``bench-out/membership.json`` by
default) plus a small index, ``bench-out/confidentiality.json``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import extraction_bench
import membership_bench

EXTRACTION_DEFAULT = (
    "--budgets 1000,5000,10000 --epochs 10 --seeds 0,1,2,3,4,5,6,7 --large-seeds 0,1,2 "
    "--threads 1 --recipe own --adaptive --fee-seconds 120 --out bench-out/extraction.json"
)
MEMBERSHIP_DEFAULT = "--repeats 3 --out bench-out/membership.json"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--extraction", default=EXTRACTION_DEFAULT, help="extraction_bench flags")
    ap.add_argument("--membership", default=MEMBERSHIP_DEFAULT, help="membership_bench flags")
    ap.add_argument("--skip-extraction", action="store_true")
    ap.add_argument("--skip-membership", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("bench-out/confidentiality.json"))
    args = ap.parse_args(argv)
    index: dict[str, object] = {"argv": sys.argv[1:]}
    if not args.skip_extraction:
        start = time.perf_counter()
        extraction_bench.main(shlex.split(args.extraction))
        index["extraction"] = {
            "flags": args.extraction,
            "seconds": time.perf_counter() - start,
        }
    if not args.skip_membership:
        start = time.perf_counter()
        membership_bench.main(shlex.split(args.membership))
        index["membership"] = {
            "flags": args.membership,
            "seconds": time.perf_counter() - start,
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(index, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
