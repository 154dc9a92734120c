"""``bastion serve``: run the prediction gateway (FastAPI on uvicorn) from a policy file."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import typer
import yaml

from bastion.cli._common import console, err_console, handle_errors, parse_shape
from bastion.errors import ConfigurationError

__all__ = ["register"]


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _build_policy(policy: Path | None, model: Path | None, name: str | None,
                  input_shape: str | None, factory: str | None, host: str | None,
                  port: int | None) -> Any:
    from bastion.serve.config import load_policy, parse_policy

    if policy is None and model is None:
        raise ConfigurationError("give --policy FILE (see examples/gateway-policy.yaml), or "
                                 "--model PATH for a quick start")
    if policy is not None:
        loaded = load_policy(policy)
        data = loaded.model_dump(mode="json")
    else:
        data = {}
    if model is not None:
        entry: dict[str, Any] = {"name": name or model.stem.replace(" ", "-"),
                                 "path": str(model.resolve())}
        shape = parse_shape(input_shape)
        if shape is not None:
            entry["input_shape"] = list(shape)
        if factory is not None:
            entry["factory"] = factory
        data["models"] = [entry]
    server = data.setdefault("server", {})
    if host is not None:
        server["host"] = host
    if port is not None:
        server["port"] = port
    return parse_policy(yaml.safe_dump(data))


def register(app: typer.Typer) -> None:
    """Add ``bastion serve`` to ``app``."""

    @app.command("serve")
    @handle_errors
    def serve(
        policy: Path | None = typer.Option(None, "--policy", "-p", help="The gateway policy "
                                           "(YAML; every key in examples/gateway-policy.yaml)."),
        check: bool = typer.Option(False, "--check", help="Validate the policy, load every "
                                   "model and contract, then exit (0 when all is well)."),
        host: str | None = typer.Option(None, "--host", help="Bind address (overrides "
                                        "server.host; default 127.0.0.1)."),
        port: int | None = typer.Option(None, "--port", min=1, max=65535,
                                        help="Port (overrides server.port)."),
        model: Path | None = typer.Option(None, "--model", help="Serve this local model file "
                                          "instead of the policy's models (quick start)."),
        name: str | None = typer.Option(None, "--name", help="Name of the --model (default: "
                                        "the file name without extension)."),
        input_shape: str | None = typer.Option(None, "--input-shape", help="Input shape of "
                                               "the --model, e.g. 1,28,28."),
        factory: str | None = typer.Option(None, "--factory", help="package.module:function "
                                           "building the --model's network (state dicts)."),
        log_level: str = typer.Option("info", "--log-level", help="uvicorn log level."),
    ) -> None:
        """Serve models through the secure prediction pipeline (keys, limits, contracts,
        screening, output policy, monitoring, audit)."""
        from bastion.serve import create_app

        pol = _build_policy(policy, model, name, input_shape, factory, host, port)
        if check:  # writes nothing: no database, no state
            from bastion.serve.pipeline import check_policy

            served_models, notes = check_policy(pol)
            for served in served_models.values():
                console.print(f"[green]ok[/] {served.name} {served.version} "
                              f"({served.source}) input {served.input_shape}, "
                              f"{served.num_classes} classes, output "
                              f"{served.policy.describe()}, contract "
                              f"{served.contract.name if served.contract else 'none'}")
            for note in notes:
                console.print(note)
            console.print(f"policy ok: would listen on {pol.server.host}:{pol.server.port}")
            return
        if not _is_loopback(pol.server.host):
            err_console.print(f"[yellow]warning:[/] listening on {pol.server.host}, not only "
                              "on loopback: put TLS and a firewall in front of the gateway")
        import uvicorn

        from bastion.serve.server import server_config

        uvicorn.Server(server_config(create_app(pol), pol, log_level=log_level)).run()
