""".env.example lists every setting (commented-out lines show the defaults), and nothing unknown."""

from __future__ import annotations

from core.settings import Settings, env_names

from .deploytools import ENV_EXAMPLE, compose_variables, env_file_entries

# read by other programs from the same .env, not by Improbable's settings nor by docker-compose.yml
PASSTHROUGH = {
    "COMPOSE_PROFILES", "COMPOSE_PROJECT_NAME",  # docker compose itself
    "FLOWER_BASIC_AUTH",  # Flower
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "FSSPEC_S3_ENDPOINT_URL",  # s3fs
}


def _setting_names() -> dict[str, str]:
    """variable → field, for every variable that sets a field (and its `_FILE` form)."""
    names = {}
    for field in Settings.model_fields:
        for var in env_names(field):
            names[var] = field
            names[f"{var}_FILE"] = field
    return names


def _default_line(field: str) -> str:
    info = Settings.model_fields[field]
    default = info.get_default(call_default_factory=False)
    shown = "" if default is None or info.default_factory is not None else default
    return f"# {info.description}\n# {env_names(field)[0]}={shown}"


def test_every_setting_is_listed():
    listed = {name for name, _value, _commented in env_file_entries()}
    missing = [field for field in Settings.model_fields if not listed & set(env_names(field))]
    assert not missing, "add to .env.example:\n" + "\n".join(_default_line(f) for f in missing)


def test_nothing_unknown_is_listed():
    settings = _setting_names()
    known = set(settings) | compose_variables() | PASSTHROUGH
    unknown = sorted({name for name, _value, _commented in env_file_entries()} - known)
    assert not unknown, f".env.example names variables nothing reads: {unknown}"


def test_env_example_loads_and_its_commented_defaults_are_the_real_ones(clean_env, tmp_path):
    copy = tmp_path / "copy.env"
    copy.write_text(ENV_EXAMPLE.read_text(encoding="utf-8"))
    assert Settings(_env_file=copy) == Settings(_env_file=None)  # as shipped: every setting at its default

    settings = _setting_names()
    uncommented = "\n".join(f"{name}={value}" for name, value, commented in env_file_entries()
                            if commented and name in settings and not name.endswith("_FILE"))
    copy.write_text(uncommented + "\n")
    loaded, defaults = Settings(_env_file=copy), Settings(_env_file=None)
    for field in Settings.model_fields:
        assert getattr(loaded, field) == getattr(defaults, field), f"{field}: .env.example shows another default"
