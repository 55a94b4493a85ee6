"""The README and docs/ agree with the code: the permissions integer, the invite URL, the intents, metric
names, settings, commands and their options, paths, links; the README stays a short manual (≤ 300 lines,
links inside the repository, no history)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import discord
import pytest

from core import metrics
from core.settings import Settings

from .deploytools import ROOT

README_PATH = ROOT / "README.md"
README = README_PATH.read_text(encoding="utf-8")
DOCS = {path: path.read_text(encoding="utf-8") for path in sorted((ROOT / "docs").glob("*.md"))}
DEPLOY = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
BENCHMARKS = (ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8")
MARKDOWN = {README_PATH: README, **DOCS}
PERMISSIONS = ("view_channel", "send_messages", "send_messages_in_threads", "embed_links", "attach_files",
               "read_message_history")
MAX_README_LINES = 300
TEST_SWITCHES = ("IMPROBABLE_DOCKER_SMOKE", "IMPROBABLE_SMOKE_BASE_IMAGE")  # read by tests, not by Settings
LINK = re.compile(r"(?<!\!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")


def _section(text: str, title: str, level: int = 2) -> str:
    mark = "#" * level
    start = text.index(f"\n{mark} {title}\n")
    end = text.find(f"\n{mark} ", start + 1)
    return text[start:end if end > 0 else None]


def _links(text: str) -> list[str]:
    return [a or b for a, b in LINK.findall(text)]


def _code_lines(text: str) -> list[str]:
    """The lines of the fenced ```bash blocks, comments cut off."""
    lines = []
    for block in re.findall(r"^\s*```bash\n(.*?)^\s*```", text, re.M | re.S):
        lines += [line.split("  #")[0].strip() for line in block.splitlines()]
    return [line for line in lines if line]


def test_permissions_integer_and_invite_url():
    value = discord.Permissions(**dict.fromkeys(PERMISSIONS, True)).value
    setup = _section(README, "Discord application setup")
    assert f"**{value}**" in setup
    assert ("https://discord.com/oauth2/authorize?client_id=<APP_ID>&scope=bot+applications.commands"
            f"&permissions={value}") in setup
    rows = re.findall(r"^\s*\| ([A-Z][^|]+?) \| [^|]+ \| (\d+) \| (\d+) \|$", setup, re.M)
    assert len(rows) == len(PERMISSIONS)
    for name, bit, shown in rows:
        flag = name.strip().lower().replace(" ", "_").replace("channels", "channel")
        assert getattr(discord.Permissions, flag).flag == int(shown) == 1 << int(bit), name
    assert "Message Content" in setup and "mention chat" in setup


def test_the_bot_asks_for_the_intents_the_readme_describes():
    from bot.client import intents

    value = intents()
    assert value.guilds and value.guild_messages and value.message_content
    assert not value.members and not value.presences  # the other privileged intents stay off


def test_metric_names_in_the_deploy_doc_exist():
    observability = _section(DEPLOY, "Observability")
    known = metrics.METRIC_NAMES + metrics.CLUSTER_METRIC_NAMES + ("improbable_build_info",)
    for name in re.findall(r"`(improbable_[a-z_]+)", observability):
        assert name in known, f"docs/deploy.md names {name}, which no collector exports"
    for name in ("improbable_jobs_total", "improbable_queue_depth", "improbable_generate_latency_seconds",
                 "improbable_generate_tokens_per_second", "improbable_checkpoint_cache_requests_total",
                 "improbable_training_progress_ratio"):
        assert name in observability


def test_the_readme_is_a_short_manual():
    lines = README.splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines (at most {MAX_README_LINES})"
    for title in ("The two commands", "Console chat", "Discord application setup", "Configuration", "Layout"):
        assert f"\n## {title}\n" in README, title
    for doc in ("docs/architecture.md", "docs/deploy.md", "docs/benchmarks.md"):
        assert f"]({doc})" in README, f"the README links {doc}"
    assert "./run.sh" in README and "./test.sh" in README and "IMPROBABLE_CORPUS_PATH" in README


@pytest.mark.parametrize("path", list(MARKDOWN), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_links_stay_inside_the_repository(path: Path):
    for target in _links(MARKDOWN[path]):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # a web page (https://...), not a file
            assert target.startswith("https://"), target
            continue
        file = target.split("#")[0]
        if not file:  # an anchor in the same page
            continue
        if path == README_PATH:
            assert not file.startswith(("../", "/")), f"README.md links {target}, outside the repository"
        resolved = (path.parent / file).resolve()
        assert resolved.is_relative_to(ROOT), f"{path.name} links {target}, outside the repository"
        assert resolved.exists(), f"{path.name} links {target}, which does not exist"


@pytest.mark.parametrize("path", list(MARKDOWN), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_history_or_issue_numbers(path: Path):
    text = MARKDOWN[path]
    for pattern in (r"\bissues? #?\d", r"\(was ", r"(?<![\w/&])#\d+\b", r"\bpreviously\b", r"\bused to\b"):
        found = re.search(pattern, text, re.I)
        assert found is None, f"{path.name}: {text[max(0, found.start() - 60):found.end() + 60]!r}"
    if path == README_PATH:  # measurements, missed targets and dates live in docs/benchmarks.md
        for pattern in (r"\b20\d\d-\d\d-\d\d\b", r"\bmissed\b", r"\bMeasured\b"):
            assert re.search(pattern, text) is None, pattern


def test_settings_named_in_the_docs_exist():
    env_names = set()
    for name, field in Settings.model_fields.items():
        env_names.add(f"IMPROBABLE_{name.upper()}")
        alias = field.validation_alias
        env_names.update(str(choice).upper() for choice in getattr(alias, "choices", ()) or ())
    for path, text in MARKDOWN.items():
        for name in set(re.findall(r"\b((?:IMPROBABLE|DISCORD)_[A-Z0-9_]*[A-Z0-9])\b", text)):
            if name.startswith("IMPROBABLE_TEST_") or name.endswith("_FILE") or name in TEST_SWITCHES:
                continue
            assert name in env_names, f"{path.name} names {name}, which is no setting (core/settings.py)"
    configuration = _section(README, "Configuration")  # (tests/deploy/test_env_example.py: .env.example lists all)
    for needed in ("DISCORD_TOKEN", "IMPROBABLE_CORPUS_PATH", "IMPROBABLE_DATABASE_URL", "IMPROBABLE_BROKER_URL",
                   "IMPROBABLE_STORAGE_URL"):
        assert needed in configuration
    assert "core/settings.py" in configuration and ".env.example" in configuration


def test_improbable_commands_and_options_exist():
    import typer.main

    from improbable.cli import app

    cli = typer.main.get_command(app)
    seen = 0
    for path, text in MARKDOWN.items():
        for line in _code_lines(text) + re.findall(r"`((?:\.venv/bin/)?improbable [^`]+)`", text):
            if not line.startswith(("improbable ", ".venv/bin/improbable ")):  # not `improbable> ` (the chat)
                continue
            words = shlex.split(re.sub(r"<[^>]*>", "X", line))
            if not words or words[0] not in ("improbable", ".venv/bin/improbable"):
                continue
            if len(words) < 2 or words[1].startswith("-") or words[1] == "X":  # `improbable <command> --help`
                continue
            seen += 1
            command = cli.commands.get(words[1])
            assert command is not None, f"{path.name}: `{line}`: no command {words[1]}"
            options = {opt for param in command.params for opt in getattr(param, "opts", [])}
            options |= {opt for param in command.params for opt in getattr(param, "secondary_opts", [])}
            options.add("--help")
            if hasattr(command, "commands"):  # a group: its subcommands' options
                options |= {opt for sub in command.commands.values() for param in sub.params
                            for opt in getattr(param, "opts", [])}
            for word in words[2:]:
                if word.startswith("--"):
                    assert word.split("=")[0] in options, f"{path.name}: `{line}`: {words[1]} has no {word}"
    assert seen >= 8


def test_scripts_and_bench_modules_named_exist():
    for path, text in MARKDOWN.items():
        for script in set(re.findall(r"(?<![\w/.])((?:scripts|\.ci)/[\w.-]+)", text)):
            assert (ROOT / script).exists(), f"{path.name} names {script}"
    modules = set(re.findall(r"python -m (bench(?:\.\w+)+)", BENCHMARKS))
    assert modules, "docs/benchmarks.md runs the benchmarks as modules"
    for module in modules:
        assert (ROOT / (module.replace(".", "/") + ".py")).is_file(), f"docs/benchmarks.md runs {module}"
    for path, text in MARKDOWN.items():
        assert not re.search(r"python bench/", text), f"{path.name}: run benchmarks as `python -m bench.…`"


def test_repository_paths_named_in_the_docs_exist():
    tops = {p.name for p in ROOT.iterdir() if p.is_dir() and not p.name.startswith(".")} - {"runs", "wheels"}
    for path, text in MARKDOWN.items():
        for name in set(re.findall(r"`([\w.-]+/[\w./*-]*)`", text)):
            first = name.split("/")[0]
            if first not in tops:
                continue
            if "*" in name:
                assert list(ROOT.glob(name)), f"{path.name} names {name}, which matches nothing"
            else:
                assert (ROOT / name).exists(), f"{path.name} names {name}, which does not exist"


COMPOSE_SUBCOMMANDS_WITH_SERVICES = {"up", "exec", "run", "logs", "build", "push", "ps", "restart", "stop", "start",
                                     "pull", "rm"}
# before the subcommand
COMPOSE_OPTIONS_WITH_VALUES = {"-p", "--project-name", "-f", "--file", "--profile", "--env-file"}
SUBCOMMAND_OPTIONS_WITH_VALUES = {"-e", "--env", "-u", "--user", "-w", "--workdir", "--tail", "--scale",
                                  "--wait-timeout", "--index"}
GPU_SECTIONS = ("Scaling generate workers across machines", "GPU notes")  # where `worker` / `trainer` are meant


def _compose_commands(text: str) -> list[tuple[str, list[str]]]:
    """(subcommand, services) of every `docker compose ...` / `docker-compose ...` in code and inline code."""
    found = []
    for line in _code_lines(text) + re.findall(r"`([^`]*docker[ -]compose [^`]+)`", text):
        for match in re.finditer(r"docker(?: |-)compose( .*)?$", line):
            rest = re.sub(r"\$\([^)]*\)", "X", match.group(1) or "")
            try:
                words = shlex.split(rest, comments=True)
            except ValueError:  # a quote closed past the end of an inline snippet
                words = rest.split()
            sub, services, i = None, [], 0
            while i < len(words):
                word = words[i]
                if word in ("|", "||", "&&", ";", ">") or word.endswith(";"):
                    break
                if word in (SUBCOMMAND_OPTIONS_WITH_VALUES if sub else COMPOSE_OPTIONS_WITH_VALUES):
                    i += 2
                    continue
                if not word.startswith("-"):
                    if sub is None:
                        sub = word
                    elif sub in COMPOSE_SUBCOMMANDS_WITH_SERVICES:
                        services.append(word)
                        if sub in ("exec", "run"):  # the rest is the command run in the container
                            break
                i += 1
            if sub:
                found.append((sub, services))
    return found


def test_compose_commands_in_the_docs_name_services_of_the_file():
    """Every service a documented compose command names exists, and outside the GPU sections it runs in the
    profile .env.example ships (cpu): `exec worker-cpu`, not `exec worker`, on a CPU deployment."""
    from .deploytools import env_file_values, load_compose

    compose = load_compose(env_file_values())["services"]
    profile = env_file_values()["COMPOSE_PROFILES"]
    seen = 0
    for path, text in MARKDOWN.items():
        sections = [_section(text, title) for title in GPU_SECTIONS if f"\n## {title}\n" in text]
        rest = text
        for section in sections:
            rest = rest.replace(section, "")
        for part, gpu_part in ((rest, False), ("".join(sections), True)):
            for sub, services in _compose_commands(part):
                for service in services:
                    seen += 1
                    assert service in compose, f"{path.name}: `compose {sub} {service}`: no such service"
                    profiles = compose[service].get("profiles")
                    assert gpu_part or not profiles or profile in profiles, (
                        f"{path.name}: `compose {sub} {service}` outside the GPU sections: {service} runs only "
                        f"with the {profiles} profile, .env.example ships COMPOSE_PROFILES={profile}")
    assert seen >= 8
    assert _compose_commands("x `docker compose exec -T worker improbable health`") == [("exec", ["worker"])]
    assert _compose_commands("`docker-compose -p x logs -f --tail 5 bot beat`") == [("logs", ["bot", "beat"])]
