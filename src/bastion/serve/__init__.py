"""The prediction gateway (``bastion serve``): one secure pipeline in front of every model.

See :mod:`bastion.serve.pipeline` for the stages, :mod:`bastion.serve.config` for the policy
file, :mod:`bastion.serve.app` for the endpoints and :mod:`bastion.serve.metrics` for the
Prometheus metrics.
"""

from __future__ import annotations

from bastion.serve.app import create_app
from bastion.serve.config import GatewayPolicy, load_policy, parse_policy
from bastion.serve.models import ServedModel, load_served_model
from bastion.serve.pipeline import Gateway
from bastion.serve.screening import ContractScreener, Screener

__all__ = [
    "ContractScreener",
    "Gateway",
    "GatewayPolicy",
    "Screener",
    "ServedModel",
    "create_app",
    "load_policy",
    "load_served_model",
    "parse_policy",
]
