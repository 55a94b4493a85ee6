"""scripts/docker-entrypoint.sh, the image's entry point: refuses to start a service with an empty or
placeholder password (run here with /bin/sh, as in the image), and otherwise runs the command unchanged."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from .deploytools import ROOT

ENTRYPOINT = ROOT / "scripts" / "docker-entrypoint.sh"
GOOD = "3f1c0d9e8b7a6f5e4d3c2b1a"
FLOWER = ["celery", "-A", "worker.app", "flower", "--port=5555"]


def _run(env: dict[str, str], argv: list[str] | None = None) -> subprocess.CompletedProcess:
    argv = argv or ["echo", "started", "--with", "args"]
    if argv[0] == "celery":  # stand-in for Celery: prints its arguments
        argv = ["sh", "-c", 'echo "started $*"', "celery", *argv[1:]]
    return subprocess.run(["/bin/sh", str(ENTRYPOINT), *argv], env={"PATH": os.environ["PATH"], **env},
                          capture_output=True, text=True, timeout=30)


def _refused(done: subprocess.CompletedProcess, words: str) -> None:
    assert done.returncode == 64, (done.returncode, done.stdout, done.stderr)
    assert "started" not in done.stdout
    assert "refusing to start" in done.stderr and words in done.stderr
    assert "init-env.sh" in done.stderr  # says what to do


def test_runs_the_command_with_real_passwords():
    done = _run({"POSTGRES_PASSWORD": GOOD,
                 "IMPROBABLE_DATABASE_URL": f"postgresql+psycopg://improbable:{GOOD}@postgres:5432/improbable",
                 "IMPROBABLE_BROKER_URL": "redis://redis:6379/0"})
    assert done.returncode == 0, done.stderr
    assert done.stdout == "started --with args\n" and done.stderr == ""


def test_embedded_defaults_need_no_password():
    assert _run({}).returncode == 0
    assert _run({"IMPROBABLE_DATABASE_URL": "sqlite:////data/improbable.db"}).returncode == 0


@pytest.mark.parametrize("name", ["POSTGRES_PASSWORD", "PGPASSWORD"])  # PGPASSWORD: libpq's, set by compose
@pytest.mark.parametrize("password", ["change-me", "CHANGE-ME", "changeme", "", "short", "password", "improbable"])
def test_placeholder_postgres_password_is_refused(name, password):
    _refused(_run({name: password}), name)
    assert _run({name: GOOD}).returncode == 0


@pytest.mark.parametrize("url", ["postgresql+psycopg://improbable:change-me@postgres:5432/improbable",
                                 "postgresql+psycopg://improbable:@postgres:5432/improbable",
                                 "postgresql://u:<password>@db.example:5432/improbable"])
def test_placeholder_in_the_database_url_is_refused(url):
    _refused(_run({"IMPROBABLE_DATABASE_URL": url}), "IMPROBABLE_DATABASE_URL")


def test_placeholder_in_the_broker_url_is_refused():
    _refused(_run({"IMPROBABLE_BROKER_URL": "redis://:change-me@redis:6379/0"}), "IMPROBABLE_BROKER_URL")
    assert _run({"IMPROBABLE_RESULT_BACKEND": f"redis://:{GOOD}@redis:6379/1"}).returncode == 0


@pytest.mark.parametrize(("auth", "words"), [(None, "FLOWER_BASIC_AUTH is not set"),
                                              ("", "FLOWER_BASIC_AUTH is not set"),
                                              ("admin:change-me", "placeholder"),
                                              (f"admin:{GOOD},guest:guest", "placeholder"),
                                              ("admin", "user:password")])
def test_flower_needs_a_real_login(auth, words):
    env = {} if auth is None else {"FLOWER_BASIC_AUTH": auth}
    _refused(_run(env, FLOWER), words)


def test_flower_starts_with_a_real_login_and_other_services_do_not_need_one():
    done = _run({"FLOWER_BASIC_AUTH": f"admin:{GOOD},ops:{GOOD[::-1]}"}, FLOWER)
    assert done.returncode == 0 and done.stdout.startswith("started -A worker.app flower"), done.stderr
    assert _run({}, ["echo", "started", "worker"]).returncode == 0


@pytest.mark.skipif(shutil.which("dash") is None, reason="dash (Debian's /bin/sh) is not installed")
def test_runs_under_dash_and_bash_alike():
    for shell in ("dash", "bash"):
        done = subprocess.run([shell, str(ENTRYPOINT), "true"], env={"PATH": os.environ["PATH"],
                              "POSTGRES_PASSWORD": "change-me"}, capture_output=True, text=True, timeout=30)
        assert done.returncode == 64, (shell, done.stderr)
