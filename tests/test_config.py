"""Config precedence: defaults < user file < project file < --config < environment < flags."""

from __future__ import annotations

import pytest

from llmctl.config import SPECS, dump_toml, read_toml_file, resolve_config, set_config_value
from llmctl.errors import ConfigError
from llmctl.paths import user_config_path


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_defaults_and_sources():
    resolved = resolve_config(environ={})
    assert resolved.config.model == "smollm2"
    assert resolved.config.sampling.temperature == 0.7
    assert set(resolved.sources.values()) == {"default"}


def test_full_precedence_chain(tmp_path):
    user = write(user_config_path(), 'model = "user"\n[sampling]\ntemperature = 0.1\ntop_k = 1\nmax_tokens = 11\nseed = 1\n')
    project = write(tmp_path / "work" / "llmctl.toml", '[sampling]\ntemperature = 0.2\ntop_k = 2\nmax_tokens = 22\n')
    extra = write(tmp_path / "extra.toml", "[sampling]\ntemperature = 0.3\ntop_k = 3\n")
    env = {"LLMCTL_SAMPLING_TEMPERATURE": "0.4"}
    resolved = resolve_config({"sampling.temperature": 0.5}, extra, environ=env)
    c, src = resolved.config, resolved.sources
    assert (c.model, src["model"]) == ("user", str(user))
    assert (c.sampling.seed, src["sampling.seed"]) == (1, str(user))
    assert (c.sampling.max_tokens, src["sampling.max_tokens"]) == (22, str(project))
    assert (c.sampling.top_k, src["sampling.top_k"]) == (3, str(extra))
    assert (c.sampling.temperature, src["sampling.temperature"]) == (0.5, "flag")
    without_flag = resolve_config({}, extra, environ=env)
    assert (without_flag.config.sampling.temperature, without_flag.sources["sampling.temperature"]) == (0.4, "env LLMCTL_SAMPLING_TEMPERATURE")


def test_openai_env_names_and_llmctl_prefix_wins():
    env = {"OPENAI_API_KEY": "sk-generic", "OPENAI_BASE_URL": "http://a/v1", "LLMCTL_OPENAI_BASE_URL": "http://b/v1"}
    resolved = resolve_config(environ=env)
    assert resolved.config.openai.api_key == "sk-generic"
    assert resolved.config.openai.base_url == "http://b/v1"
    assert resolved.sources["openai.base_url"] == "env LLMCTL_OPENAI_BASE_URL"


def test_secrets_are_redacted_in_rows():
    rows = resolve_config(environ={"OPENAI_API_KEY": "sk-secret-123"}).rows()
    assert ("openai.api_key", "***", "env OPENAI_API_KEY") in rows
    assert "sk-secret-123" not in repr(rows)


@pytest.mark.parametrize("text, fragment", [
    ("[sampling]\ntemperature = 'hot'\n", "'sampling.temperature' must be a number from 0 to 2, got 'hot'"),
    ("[sampling]\ntemperature = 5\n", "'sampling.temperature' must be a number from 0 to 2, got 5"),
    ("[sampling]\ntop_k = 1.5\n", "'sampling.top_k' must be a whole number >= 0"),
    ("[hf]\ndevice = 'tpu'\n", "'hf.device' must be one of auto, cpu, cuda, mps"),
    ("[sampling]\ntemprature = 1\n", "unknown config key 'sampling.temprature'"),
    ("model = \n", "not valid TOML"),
])
def test_bad_file_names_file_key_and_allowed(tmp_path, text, fragment):
    path = write(tmp_path / "bad.toml", text)
    with pytest.raises(ConfigError) as info:
        resolve_config(config_file=path, environ={})
    assert str(path) in str(info.value)
    assert fragment in str(info.value)


def test_unknown_key_suggests_the_right_one(tmp_path):
    path = write(tmp_path / "bad.toml", "[sampling]\ntemprature = 1\n")
    with pytest.raises(ConfigError, match="did you mean 'sampling.temperature'"):
        read_toml_file(path)


def test_bad_environment_value_names_the_variable():
    with pytest.raises(ConfigError, match="environment variable LLMCTL_SAMPLING_TOP_P: 'sampling.top_p' must be"):
        resolve_config(environ={"LLMCTL_SAMPLING_TOP_P": "2"})


def test_missing_explicit_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        resolve_config(config_file=tmp_path / "nope.toml", environ={})


def test_set_and_unset_roundtrip(tmp_path):
    path = tmp_path / "c.toml"
    assert set_config_value(path, "sampling.top_k", "40") == 40
    assert set_config_value(path, "hf.offline", "yes") is True
    assert set_config_value(path, "sampling.seed", "0") == 0
    assert read_toml_file(path) == {"sampling.top_k": 40, "hf.offline": True, "sampling.seed": 0}
    set_config_value(path, "sampling.top_k", None)
    assert read_toml_file(path) == {"hf.offline": True, "sampling.seed": 0}


def test_set_refuses_secrets_and_bad_values(tmp_path):
    path = tmp_path / "c.toml"
    with pytest.raises(ConfigError, match="never writes secrets"):
        set_config_value(path, "openai.api_key", "sk-123")
    with pytest.raises(ConfigError, match="'sampling.max_tokens' must be a whole number >= 1"):
        set_config_value(path, "sampling.max_tokens", "0")
    assert not path.exists()


def test_dump_toml_roundtrips_every_type(tmp_path):
    flat = {"model": 'a "quoted" name', "system": "line1\nline2", "sampling.temperature": 0.25,
            "sampling.top_k": 7, "hf.offline": False}
    path = write(tmp_path / "x.toml", dump_toml(flat))
    assert read_toml_file(path) == flat


def test_every_setting_has_help_and_valid_default():
    for key, spec in SPECS.items():
        assert spec.help, key
        if spec.default is not None:
            assert isinstance(spec.default, spec.type), key
