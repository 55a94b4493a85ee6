"""docker-compose.yml: valid against the Compose Specification's JSON schema (vendored, see
compose-spec.SOURCE.md) and shaped as an operator needs it. No Docker engine runs here."""

from __future__ import annotations

import json

import jsonschema
import pytest

from .deploytools import SCHEMA_FILE, compose_variables, env_file_entries, env_file_values, load_compose

IMAGE_SERVICES = {"migrate", "bot", "worker", "trainer", "worker-cpu", "trainer-cpu", "beat", "flower"}
GPU_SERVICES = {"worker", "trainer"}
LONG_RUNNING = IMAGE_SERVICES - {"migrate"}


@pytest.fixture(scope="module")
def validator():
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


@pytest.fixture(scope="module")
def compose():
    return load_compose(env_file_values())  # as after `cp .env.example .env`


@pytest.mark.parametrize("env", ["from .env.example", "no .env"])
def test_compose_file_validates_against_the_compose_spec(validator, env):
    doc = load_compose(env_file_values() if env == "from .env.example" else {})
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


def test_the_schema_rejects_a_broken_compose_file(validator, compose):
    """The vendored schema really checks services (guards against validating against an empty schema)."""
    broken = json.loads(json.dumps(compose))
    broken["services"]["bot"]["restart_policy"] = "always"  # not a service attribute
    broken["services"]["worker"]["healthcheck"]["retries"] = {"three": 3}
    messages = [e.message for e in validator.iter_errors(broken)]
    assert any("restart_policy" in m for m in messages)
    assert len(messages) >= 2


def test_services(compose):
    assert set(compose["services"]) == {"redis", "postgres"} | IMAGE_SERVICES
    image = compose["services"]["bot"]["image"]
    for name in IMAGE_SERVICES:  # one image for every service
        service = compose["services"][name]
        assert service["image"] == image
        assert service["build"]["context"] == "."
        assert service["build"]["args"]["TORCH_VARIANT"] in ("cuda", "cpu")


def test_redis_persists_to_a_volume(compose):
    redis = compose["services"]["redis"]
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command
    assert any(v.endswith(":/data") for v in redis["volumes"])
    assert any(v.endswith(":/var/lib/postgresql/data") for v in compose["services"]["postgres"]["volumes"])


def test_healthchecks_and_restart_policies(compose):
    services = compose["services"]
    for name in LONG_RUNNING | {"redis", "postgres"}:
        assert services[name]["restart"] == "unless-stopped", name
        check = services[name].get("healthcheck")
        assert check and check["test"][0] in ("CMD", "CMD-SHELL"), f"{name} has no healthcheck"
    assert services["migrate"]["restart"] == "no"
    assert "healthcheck" not in services["migrate"]


def test_migration_runs_once_before_the_app(compose):
    services = compose["services"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("bot", "worker", "trainer", "worker-cpu", "trainer-cpu", "beat"):
        deps = services[name]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully", name
        assert deps["redis"]["condition"] == "service_healthy", name
    for service in services.values():
        for dep in service.get("depends_on", {}):
            assert dep in services


def test_gpu_workers_reserve_one_nvidia_gpu_each(compose):
    services = compose["services"]
    for name in GPU_SERVICES:
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert len(devices) == 1
        assert devices[0]["driver"] == "nvidia" and devices[0]["capabilities"] == ["gpu"]
        assert len(devices[0]["device_ids"]) == 1  # one process per GPU
        assert services[name]["profiles"] == ["gpu"]
        assert services[f"{name}-cpu"]["profiles"] == ["cpu"]
        assert "deploy" not in services[f"{name}-cpu"]
    assert "generate" in services["worker"]["command"] and "threads" in services["worker"]["command"]
    assert "train" in services["trainer"]["command"] and "solo" in services["trainer"]["command"]


def test_shared_storage_volume_and_settings(compose):
    services = compose["services"]
    for name in IMAGE_SERVICES:
        service = services[name]
        assert "data:/data" in service["volumes"]
        env = service["environment"]
        assert env["IMPROBABLE_DATABASE_URL"].startswith("postgresql+psycopg://improbable:change-me@postgres:5432/")
        assert env["IMPROBABLE_BROKER_URL"] == "redis://redis:6379/0"
        assert env["IMPROBABLE_DATA_DIR"] == "/data"
        assert env["IMPROBABLE_METRICS_PORT"] == "9100"
        assert service["env_file"] == [{"path": ".env", "required": False}]
    assert set(compose["volumes"]) >= {"data", "redis-data", "postgres-data"}


def test_operator_overrides_reach_the_services():
    doc = load_compose({"IMPROBABLE_BROKER_URL": "redis://shared-redis:6379/0", "GENERATE_GPU": "3",
                        "IMPROBABLE_STORAGE_URL": "s3://bucket/improbable", "TORCH_VARIANT": "cpu"})
    worker = doc["services"]["worker"]
    assert worker["environment"]["IMPROBABLE_BROKER_URL"] == "redis://shared-redis:6379/0"
    assert worker["environment"]["IMPROBABLE_STORAGE_URL"] == "s3://bucket/improbable"
    assert worker["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"] == ["3"]
    assert worker["build"]["args"]["TORCH_VARIANT"] == "cpu"


def test_every_compose_variable_is_documented_in_env_example():
    documented = {name for name, _value, _commented in env_file_entries()}
    missing = sorted(compose_variables() - documented)
    assert not missing, f"add these to .env.example: {missing}"
