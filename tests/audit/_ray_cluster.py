"""A throwaway Ray cluster on this machine: a head and extra nodes on loopback, each a
``ray start`` with its own free ports, stopped by killing the processes it started (never
``ray stop``, which would stop every Ray cluster of this user on a shared machine).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil

RAY = str(Path(sys.executable).with_name("ray"))


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class LocalCluster:
    """``head_cpus`` on the head, then ``add_node``. ``env`` reaches every worker (for
    ``PYTHONPATH``). Token authentication is off: the cluster is on loopback and short-lived.
    """

    def __init__(self, *, head_cpus: int, env: dict[str, str] | None = None) -> None:
        self.temp = Path(tempfile.mkdtemp(prefix="bray-", dir="/tmp"))
        self.env = {**os.environ, **(env or {}), "RAY_AUTH_MODE": "disabled",
                    "RAY_USAGE_STATS_ENABLED": "0",
                    # a loaded machine imports the node's agents slowly
                    "RAY_agent_register_timeout_ms": "180000"}
        errors = []
        for _ in range(3):  # a loaded machine may miss Ray's own start-up deadlines
            self.gcs_port = _free_ports(1)[0]
            self.address = f"127.0.0.1:{self.gcs_port}"
            error = self._start(
                ["--head", f"--port={self.gcs_port}", "--include-dashboard=false",
                 f"--temp-dir={self.temp}",
                 "--system-config=" + json.dumps({"agent_register_timeout_ms": 180000})],
                head_cpus, None)
            if error is None:
                return
            errors.append(error)
            self.stop(keep_temp=True)
        shutil.rmtree(self.temp, ignore_errors=True)
        raise RuntimeError(f"ray start --head failed 3 times; last: {errors[-1]}")

    def add_node(self, cpus: int, resources: dict[str, float] | None = None) -> None:
        error = self._start([f"--address={self.address}"], cpus, resources)
        if error is not None:
            raise RuntimeError(f"ray start --address failed: {error}")

    def _start(self, args: list[str], cpus: int, resources: dict[str, float] | None
               ) -> str | None:
        p = _free_ports(6)
        cmd = [RAY, "start", *args, f"--num-cpus={cpus}", "--node-ip-address=127.0.0.1",
               "--disable-usage-stats", f"--ray-client-server-port={p[0]}",
               f"--metrics-export-port={p[1]}", f"--dashboard-agent-listen-port={p[2]}",
               f"--dashboard-agent-grpc-port={p[3]}", f"--runtime-env-agent-port={p[4]}",
               f"--node-manager-port={p[5]}"]
        if resources:
            cmd.append("--resources=" + json.dumps(resources))
        run = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=300,
                             check=False)
        return None if run.returncode == 0 else run.stderr[-1500:]

    def processes(self) -> list[psutil.Process]:
        """The processes this cluster started (their command lines name its temp folder or
        its GCS port; the nodes' agents and workers die with their raylet)."""
        mine = []
        for proc in psutil.process_iter(["pid", "cmdline"]):
            line = " ".join(proc.info["cmdline"] or [])
            if str(self.temp) in line or f":{self.gcs_port}" in line:
                mine.append(proc)
        return mine

    def stop(self, *, keep_temp: bool = False) -> None:
        procs = self.processes()
        for proc in procs:
            try:
                proc.send_signal(signal.SIGTERM)
            except psutil.NoSuchProcess:
                continue
        _, alive = psutil.wait_procs(procs, timeout=10)
        for proc in alive:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                continue
        if not keep_temp:
            shutil.rmtree(self.temp, ignore_errors=True)
