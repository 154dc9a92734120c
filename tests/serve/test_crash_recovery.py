"""Crash recovery of the audit trail: SIGKILL the real ``bastion serve`` process under load
from 8 concurrent clients on 127.0.0.1, restart it, and every request that got an answer is
in the audit log exactly once, and the chain verifies."""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import yaml

from bastion.access import AccessStore, AuditLog
from bastion.cli.main import app as cli_app

_CLIENTS = 8
_PER_CLIENT = 300  # bound on requests per client
_DEADLINE = 60.0  # bound on the load phase, seconds


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(policy: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-c", "from bastion.cli.main import main; main()", "serve",
             "--policy", str(policy), "--log-level", "warning"],
            stdout=out, stderr=subprocess.STDOUT, env=env)


def _wait_ready(proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the gateway exited: {log.read_text()[-2000:]}"
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise AssertionError("the gateway did not start within 90 s")


def test_sigkill_under_load_loses_no_answered_request(model_files, digits_np, tmp_path):
    url = f"sqlite:///{tmp_path / 'access.db'}"
    store = AccessStore(url, audit_decisions="none")
    store.add_identity("svc", kind="service", actor="admin")
    store.grant("svc", "consumer", "model:digits", actor="admin")
    tokens = [store.create_key("svc", actor="admin").token for _ in range(_CLIENTS)]
    store.close()
    port = _free_port()
    policy = {"server": {"port": port},
              "models": [{"name": "digits", "path": str(model_files["model"]),
                          "input_shape": [1, 8, 8], "factory": "bastion.models.zoo:small_mlp",
                          "factory_kwargs": {"n_features": 64, "num_classes": 10},
                          "contract": str(model_files["contract"])}],
              "limits": {"rate": 1e6, "burst": 1_000_000, "budget": 10_000_000},
              "monitoring": {"drift": {"enabled": False}, "extraction": {"enabled": False}},
              "access": {"url": url}}  # audit_mode: durable, the default
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(policy))
    log = tmp_path / "server.log"
    x = digits_np[0]
    bad = np.full((1, 1, 8, 8), 7.0, np.float32)  # outside the contract: 422

    proc = _start(path, log)
    _wait_ready(proc, port, log)
    answered: list[tuple[str, int]] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(k: int) -> None:
        headers = {"Authorization": f"Bearer {tokens[k]}"}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            for i in range(_PER_CLIENT):
                if stop.is_set():
                    return
                sample = bad if i % 5 == 4 else x[(k * _PER_CLIENT + i) % len(x)][None]
                try:
                    r = http.post("/v1/models/digits/predict", headers=headers,
                                  json={"inputs": sample.tolist()})
                except httpx.HTTPError:
                    return  # the server is gone
                with lock:
                    answered.append((r.headers["x-request-id"], r.status_code))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(_CLIENTS)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + _DEADLINE
    while len(answered) < 300 and time.monotonic() < deadline \
            and any(t.is_alive() for t in threads):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)  # under load: requests are in flight
    proc.wait(timeout=30)
    stop.set()
    for t in threads:
        t.join(timeout=30)
    assert len(answered) >= 100, "too little load before the kill"
    statuses = collections.Counter(code for _, code in answered)
    assert statuses[200] and statuses[422], statuses

    # restart (in this process, to save a second interpreter start): the gateway opens the
    # database the kill left behind and its chain goes on
    from bastion.serve import create_app, load_policy

    restarted = create_app(load_policy(path))

    async def one() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=restarted),
                                     base_url="http://localhost") as http:
            return await http.post("/v1/models/digits/predict",
                                   json={"inputs": x[:1].tolist()},
                                   headers={"Authorization": f"Bearer {tokens[0]}"})

    try:
        r = asyncio.run(one())
    finally:
        restarted.state.gateway.close()
    assert r.status_code == 200
    answered.append((r.headers["x-request-id"], 200))

    audit = AuditLog(url)
    try:
        logged = collections.Counter(e.details.get("request_id") for e in audit.entries())
        missing = [rid for rid, _ in answered if logged[rid] == 0]
        twice = [rid for rid, _ in answered if logged[rid] > 1]
        assert not missing and not twice, (len(missing), len(twice), len(answered))
        status_of = {e.details.get("request_id"): e.details.get("status")
                     for e in audit.entries()}
        assert all(status_of[rid] == code for rid, code in answered)
        assert audit.verify().ok
    finally:
        audit.close()
    from typer.testing import CliRunner

    result = CliRunner().invoke(cli_app, ["audit-log", "verify", "--db", url])
    assert result.exit_code == 0, result.output
