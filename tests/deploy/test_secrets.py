"""The Discord token reaches only the services that talk to Discord: the bot and the generate workers (they
post scheduled texts). Read from docker-compose.yml as Compose runs it: a service's environment is its
env_file files overridden by its `environment`."""

from __future__ import annotations

from pathlib import Path

from core.settings import Settings
from worker.app import routes

from .deploytools import ROOT, command_argv, env_file_values, load_compose

TOKEN = "MTIzNDU2.discord-secret-token"
TOKEN_VARIABLES = ("DISCORD_TOKEN", "IMPROBABLE_DISCORD_TOKEN", "DISCORD_TOKEN_FILE", "IMPROBABLE_DISCORD_TOKEN_FILE")


def _operator_env(tmp_path: Path) -> Path:
    """An operator's .env: .env.example with the token filled in (and a secrets file named)."""
    path = tmp_path / ".env"
    values = {**env_file_values(), "DISCORD_TOKEN": TOKEN, "DISCORD_TOKEN_FILE": "/run/secrets/discord_token"}
    path.write_text("".join(f"{name}={value}\n" for name, value in values.items()), encoding="utf-8")
    return path


def container_env(service: dict, dotenv: Path) -> dict[str, str]:
    """What the container's process sees: each env_file (`.env` is the operator's), then `environment`."""
    env: dict[str, str] = {}
    for entry in service.get("env_file") or []:
        name = entry["path"] if isinstance(entry, dict) else entry
        path = dotenv if name == ".env" else ROOT / name
        if path.is_file():
            env.update(env_file_values(path))
    env.update({k: "" if v is None else str(v) for k, v in (service.get("environment") or {}).items()})
    return env


def _queues(service: dict) -> set[str]:
    argv = command_argv(service.get("command"))
    if "worker" not in argv or "-Q" not in argv:
        return set()
    return set(argv[argv.index("-Q") + 1].split(","))


def discord_services(compose: dict) -> set[str]:
    """The bot, and every worker that consumes the queue improbable.post_scheduled is routed to."""
    queue = routes()["improbable.post_scheduled"]["queue"]
    return {"bot"} | {name for name, s in compose["services"].items() if queue in _queues(s)}


def test_only_the_bot_and_the_schedule_posting_workers_get_the_token(tmp_path):
    dotenv = _operator_env(tmp_path)
    compose = load_compose(env_file_values(dotenv))
    allowed = discord_services(compose)
    assert allowed == {"bot", "worker", "worker-cpu"}
    holders = set()
    for name, service in compose["services"].items():
        env = container_env(service, dotenv)
        if any(env.get(variable) for variable in TOKEN_VARIABLES):
            holders.add(name)
    assert holders == allowed
    for name in allowed:
        assert container_env(compose["services"][name], dotenv)["DISCORD_TOKEN"] == TOKEN, name


def test_the_trainer_reads_no_token_from_any_source(clean_env, tmp_path):
    """Inside the container: its environment as Compose builds it, no .env in the image (.dockerignore) and no
    Docker secret mounted into a service that does not post to Discord."""
    dotenv = _operator_env(tmp_path)
    compose = load_compose(env_file_values(dotenv))
    assert ".env" in (ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    mounted = {name for name, service in compose["services"].items() if service.get("secrets")}
    assert mounted <= discord_services(compose)
    for name, value in container_env(compose["services"]["trainer-cpu"], dotenv).items():
        clean_env.setenv(name, value)
    assert Settings(_env_file=None).discord_token == ""
    for name in TOKEN_VARIABLES:
        clean_env.delenv(name, raising=False)
    for name, value in container_env(compose["services"]["bot"], dotenv).items():
        if name != "DISCORD_TOKEN_FILE":  # no such file here; in a container it would hold the token too
            clean_env.setenv(name, value)
    assert Settings(_env_file=None).discord_token == TOKEN
