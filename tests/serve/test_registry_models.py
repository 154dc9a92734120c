"""Models served from the registry: the alias decides the version; pulls are checked."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bastion.artifacts.registry import GateConfig, Registry
from bastion.errors import ConfigurationError
from bastion.models.zoo import small_mlp
from bastion.serve.config import ModelSettings, RegistrySettings
from bastion.serve.models import load_served_model


@pytest.fixture
def registry(tmp_path, model_files):
    urls = RegistrySettings(metadata_url=f"sqlite:///{tmp_path / 'reg.db'}",
                            storage_url=(tmp_path / "blobs").as_uri(), actor="gateway")
    reg = Registry(urls.metadata_url, urls.storage_url, actor="ops")
    reg.push("digits", model_files["model"])  # v1: the trained model
    torch.manual_seed(1)
    torch.save(small_mlp(64, 10).state_dict(), tmp_path / "untrained.pt")
    reg.push("digits", tmp_path / "untrained.pt")  # v2: untrained, not promoted
    reg.promote("digits", 1, "champion", gates=GateConfig(require_signature=False))
    reg.grant("digits", "gateway", "use")
    yield urls
    reg.close()


SETTINGS = {"name": "digits", "input_shape": [1, 8, 8], "factory": "bastion.models.zoo:small_mlp",
            "factory_kwargs": {"n_features": 64, "num_classes": 10}}


def test_champion_alias_is_served(registry, digits_np, digits_mlp):
    served = load_served_model(ModelSettings(**SETTINGS), registry)
    assert served.version == "v1" and served.source == "registry:digits@champion"
    x = digits_np[0][1400:1450]
    labels, _ = served.predict(x)
    with torch.no_grad():
        expected = digits_mlp[0](torch.from_numpy(x)).argmax(1).numpy()
    np.testing.assert_array_equal(labels, expected)
    pinned = load_served_model(ModelSettings(**SETTINGS, version=2), registry)
    assert pinned.version == "v2"
    assert (pinned.predict(x)[0] != labels).any()


def test_unknown_alias_or_missing_permission_stops_the_start(registry):
    with pytest.raises(ConfigurationError, match="no version or alias 'staging'"):
        load_served_model(ModelSettings(**SETTINGS, alias="staging"), registry)
    stranger = registry.model_copy(update={"actor": "stranger"})
    with pytest.raises(ConfigurationError, match="cannot be served"):
        load_served_model(ModelSettings(**SETTINGS), stranger)
