"""docker-compose.yml: valid against the Compose Specification's JSON schema (vendored, see
compose-spec.SOURCE.md) and shaped as an operator needs it. No Docker engine runs here."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import jsonschema
import pytest

from .deploytools import (
    DOCKERFILE,
    ENV_EXAMPLE,
    ROOT,
    SCHEMA_FILE,
    compose_variables,
    env_file_entries,
    env_file_values,
    load_compose,
    raw_compose,
)

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


def _init_env(path):
    return subprocess.run(["bash", str(ROOT / "scripts" / "init-env.sh"), str(path)], capture_output=True,
                          text=True, timeout=30)


@pytest.fixture(scope="module")
def initialised_env(tmp_path_factory):
    """The .env that `scripts/init-env.sh` writes: .env.example with random passwords."""
    path = tmp_path_factory.mktemp("env") / ".env"
    done = _init_env(path)
    assert done.returncode == 0, done.stderr
    return env_file_values(path)


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


def test_shared_storage_volume_and_settings(initialised_env):
    compose = load_compose(initialised_env)
    services = compose["services"]
    password = initialised_env["POSTGRES_PASSWORD"]
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"] == password
    for name in IMAGE_SERVICES:
        service = services[name]
        assert "data:/data" in service["volumes"]
        env = service["environment"]
        assert env["IMPROBABLE_DATABASE_URL"] == "postgresql+psycopg://postgres:5432"  # libpq: PG* below
        assert (env["PGUSER"], env["PGPASSWORD"], env["PGDATABASE"]) == ("improbable", password, "improbable")
        assert env["IMPROBABLE_BROKER_URL"] == "redis://redis:6379/0"
        assert env["IMPROBABLE_DATA_DIR"] == "/data"
        assert env["IMPROBABLE_METRICS_PORT"] == "9100"
        assert service["env_file"] == [".env"]
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


PLACEHOLDERS = ("change-me", "changeme", "admin:change-me")


def test_env_example_ships_no_password_and_init_env_writes_random_ones(initialised_env, tmp_path):
    shipped = env_file_values()
    assert shipped["POSTGRES_PASSWORD"] == "" and shipped["FLOWER_BASIC_AUTH"] == ""
    text = ENV_EXAMPLE.read_text(encoding="utf-8").lower()
    for placeholder in PLACEHOLDERS:
        assert f"={placeholder}" not in text
    assert re.fullmatch(r"[0-9a-f]{48}", initialised_env["POSTGRES_PASSWORD"])
    assert re.fullmatch(r"admin:[0-9a-f]{32}", initialised_env["FLOWER_BASIC_AUTH"])
    # everything else as shipped
    assert {k: v for k, v in initialised_env.items() if k not in ("POSTGRES_PASSWORD", "FLOWER_BASIC_AUTH")} == {
        k: v for k, v in shipped.items() if k not in ("POSTGRES_PASSWORD", "FLOWER_BASIC_AUTH")}
    second = tmp_path / ".env"
    assert _init_env(second).returncode == 0
    assert env_file_values(second)["POSTGRES_PASSWORD"] != initialised_env["POSTGRES_PASSWORD"]
    assert second.stat().st_mode & 0o077 == 0, "the .env holds secrets: owner-only"
    refused = _init_env(second)  # never overwrites an existing .env
    assert refused.returncode != 0 and "exists" in refused.stderr


def test_env_example_as_shipped_is_the_cpu_deployment(compose):
    shipped = env_file_values()
    assert shipped["COMPOSE_PROFILES"] == "cpu" and shipped["TORCH_VARIANT"] == "cpu"
    for name in IMAGE_SERVICES:
        assert compose["services"][name]["build"]["args"]["TORCH_VARIANT"] == "cpu"
    # with no .env at all, too: a CPU image unless TORCH_VARIANT says otherwise
    assert load_compose({})["services"]["bot"]["build"]["args"]["TORCH_VARIANT"] == "cpu"


def test_flower_gets_its_login_from_env(initialised_env):
    flower = load_compose(initialised_env)["services"]["flower"]
    assert flower["environment"]["FLOWER_BASIC_AUTH"] == initialised_env["FLOWER_BASIC_AUTH"]
    assert flower["environment"]["IMPROBABLE_BROKER_URL"] == "redis://redis:6379/0"
    assert "--basic-auth" not in " ".join(flower["command"]), "a password on the command line shows in `ps`"


def test_postgres_has_no_default_password():
    doc = load_compose({})
    assert doc["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"] == ""
    assert doc["services"]["bot"]["environment"]["PGPASSWORD"] == ""  # refused by the image's entry point


def test_corpora_mount_needs_no_missing_folder(compose):
    assert env_file_values()["CORPORA_DIR"] == ""
    bot = compose["services"]["bot"]
    assert "corpora:/corpora:ro" in bot["volumes"], "without CORPORA_DIR: the named volume, not ./corpora"
    assert "corpora" in compose["volumes"]
    mounted = load_compose({**env_file_values(), "CORPORA_DIR": "../shared/corpora"})["services"]["bot"]
    assert "../shared/corpora:/corpora:ro" in mounted["volumes"]


def _dockerfile_arg(name: str) -> str:
    match = re.search(rf"^ARG {name}=(.*)$", DOCKERFILE.read_text(encoding="utf-8"), re.M)
    assert match, f"the Dockerfile has no ARG {name}=..."
    return match.group(1)


def test_images_are_pinned_to_exact_releases(compose):
    base = _dockerfile_arg("BASE_IMAGE")
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", base), base
    assert compose["services"]["bot"]["build"]["args"]["BASE_IMAGE"] == base
    assert load_compose({})["services"]["bot"]["build"]["args"]["BASE_IMAGE"] == base
    for name in ("redis", "postgres"):
        image = compose["services"][name]["image"]
        # a patch release (PostgreSQL numbers them MAJOR.MINOR), never a floating `7` or `16-alpine`
        assert re.fullmatch(r"[\w./-]+:\d+\.\d+(\.\d+)?-[\w.-]+(@sha256:[0-9a-f]{64})?", image), image


def test_dockerfile_needs_no_registry_frontend_nor_buildkit():
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert not re.search(r"^#\s*syntax\s*=", text, re.M | re.I), "a syntax line makes Docker pull a frontend image"
    for buildkit_only in ("--mount=", "--chmod=", "--link", "<<"):
        assert buildkit_only not in text, f"{buildkit_only}: BuildKit only; the classic builder must build this"
    assert re.search(r'^ENTRYPOINT \["/bin/sh", "/usr/local/bin/improbable-entrypoint"\]$', text, re.M)
    assert "!scripts/docker-entrypoint.sh" in (ROOT / ".dockerignore").read_text(encoding="utf-8").split()


def test_dockerfile_build_arguments_for_torch_and_indexes():
    text = DOCKERFILE.read_text(encoding="utf-8")
    for name in ("TORCH_VARIANT", "TORCH_VERSION", "TORCH_INDEX_URL", "PACKAGE_INDEX_URL", "OFFLINE"):
        assert re.search(rf"^ARG {name}=", text, re.M), name
    assert _dockerfile_arg("TORCH_VERSION") == "2.13.0"
    assert "-c requirements.lock" in text, "every package at the lockfile's version"
    assert "--find-links /wheels" in text and "--no-index" in text, "offline builds from wheels/"
    for name in ("TORCH_INDEX_URL", "PACKAGE_INDEX_URL", "OFFLINE"):
        assert name in load_compose({})["services"]["bot"]["build"]["args"], f"compose passes {name}"


def _nested_interpolations(text: str) -> list[str]:
    """Every `${...}` of `text` with another `${` inside, which docker-compose 1.29 misreads: it ends the outer
    expression at the inner `}` and keeps the rest as text (a broken URL, silently)."""
    found, start = [], 0
    while (i := text.find("${", start)) >= 0:
        depth, j = 1, i + 2
        while j < len(text) and depth:
            depth += text.startswith("${", j) - (text[j] == "}")
            j += 1
        if "${" in text[i + 2:j]:
            found.append(text[i:j])
        start = j
    return found


def _strings(node) -> list[str]:
    if isinstance(node, dict):
        return [s for key, value in node.items() for s in _strings(key) + _strings(value)]
    if isinstance(node, list):
        return [s for value in node for s in _strings(value)]
    return [node] if isinstance(node, str) else []


def test_compose_v1_reads_the_file_as_v2_does():
    """Debian's docker-compose 1.29 (apt-get install docker-compose) rejects a top-level `name:` and the long
    `env_file` form, and misreads nested defaults; the file uses none of them (where docker-compose is
    installed, it also checks the file itself)."""
    raw = raw_compose()
    assert "name" not in raw, "v1 rejects `name:`; COMPOSE_PROJECT_NAME in .env names the project"
    assert env_file_values()["COMPOSE_PROJECT_NAME"] == "improbable"
    nested = [expr for text in _strings(raw) for expr in _nested_interpolations(text)]
    assert not nested, f"docker-compose 1.29 misreads nested defaults: {nested}"
    assert _nested_interpolations("${A:-x${B:-y}z}") == ["${A:-x${B:-y}z}"]  # the check itself finds one
    for name, service in load_compose(env_file_values())["services"].items():
        assert all(isinstance(entry, str) for entry in service.get("env_file", [])), name
    if shutil.which("docker-compose"):
        env = {**os.environ, "POSTGRES_PASSWORD": "0123456789abcdef", "ENV_FILE": str(ENV_EXAMPLE)}
        done = subprocess.run(["docker-compose", "--env-file", str(ENV_EXAMPLE), "--profile", "cpu", "config", "-q"],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
