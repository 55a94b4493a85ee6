"""Configuration: one settings object; `improbable config` masks secrets; a bad setting stops every command
with a message naming it (exit 2); secrets can come from files."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from core.settings import Settings, SettingsError, get_settings, load_settings, mask_url
from improbable.cli import app

runner = CliRunner()

SECRETS = {
    "DISCORD_TOKEN": "MTIzNDU2.discord-secret-token",
    "IMPROBABLE_DATABASE_URL": "postgresql+psycopg://improbable:pg-secret-pw@postgres:5432/improbable",
    "IMPROBABLE_BROKER_URL": "redis://:redis-secret-pw@redis:6379/0",
}


def flat(text: str) -> str:
    return " ".join(text.split())


def test_config_prints_the_effective_settings_with_secrets_masked(clean_env):
    for name, value in SECRETS.items():
        clean_env.setenv(name, value)
    clean_env.setenv("IMPROBABLE_METRICS_PORT", "9100")
    result = runner.invoke(app, ["config", "--json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    for secret in ("discord-secret-token", "pg-secret-pw", "redis-secret-pw"):
        assert secret not in result.output
    assert shown["IMPROBABLE_DISCORD_TOKEN"] == "****"
    assert shown["IMPROBABLE_DATABASE_URL"] == "postgresql+psycopg://improbable:****@postgres:5432/improbable"
    assert shown["IMPROBABLE_BROKER_URL"] == "redis://:****@redis:6379/0"
    assert shown["IMPROBABLE_RESULT_BACKEND"] == "(redis://:****@redis:6379/0)"  # effective: the broker
    assert shown["IMPROBABLE_METRICS_PORT"] == "9100"
    assert set(shown) >= {"IMPROBABLE_LOG_FORMAT", "IMPROBABLE_LOG_LEVEL", "IMPROBABLE_DATA_DIR"}
    assert len(shown) == len(Settings.model_fields)  # every setting

    table = runner.invoke(app, ["config"], terminal_width=200)
    assert table.exit_code == 0, table.output
    for secret in ("discord-secret-token", "pg-secret-pw", "redis-secret-pw"):
        assert secret not in table.output
    assert "IMPROBABLE_METRICS_PORT" in table.output and "****" in table.output


def test_mask_url_hides_passwords_only():
    assert mask_url("redis://redis:6379/0") == "redis://redis:6379/0"
    assert mask_url("s3://bucket/improbable") == "s3://bucket/improbable"
    assert mask_url("postgresql://u:p@ss@h/db") == "postgresql://u:****@h/db"
    assert mask_url("postgresql://u@h/db?password=x&sslmode=require") == "postgresql://u@h/db?password=****&sslmode=require"


@pytest.mark.parametrize("command", [["config"], ["config", "--check"], ["health", "database"]])
def test_an_invalid_setting_stops_every_command_naming_it(clean_env, command):
    clean_env.setenv("IMPROBABLE_METRICS_PORT", "ninety")
    clean_env.setenv("IMPROBABLE_LOG_FORMAT", "xml")
    result = runner.invoke(app, command)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and not isinstance(result.exception, (ValueError, TypeError))
    lines = [flat(line) for line in result.stderr.splitlines() if line.strip()]
    assert any(line.startswith("error: invalid setting IMPROBABLE_METRICS_PORT='ninety'") for line in lines), lines
    assert any("IMPROBABLE_LOG_FORMAT='xml'" in line and "'text' or 'json'" in line for line in lines), lines


def test_settings_errors_name_the_variable_that_was_used(clean_env):
    clean_env.setenv("DISCORD_SYNC_GUILD", "not-a-number")
    clean_env.setenv("IMPROBABLE_BROKER_URL", "user:hunter2@redis:6379")  # no scheme, and a password
    with pytest.raises(SettingsError) as info:
        get_settings()
    message = str(info.value)
    assert "DISCORD_SYNC_GUILD='not-a-number'" in message
    assert "IMPROBABLE_BROKER_URL='user:****@redis:6379': expected a URL like scheme://" in message
    assert "hunter2" not in message
    assert len(message.splitlines()) == 2
    assert isinstance(info.value, ValueError)


def test_config_check_and_typo_warnings(clean_env):
    clean_env.setenv("IMPROBABLE_BROKR_URL", "redis://redis:6379/0")
    result = runner.invoke(app, ["config", "--check"])
    assert result.exit_code == 0, result.output
    assert "settings are valid" in result.stdout
    assert "IMPROBABLE_BROKR_URL is not a setting (did you mean IMPROBABLE_BROKER_URL?)" in flat(result.stderr)


def test_empty_values_mean_the_default_and_levels_are_case_insensitive(clean_env):
    clean_env.setenv("IMPROBABLE_VISIBILITY_TIMEOUT", "")
    clean_env.setenv("IMPROBABLE_DISCORD_SYNC_GUILD", "")
    clean_env.setenv("IMPROBABLE_LOG_LEVEL", "debug")
    clean_env.setenv("IMPROBABLE_LOG_FORMAT", "JSON")
    settings = get_settings()
    assert settings.visibility_timeout == Settings.model_fields["visibility_timeout"].default
    assert settings.discord_sync_guild is None
    assert (settings.log_level, settings.log_format) == ("DEBUG", "json")


@pytest.mark.parametrize("variable", ["IMPROBABLE_DISCORD_TOKEN_FILE", "DISCORD_TOKEN_FILE"])
def test_secrets_from_a_file_named_by_a_FILE_variable(clean_env, tmp_path, variable):
    token = tmp_path / "discord_token"
    token.write_text("file-token-123\n")
    url = tmp_path / "db_url"
    url.write_text("postgresql+psycopg://improbable:from-file@postgres/improbable")
    clean_env.setenv(variable, str(token))
    clean_env.setenv("IMPROBABLE_DATABASE_URL_FILE", str(url))
    settings = get_settings()
    assert settings.discord_token == "file-token-123"
    assert settings.database_url.endswith(":from-file@postgres/improbable")
    clean_env.setenv("DISCORD_TOKEN", "from-env")  # a value in the environment wins over a file
    get_settings.cache_clear()
    assert get_settings().discord_token == "from-env"


def test_an_unreadable_secret_file_is_named(clean_env, tmp_path):
    clean_env.setenv("IMPROBABLE_DISCORD_TOKEN_FILE", str(tmp_path / "missing"))
    with pytest.raises(SettingsError, match=r"IMPROBABLE_DISCORD_TOKEN_FILE=.*missing: cannot read it"):
        get_settings()
    result = runner.invoke(app, ["config"])
    assert result.exit_code == 2
    assert "IMPROBABLE_DISCORD_TOKEN_FILE" in flat(result.stderr)


def test_secrets_from_a_secrets_directory(clean_env, tmp_path):
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "discord_token").write_text("dir-token\n")
    (secrets / "improbable_broker_url").write_text("redis://:dir-pw@redis:6379/0")
    settings = load_settings(_secrets_dir=secrets)
    assert settings.discord_token == "dir-token"
    assert settings.broker_url == "redis://:dir-pw@redis:6379/0"


def test_dotenv_file_in_the_working_directory(clean_env, tmp_path):
    (tmp_path / ".env").write_text("IMPROBABLE_LOG_FORMAT=json\nDISCORD_TOKEN=dotenv-token\nCOMPOSE_PROFILES=gpu\n")
    settings = get_settings()
    assert settings.log_format == "json" and settings.discord_token == "dotenv-token"
