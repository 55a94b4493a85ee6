"""Docker smoke test: the image builds as docs/deploy.md says, and the whole Compose stack answers a /generate.

No registry or package index is needed: the image is built with the classic builder (DOCKER_BUILDKIT=0, so no
`# syntax=` frontend is pulled) on a base image built locally (scripts/docker-base-image.sh), offline from
wheels/ (scripts/wheelhouse.sh, CPU torch); Redis and PostgreSQL run the images scripts/docker-service-images.sh
builds from that base (or whichever REDIS_IMAGE / POSTGRES_IMAGE are present locally). Then, as an operator's
first run: `up` of the CPU profile without a token (every service healthy but the bot, which waits with one
line), then the token of a fake Discord (tests/bot/fake_discord.py, run here on the Docker bridge's address)
and `up -d bot`: the bot logs in, and a /generate is answered through the containers. Compose v2
(`docker compose`) or Debian's docker-compose 1.29, whichever is installed.

Runs where a Docker daemon answers and the base image exists (minutes the first time, so never as a surprise
in CI), and skips with the reason elsewhere. IMPROBABLE_DOCKER_SMOKE=1 makes anything missing a failure (it
never skips then), IMPROBABLE_DOCKER_SMOKE=0 skips it everywhere. IMPROBABLE_SMOKE_BASE_IMAGE,
IMPROBABLE_SMOKE_REDIS_IMAGE and IMPROBABLE_SMOKE_POSTGRES_IMAGE name other images. The timings (image build,
stack healthy, bot ready, first answer) are printed, and merged into the JSON file IMPROBABLE_SMOKE_TIMINGS
names, if any.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.bot.fake_discord import FakeDiscord, custom_ids, opt

from .conftest import free_port
from .deploytools import ROOT, env_file_values

SWITCH = os.environ.get("IMPROBABLE_DOCKER_SMOKE", "")
BASE_IMAGE = os.environ.get("IMPROBABLE_SMOKE_BASE_IMAGE", "improbable-base:bookworm")
IMAGE = "improbable:smoke-test"
GOOD = "5b0c3e2d1f4a69788796a5b4c3d2e1f0"
NO_TOKEN_LINE = "DISCORD_TOKEN is not set"
SERVICES = ("redis", "postgres", "migrate", "bot", "worker-cpu", "trainer-cpu", "beat", "flower")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]


def _docker(*args: str, timeout: float = 60, env: dict | None = None, check: bool = False):
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=ROOT)
    if check:
        assert done.returncode == 0, f"docker {' '.join(args)}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def _compose_command() -> list[str] | None:
    """`docker compose` (v2) where it answers, else `docker-compose` (v1.29), else None."""
    if _docker("compose", "version").returncode == 0:
        return ["docker", "compose"]
    return ["docker-compose"] if shutil.which("docker-compose") else None


def _local_image(*candidates: str) -> str | None:
    return next((name for name in candidates if name and _docker("image", "inspect", name).returncode == 0), None)


def _service_images() -> tuple[str | None, str | None]:
    shipped = env_file_values()
    redis = _local_image(os.environ.get("IMPROBABLE_SMOKE_REDIS_IMAGE", ""), "improbable-redis:bookworm",
                         shipped["REDIS_IMAGE"])
    postgres = _local_image(os.environ.get("IMPROBABLE_SMOKE_POSTGRES_IMAGE", ""), "improbable-postgres:bookworm",
                            shipped["POSTGRES_IMAGE"])
    return redis, postgres


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
    if _compose_command() is None:
        return "neither Compose v2 (`docker compose`) nor docker-compose 1.29 is installed"
    if None in _service_images():
        return ("no Redis or PostgreSQL image is present locally (scripts/docker-service-images.sh builds both from "
                "the base image, no registry)")
    return None


class Timings:
    """The smoke run's durations: printed as they come, and merged into IMPROBABLE_SMOKE_TIMINGS's file."""

    def __init__(self, config) -> None:
        self.capture = config.pluginmanager.getplugin("capturemanager")
        self.values: dict[str, float | str] = {}

    def add(self, name: str, seconds: float) -> None:
        self.values[name] = round(seconds, 1)
        with self.capture.global_and_fixture_disabled() if self.capture else contextlib.nullcontext():
            print(f"\ndocker smoke: {name} {seconds:.1f} s", flush=True)  # on the terminal, past pytest's capture
        target = os.environ.get("IMPROBABLE_SMOKE_TIMINGS")
        if target:
            path = Path(target)
            old = json.loads(path.read_text()) if path.exists() else {}
            path.write_text(json.dumps({**old, **self.values}, indent=2) + "\n")


@pytest.fixture(scope="module")
def timings(request) -> Timings:
    return Timings(request.config)


@pytest.fixture(scope="module")
def image(timings):
    reason = _missing_prerequisite()
    if reason:
        message = f"Docker smoke test not run: {reason}."
        if SWITCH == "1":
            pytest.fail(message + " (IMPROBABLE_DOCKER_SMOKE=1 requires it)")
        pytest.skip(message)
    started = time.monotonic()
    _docker("build", "-t", IMAGE, "--build-arg", f"BASE_IMAGE={BASE_IMAGE}", "--build-arg", "TORCH_VARIANT=cpu",
            "--build-arg", "OFFLINE=1", ".", timeout=1500, env={"DOCKER_BUILDKIT": "0"}, check=True)
    timings.add("image_build_s", time.monotonic() - started)
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


# -- the stack --------------------------------------------------------------------------------------------

class Stack:
    """One compose project of the CPU profile, its .env written here, driven by whichever Compose is installed."""

    def __init__(self, image: str, env_file: Path) -> None:
        self.project = f"improbable-smoke-{uuid.uuid4().hex[:8]}"
        self.env_file = env_file
        subprocess.run(["bash", str(ROOT / "scripts" / "init-env.sh"), str(env_file)], check=True, timeout=30)
        redis, postgres = _service_images()
        self.env = {**env_file_values(env_file), "IMAGE": image, "REDIS_IMAGE": redis, "POSTGRES_IMAGE": postgres,
                    "ENV_FILE": str(env_file), "BOT_METRICS_HOST_PORT": str(free_port()),
                    "FLOWER_HOST_PORT": str(free_port()), "IMPROBABLE_LOG_FORMAT": "text"}
        self.write()
        self.compose = [*_compose_command(), "--project-name", self.project, "--env-file", str(env_file),
                        "--profile", "cpu"]

    def write(self, **changes: str) -> None:
        self.env.update(changes)
        self.env_file.write_text("".join(f"{name}={value}\n" for name, value in self.env.items()))

    def __call__(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([*self.compose, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)

    def states(self) -> dict[str, dict]:
        """service → {status, health, exit_code, restarts} of its container (Docker's labels: v1 and v2 alike)."""
        ids = _docker("ps", "--all", "--quiet", "--filter", f"label=com.docker.compose.project={self.project}")
        if not ids.stdout.split():
            return {}
        fmt = ('{{index .Config.Labels "com.docker.compose.service"}} {{.State.Status}} '
               '{{if .State.Health}}{{.State.Health.Status}}{{else}}-{{end}} {{.State.ExitCode}} {{.RestartCount}}')
        states = {}
        for line in _docker("inspect", "--format", fmt, *ids.stdout.split()).stdout.splitlines():
            service, status, health, code, restarts = line.split()
            states[service] = {"status": status, "health": health, "exit_code": int(code), "restarts": int(restarts)}
        return states

    def logs(self, *services: str) -> str:
        return self("logs", "--no-color", *services, timeout=60).stdout

    def wait(self, ready, what: str, timeout: float = 600) -> dict[str, dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = self.states()
            if ready(states):
                return states
            time.sleep(2)
        pytest.fail(f"waited {timeout:.0f} s for {what}: {states}\n{self.logs()[-8000:]}")


def _healthy(states: dict, services) -> bool:
    if states.get("migrate", {}).get("status") != "exited":
        return False
    assert states["migrate"]["exit_code"] == 0, states
    return all(states.get(s, {}).get("status") == "running" and states[s]["health"] in ("healthy", "-")
               for s in services)


def _bridge_address() -> str:
    """The host's address on Docker's default bridge: containers of any compose network reach the host there.
    The network's gateway, or (where the daemon leaves it out, as 20.10 does) its interface's address."""
    fmt = '{{(index .IPAM.Config 0).Gateway}} {{index .Options "com.docker.network.bridge.name"}}'
    words = _docker("network", "inspect", "bridge", "--format", fmt, check=True).stdout.split()
    if len(words) == 2:
        return words[0]
    import fcntl
    import socket
    import struct

    assert words, "Docker's default bridge names neither its gateway nor its interface"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # SIOCGIFADDR: the interface's IPv4 address
        packed = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", words[-1].encode()[:15]))
    return socket.inet_ntoa(packed[20:24])


@pytest.fixture
def fake_on_the_bridge():
    fake = FakeDiscord()
    fake.host = _bridge_address()
    assert fake.host, "no address of the host on Docker's bridge"
    fake.start()
    yield fake
    fake.stop()


def test_first_run_without_a_token_then_a_generate_through_the_stack(image, tmp_path, fake_on_the_bridge, timings):
    fake = fake_on_the_bridge
    stack = Stack(image, tmp_path / ".env")
    others = [s for s in SERVICES if s not in ("migrate", "bot")]
    try:
        started = time.monotonic()
        up = stack("up", "--detach", "--no-build", timeout=600)
        assert up.returncode == 0, up.stderr[-3000:] + stack.logs()[-6000:]
        states = stack.wait(lambda s: _healthy(s, others) and s.get("bot", {}).get("status") == "running",
                            "every service but the bot healthy, the bot waiting for a token")
        timings.add("stack_healthy_s", time.monotonic() - started)
        time.sleep(5)  # long enough for a restart loop to show
        states = stack.states()
        assert states["bot"]["status"] == "running" and states["bot"]["restarts"] == 0, states
        bot_log = stack.logs("bot")
        assert bot_log.count(NO_TOKEN_LINE) == 1 and "Traceback" not in bot_log, bot_log[-3000:]

        stack.write(**fake.env())
        started = time.monotonic()
        up = stack("up", "--detach", "--no-build", "bot", timeout=600)
        assert up.returncode == 0, up.stderr[-3000:]
        stack.wait(lambda s: _healthy(s, [*others, "bot"]) and s["bot"]["health"] == "healthy", "the bot healthy")
        timings.add("bot_healthy_after_token_s", time.monotonic() - started)
        fake.wait_for(lambda: "generate" in fake.commands, 60, "the slash commands synced")
        started = time.monotonic()
        ix = fake.slash("generate", [opt("persona", "alice"), opt("prompt", "Alice was"), opt("length", 60),
                                     opt("seed", 7)], user=fake.alice)
        answer = fake.wait_for(lambda: (msg := fake.message(ix.original_id)) and ix.state != "loading"
                               and custom_ids(msg) and msg, 300, "the answer to /generate")
        timings.add("first_generate_answer_s", time.monotonic() - started)
        assert "**Alice was**" in answer["content"] and "seed 7" in answer["content"], answer["content"]
        _flower_needs_a_login(stack)
    finally:
        stack("down", "--volumes", "--remove-orphans", timeout=300)


def _flower_needs_a_login(stack: Stack) -> None:
    probe = ("import sys, urllib.request, urllib.error\n"
             "try:\n    urllib.request.urlopen('http://127.0.0.1:5555/api/workers', timeout=10)\n"
             "except urllib.error.HTTPError as e:\n    sys.exit(0 if e.code == 401 else e.code)\nsys.exit(1)\n")
    assert stack("exec", "-T", "flower", "python", "-c", probe).returncode == 0, "Flower answered without a login"

