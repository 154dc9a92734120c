"""Units of the pipeline: the contract fast path, body parsing, the policy file."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from bastion.data.contracts import infer_contract, validate
from bastion.errors import ConfigurationError, InputError
from bastion.serve.config import load_policy, parse_policy
from bastion.serve.inputs import parse_inputs
from bastion.serve.pipeline import tensor_conforms


@pytest.mark.parametrize("allow_nan", [False, True])
@pytest.mark.parametrize("allow_duplicates", [True, False])
def test_fast_contract_check_agrees_with_full_validation(allow_nan, allow_duplicates):
    rng = np.random.default_rng(0)
    contract = dataclasses.replace(infer_contract(rng.random((300, 1, 4, 4)).astype(np.float32),
                                                  name="t"),
                                   allow_nan=allow_nan, allow_duplicates=allow_duplicates)
    agree = accepted = 0
    for trial in range(300):
        n = int(rng.integers(1, 6))
        x = rng.random((n, 1, 4, 4)).astype(np.float32)
        kind = trial % 6
        if kind == 1:  # just inside or just outside the widened range
            x[0, 0, 1, 1] = np.float32(contract.max + contract.range_tolerance *
                                       (contract.max - contract.min) + rng.normal(0, 1e-3))
        elif kind == 2:
            x[-1, 0, 0, 0] = np.nan
        elif kind == 3:
            x = x[:, :, :3, :]
        elif kind == 4 and n > 1:
            x[1] = x[0]
        elif kind == 5:
            x = x.astype(np.float64)
        fast = tensor_conforms(x, contract)
        full = validate(x, contract, distribution=False).ok
        agree += fast == full
        accepted += full
        assert not (fast and not full), (trial, kind)  # never accepts what validation refuses
    assert agree == 300
    assert 50 < accepted < 250


def test_parse_inputs_refuses_non_numbers_and_accepts_one_sample():
    assert parse_inputs(b'{"inputs": [1, 2.5]}').shape == (2,)
    with pytest.raises(InputError, match="bool"):
        parse_inputs(b'{"inputs": [true, false]}')
    with pytest.raises(InputError, match="Infinity"):
        parse_inputs(b'{"inputs": [Infinity]}')
    with pytest.raises(InputError, match="too large"):
        parse_inputs(b'{"inputs": [1e300]}')
    with pytest.raises(InputError, match="nested too deeply"):
        parse_inputs(b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    with pytest.raises(InputError, match="exactly one"):
        parse_inputs(b'{"inputs": [1], "inputs_b64": "AAAAAA==", "shape": [1]}')


def test_policy_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigurationError, match=r"models\.0\.output\.policy"):
        parse_policy("models: [{name: m, path: x, output: {policy: top-3}}]")
    with pytest.raises(ConfigurationError, match=r"limits\.rat: unknown key"):
        parse_policy("models: [{name: m, path: x}]\nlimits: {rat: 3}")
    with pytest.raises(ConfigurationError, match=r"server\.cors_origins.*'\*' is refused"):
        parse_policy("models: [{name: m, path: x}]\nserver: {cors_origins: ['*']}")
    with pytest.raises(ConfigurationError, match="state_url"):
        parse_policy("models: [{name: m, path: x}]\nstate_url: postgres://x")
    with pytest.raises(ConfigurationError, match="needs a reference file"):
        parse_policy("models: [{name: m, path: x}]\nmonitoring: {drift: {method: ks}}")
    with pytest.raises(ConfigurationError, match="unique"):
        parse_policy("models: [{name: m, path: x}, {name: m, path: y}]")
    (tmp_path / "p.yaml").write_text("models: [{name: m, path: model.pt, contract: c.yaml}]\n")
    policy = load_policy(tmp_path / "p.yaml")
    assert policy.models[0].path == str(tmp_path / "model.pt")
    assert policy.models[0].contract == str(tmp_path / "c.yaml")
    assert policy.server.host == "127.0.0.1" and policy.server.cors_origins == ()
    with pytest.raises(ValueError, match="frozen"):
        policy.models[0].__setattr__("path", "other")
