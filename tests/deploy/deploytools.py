"""Helpers of the deployment tests: read docker-compose.yml as Compose does (YAML, then `${VAR}`
interpolation), read .env files, and split service commands into the programs they run."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "Dockerfile"
SCHEMA_FILE = Path(__file__).resolve().parent / "compose-spec.json"

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class InterpolationError(ValueError):
    pass


def _closing_brace(text: str, start: int) -> int:
    """Index of the `}` that closes the `${` whose body starts at `start` (nested `${...}` allowed)."""
    depth, i = 1, start
    while i < len(text):
        if text.startswith("$$", i):
            i += 2
            continue
        if text.startswith("${", i):
            depth += 1
            i += 2
            continue
        if text[i] == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise InterpolationError(f"unclosed ${{ in {text!r}")


def interpolate(text: str, env: dict[str, str], used: set[str] | None = None) -> str:
    """Compose's interpolation: $$, $VAR, ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error},
    ${VAR?error}, ${VAR:+alt}, ${VAR+alt}, with nested expressions in defaults."""
    out, i = [], 0
    while i < len(text):
        if text.startswith("$$", i):
            out.append("$")
            i += 2
        elif text.startswith("${", i):
            end = _closing_brace(text, i + 2)
            body = text[i + 2:end]
            m = _NAME.match(body)
            if not m:
                raise InterpolationError(f"bad variable in {text!r}")
            name, rest = m.group(), body[m.end():]
            if used is not None:
                used.add(name)
            value = env.get(name)
            if rest == "":
                out.append(value or "")
            elif rest.startswith((":-", "-")):
                default = rest[2:] if rest.startswith(":-") else rest[1:]
                empty = value is None or (rest.startswith(":-") and value == "")
                out.append(interpolate(default, env, used) if empty else value)
            elif rest.startswith((":?", "?")):
                message = rest[2:] if rest.startswith(":?") else rest[1:]
                if value is None or (rest.startswith(":?") and value == ""):
                    raise InterpolationError(f"{name}: {message}")
                out.append(value)
            elif rest.startswith((":+", "+")):
                alt = rest[2:] if rest.startswith(":+") else rest[1:]
                present = value is not None and (value != "" or rest.startswith("+"))
                out.append(interpolate(alt, env, used) if present else "")
            else:
                raise InterpolationError(f"bad expression ${{{body}}}")
            i = end + 1
        elif text[i] == "$" and (m := _NAME.match(text, i + 1)):
            if used is not None:
                used.add(m.group())
            out.append(env.get(m.group(), ""))
            i = m.end()
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _walk(node, fn):
    if isinstance(node, dict):
        return {k: _walk(v, fn) for k, v in node.items()}
    if isinstance(node, list):
        return [_walk(v, fn) for v in node]
    if isinstance(node, str):
        return fn(node)
    return node


def raw_compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))


def compose_variables() -> set[str]:
    """Every variable docker-compose.yml interpolates."""
    used: set[str] = set()
    _walk(raw_compose(), lambda s: interpolate(s, {}, used))
    return used


def load_compose(env: dict[str, str] | None = None) -> dict:
    """docker-compose.yml as Compose sees it: YAML (anchors and `<<` merges resolved), then variables
    interpolated from `env`; top-level `x-` extension fields are kept (the schema allows them)."""
    env = env or {}
    return _walk(raw_compose(), lambda s: interpolate(s, env))


ENV_LINE = re.compile(r"^\s*(#\s*)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$")


def env_file_entries(path: Path = ENV_EXAMPLE) -> list[tuple[str, str, bool]]:
    """(name, value, commented_out) of every `NAME=value` line, commented-out ones included."""
    entries = []
    for line in path.read_text(encoding="utf-8").splitlines():
        m = ENV_LINE.match(line)
        if m:
            entries.append((m.group(2), m.group(3), bool(m.group(1))))
    return entries


def env_file_values(path: Path = ENV_EXAMPLE) -> dict[str, str]:
    """The variables a copy of the file sets (uncommented lines), as Compose reads a .env file."""
    values = {}
    for name, value, commented in env_file_entries(path):
        if not commented:
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            values[name] = value
    return values


def command_argv(command) -> list[str]:
    """A compose `command` / `test` (list, or string in shell form) as one argv list."""
    if command is None:
        return []
    return list(command) if isinstance(command, list) else shlex.split(command)


def programs(argv: list[str]) -> list[list[str]]:
    """The programs an argv runs: itself, or each command of `sh -c "a && exec b"`."""
    if len(argv) >= 3 and argv[0] in ("sh", "bash", "/bin/sh", "/bin/bash") and argv[1] == "-c":
        result = []
        for part in re.split(r"&&|\|\||;", argv[2]):
            words = shlex.split(part)
            while words and words[0] in ("exec", "command"):
                words = words[1:]
            if words:
                result.append(words)
        return result
    return [argv]
