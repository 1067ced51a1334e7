"""Settings: defaults, TOML file, environment precedence, secret masking."""

from __future__ import annotations

import pytest
from hotswap.components.core.settings import HotswapSettings, mask_uri_credentials
from pydantic import ValidationError


def test_toml_file_then_environment_override(tmp_path, monkeypatch):
    config = tmp_path / "hotswap.toml"
    config.write_text('model_name = "from-file"\nseed = 3\n[training]\nepochs = 2\n')
    monkeypatch.setenv("HOTSWAP_CONFIG", str(config))
    monkeypatch.setenv("HOTSWAP_SEED", "7")
    monkeypatch.setenv("HOTSWAP_TRAINING__BATCH_SIZE", "16")
    settings = HotswapSettings(home=tmp_path)
    assert settings.model_name == "from-file"
    assert settings.seed == 7
    assert settings.training.epochs == 2 and settings.training.batch_size == 16
    assert (
        settings.resolved_tracking_uri.startswith("sqlite:///")
        and "mlflow.db" in settings.resolved_tracking_uri
    )


def test_invalid_values_name_the_field(monkeypatch):
    monkeypatch.setenv("HOTSWAP_TRAINING__EPOCHS", "0")
    with pytest.raises(ValidationError, match="training.epochs"):
        HotswapSettings()


def test_unsafe_model_name_is_rejected():
    with pytest.raises(ValidationError, match="may only use letters"):
        HotswapSettings(model_name="../etc")


def test_credentials_in_uris_are_masked_for_logging():
    settings = HotswapSettings(tracking_uri="postgresql://mlflow:s3cret@db.internal:5432/mlflow")
    dumped = settings.public_dict()
    assert "s3cret" not in str(dumped)
    assert dumped["tracking_uri"] == "postgresql://***@db.internal:5432/mlflow"
    assert mask_uri_credentials("s3://bucket/prefix") == "s3://bucket/prefix"
