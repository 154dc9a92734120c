"""``bastion serve`` in-process: --check validates a policy and loads its models."""

from __future__ import annotations

from pathlib import Path

import typer
import yaml
from typer.testing import CliRunner

from bastion.cli.serve import register
from bastion.serve import load_policy

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "gateway-policy.yaml"


def _app() -> typer.Typer:
    app = typer.Typer()
    register(app)

    @app.callback()
    def _root() -> None:  # keep 'serve' a sub-command
        pass

    return app


def test_check_loads_every_model(model_files, tmp_path):
    policy = {"models": [{"name": "digits", "path": str(model_files["model"]),
                          "input_shape": [1, 8, 8], "factory": "bastion.models.zoo:small_mlp",
                          "factory_kwargs": {"n_features": 64, "num_classes": 10},
                          "contract": str(model_files["contract"]),
                          "output": {"policy": "rounding", "decimals": 1}}],
              "access": {"url": f"sqlite:///{tmp_path / 'a.db'}"}}
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(policy))
    result = CliRunner().invoke(_app(), ["serve", "--policy", str(tmp_path / "policy.yaml"),
                                         "--check", "--port", "9100"])
    assert result.exit_code == 0, result.output
    assert "ok digits local" in result.output
    assert "rounding(decimals=1)" in result.output and "digits-8x8" in result.output
    assert "127.0.0.1:9100" in result.output


def test_check_names_the_bad_key(tmp_path):
    (tmp_path / "bad.yaml").write_text("models: [{name: m, path: x.pt}]\nlimits: {burst: 0}\n")
    result = CliRunner().invoke(_app(), ["serve", "--policy", str(tmp_path / "bad.yaml"),
                                         "--check"])
    assert result.exit_code == 2
    assert "limits.burst" in result.output


def test_check_refuses_a_missing_model_file(tmp_path):
    (tmp_path / "p.yaml").write_text("models: [{name: m, path: nowhere.pt, input_shape: [4]}]\n"
                                     f"access: {{url: 'sqlite:///{tmp_path / 'a.db'}'}}\n")
    result = CliRunner().invoke(_app(), ["serve", "--policy", str(tmp_path / "p.yaml"),
                                         "--check"])
    assert result.exit_code == 2
    assert "nowhere.pt" in result.output


def test_the_example_policy_is_valid_and_secure_by_default():
    policy = load_policy(EXAMPLE)
    assert policy.server.host == "127.0.0.1" and policy.server.cors_origins == ()
    assert policy.models[0].alias == "champion" and policy.models[0].path is None
    assert policy.access.audit and policy.state_url == "memory://"


def test_quick_start_with_a_local_model_file(tmp_path, digits_np):
    import skops.io as sio
    from sklearn.linear_model import LogisticRegression

    x, y = digits_np
    est = LogisticRegression(max_iter=200).fit(x[:300].reshape(300, -1), y[:300])
    sio.dump(est, tmp_path / "logreg.skops")
    db = f"sqlite:///{tmp_path / 'a.db'}"
    (tmp_path / "p.yaml").write_text(f"models: [{{name: other, path: x.pt}}]\n"
                                     f"access: {{url: '{db}'}}\n")
    result = CliRunner().invoke(_app(), ["serve", "--policy", str(tmp_path / "p.yaml"),
                                         "--model", str(tmp_path / "logreg.skops"),
                                         "--input-shape", "64", "--check"])
    assert result.exit_code == 0, result.output
    assert "ok logreg local" in result.output and "10 classes" in result.output


def test_the_example_policy_documents_every_key():
    from pydantic import BaseModel

    from bastion.serve.config import GatewayPolicy, WebhookSettings

    text = EXAMPLE.read_text()
    missing = []

    def walk(model: type[BaseModel]) -> None:
        for name, info in model.model_fields.items():
            if f"{name}:" not in text:
                missing.append(f"{model.__name__}.{name}")
            for t in (info.annotation, *getattr(info.annotation, "__args__", ())):
                if isinstance(t, type) and issubclass(t, BaseModel):
                    walk(t)
            if info.annotation is not None and "ModelSettings" in str(info.annotation):
                from bastion.serve.config import ModelSettings

                walk(ModelSettings)

    walk(GatewayPolicy)
    walk(WebhookSettings)
    assert missing == []


def test_check_writes_nothing_even_with_the_default_database(model_files, tmp_path,
                                                             monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BASTION_ACCESS_DB", raising=False)
    policy = {"models": [{"name": "digits", "path": str(model_files["model"]),
                          "input_shape": [1, 8, 8], "factory": "bastion.models.zoo:small_mlp",
                          "factory_kwargs": {"n_features": 64, "num_classes": 10}}]}
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(policy))
    before = sorted(p.name for p in tmp_path.iterdir())
    result = CliRunner().invoke(_app(), ["serve", "--policy", "policy.yaml", "--check"])
    assert result.exit_code == 0, result.output
    assert "does not exist yet" in result.output
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**policy, "models": [{**policy["models"][0],
                                                          "path": "nowhere.pt"}]}))
    result = CliRunner().invoke(_app(), ["serve", "--policy", str(bad), "--check"])
    assert result.exit_code == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*before, "bad.yaml"])
