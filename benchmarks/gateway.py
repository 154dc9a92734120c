"""Gateway overhead: the full bastion pipeline against the bare model behind the same server.

Two uvicorn servers (one worker each, loopback, ``server_header`` off) serve the same digits
MLP (``small_mlp(64, 10)`` trained on 1,400 digits, 8×8 inputs):

- ``bare``: a FastAPI app with one route that parses the JSON body (the gateway's own
  parser) and predicts (the gateway's own batched ``inference_mode`` forward); nothing else.
- ``full``: ``bastion.serve.create_app`` with every stage on: API key (Bearer), authorisation,
  rate limit and per-key budget (set huge), body cap, the digits contract, output policy
  (top-3), monitoring (contract drift windows of 500, PRADA extraction detection per key and
  per owner) and a hash-chained audit entry per request (SQLite) in the default *durable*
  mode: the answer is sent after its entry is committed (group commit).
- ``full-batched`` (``--audit-modes durable batched``): the same with
  ``access.audit_mode: batched`` (entries written every 0.2 s off the request path).

``--mixed``: the full server also runs a *mixed* load in which every 10th request is
oversized or malformed (cycling: a 600 KB body over the cap, invalid JSON, a 5,000-digit
integer, a gzip ``Content-Encoding``, 300 samples over ``max_batch``, duplicate keys); the
table reports the good requests' latencies next to a clean load at the same concurrency.

The load generator runs in another process: ``httpx`` async with ``--concurrency``
connections (default), cycling through 397 held-out digits, one sample per request; or
``hey`` (``--loadgen hey``, one fixed body). Each setting runs ``--reps`` rounds, bare and full
interleaved, ``--requests`` requests each after a warm-up; the table shows the medians over
rounds of requests/s and client-side p50/p99 latency, and the errors (non-200 answers or
transport failures) summed over rounds. The pipeline overhead is full p50 - bare p50 at
concurrency 1 (queueing does not blur it there).

Usage (from the repository root):
    .venv/bin/python benchmarks/gateway.py --reps 5 --requests 1000 --concurrency 1 8 \
        --audit-modes durable batched --mixed
    .venv/bin/python benchmarks/gateway.py --reps 3 --requests 2000
    .venv/bin/python benchmarks/gateway.py --with-drift      # also runs benchmarks/drift_bench.py
Writes ``bench-out/gateway/results.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench-out" / "gateway"


# --- set-up -------------------------------------------------------------------------------------


def prepare(work: Path) -> dict[str, Any]:
    """Model, contract, access DB with one key, both policies; returns what the servers need."""
    import numpy as np
    import torch
    import yaml

    from bastion.access import AccessStore
    from bastion.data import load_digits
    from bastion.data.contracts import infer_contract, save_contract
    from bastion.models.zoo import accuracy, small_mlp, train_classifier

    torch.set_num_threads(1)
    data = load_digits()
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
    x, y = data.x[perm], data.y[perm]
    net = train_classifier(small_mlp(64, 10), x[:1400], y[:1400], epochs=15, lr=5e-3, seed=0)
    torch.save(net.state_dict(), work / "digits.pt")
    save_contract(infer_contract(x[:1400].numpy(), name="digits-8x8"), work / "contract.yaml")
    np.save(work / "queries.npy", x[1400:].numpy())
    store = AccessStore(f"sqlite:///{work / 'access.db'}", audit_decisions="none")
    store.add_identity("bench", kind="service", actor="admin")
    store.grant("bench", "consumer", "model:digits", actor="admin")
    token = store.create_key("bench", actor="admin").token
    store.add_identity("ops", kind="service", actor="admin")  # reads /metrics
    store.grant("ops", "auditor", "*", actor="admin")
    ops = store.create_key("ops", scopes=("read",), actor="admin").token
    store.close()
    model = {"name": "digits", "path": str(work / "digits.pt"), "input_shape": [1, 8, 8],
             "factory": "bastion.models.zoo:small_mlp",
             "factory_kwargs": {"n_features": 64, "num_classes": 10}}
    full = {"models": [{**model, "contract": str(work / "contract.yaml"),
                        "output": {"policy": "top-k", "k": 3}}],
            "limits": {"rate": 1e9, "burst": 1_000_000_000, "budget": 1_000_000_000},
            "monitoring": {"drift": {"enabled": True, "window": 500},
                           "extraction": {"enabled": True}},
            "access": {"url": f"sqlite:///{work / 'access.db'}", "audit": True}}
    bare = {"models": [{**model, "output": {"policy": "top-k", "k": 3}}],
            "access": {"url": f"sqlite:///{work / 'bare-access.db'}", "audit": False}}
    batched = {**full, "access": {**full["access"], "audit_mode": "batched"}}
    (work / "full.yaml").write_text(yaml.safe_dump(full))
    (work / "full-batched.yaml").write_text(yaml.safe_dump(batched))
    (work / "bare.yaml").write_text(yaml.safe_dump(bare))
    acc = accuracy(net, x[1400:], y[1400:])
    return {"token": token, "ops": ops, "accuracy": acc}


BENTO_PY = ROOT / ".bench-venv-serve" / "bin" / "python"
BENTO_SERVICE = '''
import bentoml
import numpy as np
import torch
from torch import nn

WEIGHTS = {weights!r}


@bentoml.service(workers=1)
class Digits:
    """The same MLP (Flatten, Linear(64, 64), ReLU, Linear(64, 10)), its weights loaded."""

    def __init__(self) -> None:
        torch.set_num_threads(1)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
        self.net.load_state_dict(torch.load(WEIGHTS, weights_only=True))
        self.net.eval()

    @bentoml.api
    def predict(self, inputs: list) -> dict:
        x = torch.from_numpy(np.asarray(inputs, dtype=np.float32))
        with torch.inference_mode():
            probs = torch.softmax(self.net(x), dim=1)
        top = probs.topk(3, dim=1)
        out = torch.zeros_like(probs).scatter(1, top.indices, top.values)
        return {{"predictions": probs.argmax(1).tolist(), "probabilities": out.tolist()}}
'''


def start_bentoml(work: Path) -> tuple[subprocess.Popen[bytes], int]:
    """BentoML serving the same weights from its own venv (``.bench-venv-serve``)."""
    (work / "bento_digits.py").write_text(BENTO_SERVICE.format(weights=str(work / "digits.pt")))
    port = free_port()
    env = {**os.environ, "BENTOML_HOME": str(work / "bentoml"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([str(BENTO_PY), "-m", "bentoml", "serve", "bento_digits:Digits",
                             "--port", str(port), "--host", "127.0.0.1",
                             "--working-dir", str(work)], cwd=work, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import httpx

    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc, port
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit("the BentoML server did not start")


def bare_app(policy_path: str) -> Any:
    """FastAPI app: parse JSON, predict. The same parser and forward as the gateway."""
    from bastion.serve.config import load_policy
    from bastion.serve.inputs import parse_inputs
    from bastion.serve.models import load_served_model
    from bastion.serve.problems import json_bytes

    policy = load_policy(policy_path)
    served = load_served_model(policy.models[0], policy.registry)
    app = FastAPI()

    @app.post("/v1/models/{name}/predict")
    async def predict(name: str, request: Request) -> Response:
        x = parse_inputs(await request.body())
        if x.ndim == 3:
            x = x[None]
        labels, probs = served.predict(x)
        body = {"model": name, "predictions": labels.tolist(),
                "probabilities": None if probs is None else probs.tolist()}
        return Response(json_bytes(body), media_type="application/json")

    return app


def bad_requests(work: Path) -> list[tuple[bytes, dict[str, str]]]:
    """The oversized or malformed requests of the mixed load (body, extra headers)."""
    import gzip

    import numpy as np

    q = np.load(work / "queries.npy")
    one = json.dumps(q[:1].tolist())
    return [
        (b'{"inputs": [' + b"0.5, " * 120_000 + b"0.5]}", {}),  # ~600 KB, over the cap: 413
        (b'{"inputs": [[[[0.1, 0.2', {}),  # invalid JSON: 422
        (b'{"inputs": [[' + b"9" * 5000 + b"]]}", {}),  # a 5,000-digit integer: 422
        (gzip.compress(f'{{"inputs": {one}}}'.encode()), {"Content-Encoding": "gzip"}),  # 415
        (json.dumps({"inputs": np.tile(q[:1], (300, 1, 1, 1)).tolist()}).encode(), {}),  # 422
        (f'{{"inputs": {one}, "inputs": {one}}}'.encode(), {}),  # duplicate keys: 422
    ]


def serve(kind: str, policy: str, port: int) -> None:
    """Run one server in this process (the parent starts it as a subprocess)."""
    import logging

    import torch
    import uvicorn

    torch.set_num_threads(1)
    logging.getLogger("bastion").setLevel(logging.ERROR)  # alerts of the synthetic load
    if kind == "bare":
        app = bare_app(policy)
    else:
        from bastion.serve import create_app, load_policy

        app = create_app(load_policy(policy))
    uvicorn.run(app, host="127.0.0.1", port=port, workers=1, log_level="warning",
                access_log=False, server_header=False)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its live descendants, all threads (/proc)."""
    stats: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            stats[int(entry.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    tree, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        for child, (ppid, _) in stats.items():
            if ppid == parent and child not in tree:
                tree.add(child)
                frontier.append(child)
    return sum(stats[p][1] for p in tree if p in stats) / os.sysconf("SC_CLK_TCK")


def stage_means(port: int, token: str) -> dict[str, float]:
    """Mean wall time per pipeline stage (µs) from the full server's /metrics."""
    import httpx

    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10,
                     headers={"Authorization": f"Bearer {token}"}).text
    sums = dict(re.findall(r'bastion_stage_seconds_sum\{stage="(\w+)"\} ([\d.e+-]+)', text))
    counts = dict(re.findall(r'bastion_stage_seconds_count\{stage="(\w+)"\} ([\d.e+-]+)', text))
    return {k: 1e6 * float(sums[k]) / float(counts[k]) for k in sums if float(counts[k]) > 0}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(kind: str, policy: Path, python: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen([python, __file__, "--serve", kind, "--policy", str(policy),
                             "--port", str(port)], cwd=ROOT)
    deadline = time.time() + 120
    import httpx

    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz" if kind.startswith("full") else
                         f"http://127.0.0.1:{port}/docs", timeout=1).status_code < 500:
                return proc, port
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    raise SystemExit(f"the {kind} server did not start")


# --- load ---------------------------------------------------------------------------------------


def bodies(work: Path) -> list[bytes]:
    import numpy as np

    q = np.load(work / "queries.npy")
    return [json.dumps({"inputs": q[i:i + 1].tolist()}).encode() for i in range(len(q))]


async def _httpx_load(url: str, token: str, payloads: list[bytes], n: int, concurrency: int,
                      bad: list[tuple[bytes, dict[str, str]]] | None = None,
                      bad_every: int = 10) -> dict[str, Any]:
    """Good requests' latencies; with ``bad``, every ``bad_every``-th request is one of them
    (answered 4xx: a 5xx or a transport failure counts as an error)."""
    import httpx

    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    lat: list[float] = []
    errors = 0
    counter = iter(range(n))

    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        async def worker() -> None:
            nonlocal errors
            for i in counter:
                if bad and i % bad_every == bad_every - 1:
                    body, extra = bad[(i // bad_every) % len(bad)]
                    try:
                        r = await client.post(url, content=body, headers={**headers, **extra})
                        errors += not 400 <= r.status_code < 500
                    except httpx.HTTPError:
                        errors += 1
                    continue
                t0 = time.perf_counter()
                try:
                    r = await client.post(url, content=payloads[i % len(payloads)],
                                          headers=headers)
                    ok = r.status_code == 200
                except httpx.HTTPError:
                    ok = False
                lat.append(time.perf_counter() - t0)
                errors += not ok

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    lat.sort()
    return {"rps": n / wall, "p50_ms": 1e3 * lat[len(lat) // 2],
            "p99_ms": 1e3 * lat[min(len(lat) - 1, int(0.99 * len(lat)))], "errors": errors}


def load_httpx(python: str, url: str, token: str, work: Path, n: int, c: int,
               mixed: bool = False) -> dict[str, Any]:
    """Run the httpx generator in its own process (not the servers')."""
    out = subprocess.run([python, __file__, "--load", url, "--token", token, "--work", str(work),
                          "--requests", str(n), "--concurrency", str(c),
                          *(["--mixed"] if mixed else [])], cwd=ROOT,
                         capture_output=True, text=True, check=True)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def load_hey(url: str, token: str, work: Path, n: int, c: int) -> dict[str, Any]:
    body = work / "hey-body.json"
    body.write_bytes(bodies(work)[0])
    out = subprocess.run(["hey", "-n", str(n), "-c", str(c), "-m", "POST", "-T",
                          "application/json", "-H", f"Authorization: Bearer {token}",
                          "-D", str(body), url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = float(re.search(r"50% in ([\d.]+) secs", out).group(1))  # type: ignore[union-attr]
    p99 = float(re.search(r"99% in ([\d.]+) secs", out).group(1))  # type: ignore[union-attr]
    ok = sum(int(m) for m in re.findall(r"\[200\]\s+(\d+) responses", out))
    return {"rps": rps, "p50_ms": 1e3 * p50, "p99_ms": 1e3 * p99, "errors": n - ok}


# --- main ---------------------------------------------------------------------------------------


def versions() -> dict[str, str]:
    import fastapi
    import torch
    import uvicorn

    v = {"python": platform.python_version(), "torch": torch.__version__,
         "fastapi": fastapi.__version__, "uvicorn": uvicorn.__version__,
         "cpus": str(os.cpu_count())}
    if shutil.which("hey"):
        v["hey"] = "apt hey 0.1.4"
    return v


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--loadgen", choices=["httpx", "hey"], default="httpx")
    ap.add_argument("--with-bentoml", action="store_true",
                    help="also serve the same weights with BentoML (.bench-venv-serve)")
    ap.add_argument("--with-drift", action="store_true",
                    help="also run benchmarks/drift_bench.py (the drift detectors' benchmark)")
    ap.add_argument("--audit-modes", nargs="+", choices=["durable", "batched"],
                    default=["durable"], help="full servers to run (audit_mode)")
    ap.add_argument("--mixed", action="store_true",
                    help="also a mixed load on the full server: 10%% oversized or malformed")
    ap.add_argument("--serve", choices=["bare", "full", "full-batched"], help=argparse.SUPPRESS)
    ap.add_argument("--load", help=argparse.SUPPRESS)
    ap.add_argument("--token", help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--policy", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve, args.policy, args.port)
        return
    if args.load:
        res = asyncio.run(_httpx_load(args.load, args.token, bodies(args.work), args.requests,
                                      args.concurrency[0],
                                      bad_requests(args.work) if args.mixed else None))
        print(json.dumps(res))
        return

    python = sys.executable
    OUT.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bastion-gw-bench-"))
    info = prepare(work)
    procs = {}
    servers = ["bare", *("full" if m == "durable" else "full-batched" for m in args.audit_modes)]
    try:
        for kind in servers:
            procs[kind] = start(kind, work / f"{kind}.yaml", python)
        urls = {k: f"http://127.0.0.1:{p}/v1/models/digits/predict" for k, (_, p) in procs.items()}
        kinds = list(servers)
        if args.mixed and "full" in procs:
            procs["full mixed"] = procs["full"]  # the same server, the mixed load
            urls["full mixed"] = urls["full"]
            kinds.append("full mixed")
        if args.with_bentoml:
            procs["bentoml"] = start_bentoml(work)
            urls["bentoml"] = f"http://127.0.0.1:{procs['bentoml'][1]}/predict"
            kinds.append("bentoml")

        def run(kind: str, n: int, c: int) -> dict[str, Any]:
            if args.loadgen == "hey":
                return load_hey(urls[kind], info["token"], work, n, c)
            return load_httpx(python, urls[kind], info["token"], work, n, c,
                              mixed=kind.endswith("mixed"))

        for kind in kinds:  # warm-up
            w = run(kind, args.warmup, 1)
            if w["errors"]:
                raise SystemExit(f"{kind} server answered errors during warm-up: {w}")
        rows: dict[str, dict[str, list[dict[str, Any]]]] = {}
        for c in args.concurrency:
            rows[str(c)] = {k: [] for k in kinds}
            for rep in range(args.reps):
                order = kinds if rep % 2 == 0 else kinds[::-1]
                for kind in order:
                    pid = procs[kind][0].pid
                    cpu0 = cpu_seconds(pid)
                    r = run(kind, args.requests, c)
                    r["cpu_ms_per_request"] = 1e3 * (cpu_seconds(pid) - cpu0) / args.requests
                    rows[str(c)][kind].append(r)
                    print(f"c={c} rep={rep} {kind}: {r['rps']:.0f} req/s p50 {r['p50_ms']:.3f} "
                          f"ms p99 {r['p99_ms']:.3f} ms errors {r['errors']} server CPU "
                          f"{r['cpu_ms_per_request']:.3f} ms/request", flush=True)
        full = "full" if "full" in procs else "full-batched"
        stages = stage_means(procs[full][1], info["ops"])
    finally:
        for proc, _ in {id(p): p for p in procs.values()}.values():
            proc.terminate()
            proc.wait(timeout=30)

    def med(runs: list[dict[str, Any]], key: str) -> float:
        return statistics.median(r[key] for r in runs)

    table = []
    for c, kinds in rows.items():
        for kind, runs in kinds.items():
            table.append({"concurrency": int(c), "server": kind, "rps": med(runs, "rps"),
                          "p50_ms": med(runs, "p50_ms"), "p99_ms": med(runs, "p99_ms"),
                          "errors": sum(r["errors"] for r in runs),
                          "cpu_ms": med(runs, "cpu_ms_per_request")})
    c1 = rows.get("1")
    overhead = None if c1 is None else med(c1[full], "p50_ms") - med(c1["bare"], "p50_ms")
    cpu_overhead = None if c1 is None else (med(c1[full], "cpu_ms_per_request")
                                            - med(c1["bare"], "cpu_ms_per_request"))
    overheads = {} if c1 is None else {
        kind: {"p50_ms": med(c1[kind], "p50_ms") - med(c1["bare"], "p50_ms"),
               "p99_ms": med(c1[kind], "p99_ms") - med(c1["bare"], "p99_ms")}
        for kind in c1 if kind.startswith("full") and not kind.endswith("mixed")}
    mixed_ratio = {c: med(k["full mixed"], "p99_ms") / med(k["full"], "p99_ms")
                   for c, k in rows.items() if "full mixed" in k}
    result = {"cpu_overhead_ms_c1": cpu_overhead, "stage_means_us": stages,
              "overhead_c1": overheads, "mixed_p99_ratio": mixed_ratio,
              "audit_modes": args.audit_modes,
              "versions": versions(), "loadgen": args.loadgen, "reps": args.reps,
              "requests": args.requests, "model_accuracy": info["accuracy"], "table": table,
              "overhead_p50_ms_c1": overhead, "raw": rows}
    (OUT / f"results-{args.loadgen}.json").write_text(json.dumps(result, indent=2))
    print("\n| concurrency | server | req/s | p50 ms | p99 ms | errors | server CPU ms/req |\n"
          "|---|---|---|---|---|---|---|")
    for r in table:
        print(f"| {r['concurrency']} | {r['server']} | {r['rps']:.0f} | {r['p50_ms']:.3f} | "
              f"{r['p99_ms']:.3f} | {r['errors']} | {r['cpu_ms']:.3f} |")
    if overhead is not None and cpu_overhead is not None:
        print(f"\npipeline overhead at p50 (concurrency 1): {overhead:.3f} ms; server CPU per "
              f"request: {cpu_overhead:.3f} ms")
    for kind, o in overheads.items():
        print(f"overhead over bare, concurrency 1, {kind}: p50 {o['p50_ms']:.3f} ms, "
              f"p99 {o['p99_ms']:.3f} ms")
    for c, ratio in mixed_ratio.items():
        print(f"p99 of good requests, mixed / clean load, concurrency {c}: {ratio:.2f}x")
    print("mean wall time per stage (µs, full server, all runs): " +
          ", ".join(f"{k} {v:.1f}" for k, v in stages.items()))
    shutil.rmtree(work, ignore_errors=True)
    if args.with_drift:
        subprocess.run([python, str(ROOT / "benchmarks" / "drift_bench.py")], cwd=ROOT,
                       check=True)


if __name__ == "__main__":
    main()
