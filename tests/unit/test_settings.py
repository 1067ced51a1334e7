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


# --- where values come from (components/core/settings_sources.py) ---------------------------------


def test_json_values_case_insensitive_names_and_priority_of_sources(tmp_path, monkeypatch):
    # given: a file section, lower-case and JSON variables, and a keyword value for the same section
    config = tmp_path / "hotswap.toml"
    config.write_text('[training]\nepochs = 2\nlr = 0.5\n[thresholds]\nmetrics = ["top5"]\n')
    monkeypatch.setenv("HOTSWAP_CONFIG", str(config))
    monkeypatch.setenv("hotswap_training__lr", "0.25")
    monkeypatch.setenv("HOTSWAP_THRESHOLDS__METRICS", '["map"]')
    monkeypatch.setenv("HOTSWAP_TRAINING__NEW_MODEL", '{"arch": "team.nets:build", "kwargs": {"width": 8}}')
    # when
    settings = HotswapSettings(home=tmp_path, training={"batch_size": 8})
    # then: keyword > environment > file > default, key by key within a section
    assert settings.training.epochs == 2  # file
    assert settings.training.lr == 0.25  # environment over file
    assert settings.training.batch_size == 8  # keyword
    assert settings.thresholds.metrics == ["map"]
    assert settings.training.new_model == {"arch": "team.nets:build", "kwargs": {"width": 8}}


def test_variables_that_name_no_field_are_not_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("HOTSWAP_TEST_KILL_AT", "training:epoch-1")  # a test hook shares the prefix
    monkeypatch.delenv("HOTSWAP_CONFIG", raising=False)
    assert HotswapSettings(home=tmp_path).seed == 0


def test_a_misspelt_section_key_and_bad_json_are_one_line_each(tmp_path, monkeypatch):
    from hotswap.components.core.errors import classify
    from hotswap.components.core.settings import SettingsEnvError

    monkeypatch.setenv("HOTSWAP_TRAINING__EPOCHZ", "3")
    with pytest.raises(ValidationError, match="training.epochz"):
        HotswapSettings(home=tmp_path)
    monkeypatch.delenv("HOTSWAP_TRAINING__EPOCHZ")
    monkeypatch.setenv("HOTSWAP_THRESHOLDS__METRICS", "[map")
    with pytest.raises(SettingsEnvError) as caught:
        HotswapSettings(home=tmp_path)
    failure = classify(caught.value)
    assert failure.kind == "input"
    assert failure.message.startswith("HOTSWAP_THRESHOLDS__METRICS: not valid JSON")


def test_a_dump_validated_as_it_is_ignores_this_process_environment(tmp_path, monkeypatch):
    """A Dask worker rebuilds the driver's settings; its own HOTSWAP_* must not change them."""
    dumped = HotswapSettings(home=tmp_path, seed=3).model_dump()
    monkeypatch.setenv("HOTSWAP_SEED", "9")
    assert HotswapSettings.model_validate(dumped).seed == 3
    assert HotswapSettings(home=tmp_path).seed == 9
