"""Docker smoke test: the image builds as the README says and its services start, on a real Docker daemon.

It builds with the classic builder (DOCKER_BUILDKIT=0, so no `# syntax=` frontend can be pulled), on a base
image built locally (scripts/docker-base-image.sh) and offline from wheels/ (scripts/wheelhouse.sh, CPU torch):
no registry or index is needed. Then it runs the image: the CLI as an unprivileged user, the entry point's
refusal of placeholder passwords, migrations and health checks on SQLite; and where Compose v2 and the Redis
and PostgreSQL images are present, `docker compose --profile cpu up` of everything but the bot (which needs a
Discord token), with .env from scripts/init-env.sh.

Runs only where a Docker daemon answers and the base image exists (minutes the first time, so never as a
surprise in CI); skips with the reason otherwise. IMPROBABLE_DOCKER_SMOKE=1 turns a missing prerequisite into
a failure, IMPROBABLE_DOCKER_SMOKE=0 skips it everywhere; IMPROBABLE_SMOKE_BASE_IMAGE names another base image.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid

import pytest

from .deploytools import ROOT, env_file_values

SWITCH = os.environ.get("IMPROBABLE_DOCKER_SMOKE", "")
BASE_IMAGE = os.environ.get("IMPROBABLE_SMOKE_BASE_IMAGE", "improbable-base:bookworm")
IMAGE = "improbable:smoke-test"
GOOD = "5b0c3e2d1f4a69788796a5b4c3d2e1f0"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


def _docker(*args: str, timeout: float = 60, env: dict | None = None, check: bool = False):
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=ROOT)
    if check:
        assert done.returncode == 0, f"docker {' '.join(args)}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def _missing_prerequisite() -> str | None:
    if SWITCH == "0":
        return "IMPROBABLE_DOCKER_SMOKE=0"
    if shutil.which("docker") is None:
        return "no `docker` command on PATH"
    try:
        info = _docker("info", "--format", "{{.ServerVersion}}", timeout=20)
    except subprocess.TimeoutExpired:
        return "the Docker daemon did not answer `docker info` within 20 s"
    if info.returncode != 0:
        last = info.stderr.strip().splitlines()[-1] if info.stderr.strip() else "docker info failed"
        return f"no Docker daemon answers ({last})"
    if _docker("image", "inspect", BASE_IMAGE).returncode != 0:
        return f"the base image {BASE_IMAGE} is not built here (scripts/docker-base-image.sh builds one, no registry)"
    if not list((ROOT / "wheels").glob("torch-*.whl")):
        return "wheels/ holds no torch wheel for the offline build (scripts/wheelhouse.sh fills it)"
    return None


@pytest.fixture(scope="module")
def image():
    reason = _missing_prerequisite()
    if reason:
        message = f"Docker smoke test not run: {reason}. It needs a Docker daemon and a locally built base image."
        if SWITCH == "1":
            pytest.fail(message + " (IMPROBABLE_DOCKER_SMOKE=1 requires it)")
        pytest.skip(message)
    _docker("build", "-t", IMAGE, "--build-arg", f"BASE_IMAGE={BASE_IMAGE}", "--build-arg", "TORCH_VARIANT=cpu",
            "--build-arg", "OFFLINE=1", ".", timeout=1500, env={"DOCKER_BUILDKIT": "0"}, check=True)
    return IMAGE


def _run(image: str, *argv: str, env: dict[str, str] | None = None, timeout: float = 120):
    flags = [arg for name, value in (env or {}).items() for arg in ("-e", f"{name}={value}")]
    return _docker("run", "--rm", "--network", "none", *flags, image, *argv, timeout=timeout)


def test_the_cli_runs_as_an_unprivileged_user(image):
    done = _run(image, "improbable", "--help")
    assert done.returncode == 0, done.stderr
    assert "generate" in done.stdout
    assert _run(image, "id", "-u").stdout.strip() == "10001"
    torch = _run(image, "python", "-c", "import torch; print(torch.__version__, torch.cuda.is_available())")
    assert torch.stdout.split() == ["2.13.0+cpu", "False"], torch.stderr


def test_placeholder_passwords_stop_every_service(image):
    refused = _run(image, "improbable", "--help", env={"POSTGRES_PASSWORD": "change-me"})
    assert refused.returncode == 64 and "refusing to start" in refused.stderr
    url = "postgresql+psycopg://improbable:change-me@postgres:5432/improbable"
    assert _run(image, "python", "-m", "db", "upgrade", env={"IMPROBABLE_DATABASE_URL": url}).returncode == 64
    flower = _run(image, "celery", "-A", "worker.app", "flower", env={"FLOWER_BASIC_AUTH": "admin:change-me"})
    assert flower.returncode == 64 and "FLOWER_BASIC_AUTH" in flower.stderr


def test_migrations_and_health_checks_run_in_the_image(image):
    env = {"IMPROBABLE_DATABASE_URL": "sqlite:////tmp/improbable.db", "IMPROBABLE_STORAGE_URL": "/tmp/storage",
           "POSTGRES_PASSWORD": GOOD}
    done = _run(image, "sh", "-c", "improbable config --check && python -m db upgrade "
                "&& improbable health database storage migrations", env=env, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def _compose_prerequisite(env: dict[str, str]) -> str | None:
    version = _docker("compose", "version", "--short")
    if version.returncode != 0:
        return "Docker Compose v2 (`docker compose`) is not installed"
    for name in ("REDIS_IMAGE", "POSTGRES_IMAGE"):
        if _docker("image", "inspect", env[name]).returncode != 0:
            return f"{env[name]} ({name}) is not present locally and no registry may be reachable"
    return None


def test_compose_cpu_profile_comes_up_healthy(image, tmp_path):
    env_file = tmp_path / ".env"
    subprocess.run(["bash", str(ROOT / "scripts" / "init-env.sh"), str(env_file)], check=True, timeout=30)
    env = env_file_values(env_file)
    env.update(IMAGE=image, REDIS_IMAGE=os.environ.get("IMPROBABLE_SMOKE_REDIS_IMAGE", env["REDIS_IMAGE"]),
               POSTGRES_IMAGE=os.environ.get("IMPROBABLE_SMOKE_POSTGRES_IMAGE", env["POSTGRES_IMAGE"]))
    env_file.write_text("".join(f"{name}={value}\n" for name, value in env.items()))
    reason = _compose_prerequisite(env)
    if reason:
        pytest.skip(f"compose part not run: {reason}; the image itself was built and checked above")
    project = f"improbable-smoke-{uuid.uuid4().hex[:8]}"
    compose = ["compose", "--project-name", project, "--env-file", str(env_file), "--profile", "cpu"]
    services = ["redis", "postgres", "migrate", "worker-cpu", "trainer-cpu", "beat", "flower"]  # bot: needs a token
    try:
        up = _docker(*compose, "up", "--detach", "--no-build", "--wait", "--wait-timeout", "600", *services,
                     timeout=900)
        logs = _docker(*compose, "logs", "--no-color", "--tail", "40", timeout=60).stdout
        assert up.returncode == 0, up.stderr[-3000:] + logs[-6000:]
        states = [json.loads(line) for line in _docker(*compose, "ps", "--all", "--format", "json").stdout.splitlines()]
        by_service = {s["Service"]: s for s in states}
        assert by_service["migrate"]["ExitCode"] == 0
        for name in set(services) - {"migrate"}:
            assert by_service[name]["State"] == "running", (name, by_service[name])
            assert by_service[name].get("Health") in ("healthy", ""), (name, by_service[name])
        probe = ("import sys, urllib.request, urllib.error\n"
                 "try:\n    urllib.request.urlopen('http://127.0.0.1:5555/api/workers', timeout=10)\n"
                 "except urllib.error.HTTPError as e:\n    sys.exit(0 if e.code == 401 else e.code)\nsys.exit(1)\n")
        assert _docker(*compose, "exec", "-T", "flower", "python", "-c", probe).returncode == 0, "Flower without login"
    finally:
        _docker(*compose, "down", "--volumes", "--remove-orphans", timeout=300)
