"""Every command that docker-compose.yml runs in the Improbable image (service commands and healthchecks)
exists there: an `improbable` subcommand with valid options, `python -m bot`, `python -m db upgrade`, or
`celery -A worker.app worker|beat|flower` with options Celery accepts. The image is `pip install .` of
this project (Dockerfile), so the built wheel is checked for the modules and data files they need."""

from __future__ import annotations

import importlib
import importlib.util
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile

import click
import pytest

from .deploytools import DOCKERFILE, ROOT, command_argv, load_compose, programs

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _image_commands() -> list[tuple[str, list[str]]]:
    """(where, argv) of every program run in the Improbable image."""
    compose = load_compose({})
    image = compose["services"]["bot"]["image"]
    found = []
    for name, service in compose["services"].items():
        if service.get("image") != image:
            continue
        assert "entrypoint" not in service, f"{name}: the image's entrypoint is not overridden"
        for argv in programs(command_argv(service.get("command"))):
            found.append((f"{name}.command", argv))
        test = (service.get("healthcheck") or {}).get("test")
        if test:
            assert test[0] == "CMD", f"{name}: healthchecks of the image use the exec form"
            found.append((f"{name}.healthcheck", test[1:]))
    return found


COMMANDS = _image_commands()


def _check_improbable(args: list[str]) -> None:
    import typer.main

    from improbable.cli import app

    group = typer.main.get_command(app)
    assert args, "improbable needs a subcommand"
    name, rest = args[0], args[1:]
    assert name in group.commands, f"`improbable {name}` is not a command ({sorted(group.commands)})"
    command = group.commands[name]
    command.make_context(name, list(rest))  # raises on unknown options or bad values


def _check_python_module(args: list[str], capsys) -> None:
    assert args[0] == "-m", f"python {args}: only `python -m MODULE` runs in the image"
    module, rest = args[1], args[2:]
    top = module.split(".")[0]
    assert any(re.fullmatch(p.replace("*", ".*"), top) for p in PYPROJECT["tool"]["setuptools"]["packages"]["find"][
        "include"]), f"{module} is not part of the installed package"
    spec = importlib.util.find_spec(f"{module}.__main__") or importlib.util.find_spec(module)
    assert spec is not None, f"`python -m {module}`: no such module"
    if module == "db":
        main = importlib.import_module("db.__main__").main
        assert main(["no-such-command"]) == 2
        usage = capsys.readouterr().err
        assert rest and rest[0] in re.findall(r"\w+", usage.split("usage:")[1]), f"`python -m db {rest}`: {usage}"


def _check_celery(args: list[str]) -> None:
    from celery import Celery
    from celery.bin.base import CLIContext
    from celery.bin.celery import celery as celery_cli

    assert args[0] in ("-A", "--app"), "celery commands name the app first: celery -A worker.app ..."
    module, sub, rest = args[1], args[2], args[3:]
    app = getattr(importlib.import_module(module), "app", None)
    assert isinstance(app, Celery), f"{module} has no Celery `app`"
    if sub == "flower":
        extras = PYPROJECT["project"]["optional-dependencies"]
        assert any(d.startswith("flower") for d in extras["deploy"]), "flower must be in the deploy extra"
        assert re.search(r'pip install "?\.\[[^]]*deploy', DOCKERFILE.read_text()), "the image installs .[deploy]"
        if importlib.util.find_spec("flower") is None:
            return  # not installed in this environment (it is in the image); the extra is checked above
        from flower.options import default_options

        for option in rest:
            assert option.startswith("--") and option[2:].split("=")[0] in default_options, option
        return
    assert sub in ("worker", "beat"), f"celery {sub}: not a service command"
    parent = click.Context(celery_cli, info_name="celery",
                           obj=CLIContext(app=app, no_color=True, workdir=None, quiet=True))
    ctx = celery_cli.commands[sub].make_context(sub, list(rest), parent=parent)
    if sub == "worker":
        assert set(ctx.params["queues"]) <= {q.name for q in app.conf.task_queues}, "unknown queue"


@pytest.mark.parametrize(("where", "argv"), COMMANDS, ids=[f"{w}: {' '.join(a)}"[:70] for w, a in COMMANDS])
def test_service_command_exists_in_the_image(where, argv, capsys):
    program, args = argv[0], argv[1:]
    if program == "improbable":
        _check_improbable(args)
    elif program in ("python", "python3"):
        _check_python_module(args, capsys)
    elif program == "celery":
        _check_celery(args)
    else:
        pytest.fail(f"{where}: `{program}` is not an entry point of the image")


def test_all_services_are_covered():
    services = {where.split(".")[0] for where, _ in COMMANDS}
    assert services == {"migrate", "bot", "worker", "trainer", "worker-cpu", "trainer-cpu", "beat", "flower"}
    argvs = [" ".join(argv) for _, argv in COMMANDS]
    assert "python -m db upgrade" in argvs and "improbable bot --wait-without-token" in argvs
    assert any(a.startswith("celery -A worker.app worker -Q generate") for a in argvs)
    assert any(a.startswith("celery -A worker.app worker -Q train") for a in argvs)
    assert any(a.startswith("celery -A worker.app beat") for a in argvs)
    assert any(a.startswith("celery -A worker.app flower") for a in argvs)


def test_a_wrong_command_is_caught():
    with pytest.raises(Exception, match="No such option"):  # typer's click, or click's own
        _check_improbable(["health", "--no-such-option"])
    with pytest.raises(AssertionError):
        _check_improbable(["serve-everything"])
    with pytest.raises(click.UsageError):
        _check_celery(["-A", "worker.app", "worker", "--pool", "fibers"])


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """The wheel `pip install .` builds in the image, from a copy of the sources (no build/ left here)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for package in ("improbable", "core", "service", "trainer", "worker", "bot", "db"):
        shutil.copytree(ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    code = "import sys; from setuptools import build_meta as b; print(b.build_wheel(sys.argv[1]))"
    done = subprocess.run([sys.executable, "-c", code, str(tmp / "dist")], cwd=src, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    with zipfile.ZipFile(tmp / "dist" / done.stdout.strip().splitlines()[-1]) as zf:
        return {name: zf.read(name) if name.endswith("entry_points.txt") else b"" for name in zf.namelist()}


def test_the_wheel_has_what_the_services_run(wheel):
    names = set(wheel)
    for needed in ("bot/__main__.py", "db/__main__.py", "db/migrations/env.py", "db/migrations/script.py.mako",
                   "worker/app.py", "worker/signals.py", "improbable/cli.py", "core/metrics.py",
                   "improbable/health.py"):
        assert needed in names, f"{needed} is missing from the wheel"
    assert any(re.fullmatch(r"db/migrations/versions/\w+\.py", n) for n in names), "no migration in the wheel"
    assert any(re.fullmatch(r"trainer/recipes/[\w-]+\.json", n) for n in names), "no recipe in the wheel"
    entry_points = next(v for k, v in wheel.items() if k.endswith("entry_points.txt")).decode()
    assert re.search(r"^improbable\s*=\s*improbable\.cli:app$", entry_points, re.M), entry_points


def test_dockerfile_builds_one_image_for_every_service():
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert re.search(r"^ARG TORCH_VARIANT=cuda$", text, re.M), "CUDA PyTorch is the default"
    assert "cpu|" in text and "download.pytorch.org/whl" in text, "a CPU build argument"
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0"), "the services run as an unprivileged user"
    for pattern in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]:
        package = pattern.rstrip("*")
        assert re.search(rf"^COPY {package} ", text, re.M), f"the image does not copy {package}/"
    assert re.search(r'pip install "\.\[[^]]*deploy', text)
    dockerignore = (ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    for excluded in (".git", ".venv", ".env", "secrets"):
        assert excluded in dockerignore, f".dockerignore should exclude {excluded}"
