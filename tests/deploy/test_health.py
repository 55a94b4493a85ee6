"""`improbable health`: the compose healthchecks. Exit 0 when every check passes, 1 with a clear line
per failure otherwise; against the real local Redis and PostgreSQL."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from core import metrics
from improbable.cli import app

from .conftest import closed_port, free_port

runner = CliRunner()


def flat(text: str) -> str:
    return " ".join(text.split())


def test_health_passes_against_the_real_services(clean_env, tmp_path, redis_url, pg_url):
    clean_env.setenv("IMPROBABLE_DATABASE_URL", pg_url)
    clean_env.setenv("IMPROBABLE_BROKER_URL", redis_url)
    clean_env.setenv("IMPROBABLE_STORAGE_URL", str(tmp_path / "storage"))
    result = runner.invoke(app, ["health"], terminal_width=200)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert [line.split()[:2] for line in lines] == [["ok", "database"], ["ok", "broker"], ["ok", "storage"]]
    assert not list((tmp_path / "storage").rglob("*.probe"))  # the probe object is removed

    as_json = runner.invoke(app, ["health", "--json", "database", "broker"])
    assert as_json.exit_code == 0
    assert [(r["name"], r["ok"]) for r in json.loads(as_json.stdout)] == [("database", True), ("broker", True)]


def test_health_fails_clearly_against_a_closed_port(clean_env, tmp_path):
    port = closed_port()
    clean_env.setenv("IMPROBABLE_DATABASE_URL", f"postgresql+psycopg://improbable:pw@127.0.0.1:{port}/improbable")
    clean_env.setenv("IMPROBABLE_BROKER_URL", f"redis://127.0.0.1:{port}/0")
    clean_env.setenv("IMPROBABLE_STORAGE_URL", str(tmp_path / "storage"))
    result = runner.invoke(app, ["health", "--timeout", "2"], terminal_width=300)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = {line.split()[1]: flat(line) for line in result.stdout.splitlines()}
    assert lines["database"].startswith(f"FAIL database postgresql+psycopg://improbable:****@127.0.0.1:{port}/")
    assert "refused" in lines["database"].lower()
    assert lines["broker"].startswith(f"FAIL broker redis://127.0.0.1:{port}/0")
    assert "refused" in lines["broker"].lower()
    assert lines["storage"].startswith("ok storage")  # the others still run and report
    assert "pw@" not in result.output


def test_storage_that_cannot_be_written_fails(clean_env, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    clean_env.setenv("IMPROBABLE_STORAGE_URL", str(blocker / "storage"))
    result = runner.invoke(app, ["health", "storage"], terminal_width=300)
    assert result.exit_code == 1
    assert flat(result.stdout).startswith(f"FAIL storage {blocker / 'storage'}")


def test_no_broker_is_reported_as_skipped(clean_env, tmp_path):
    clean_env.setenv("IMPROBABLE_DATABASE_URL", f"sqlite:///{tmp_path / 'x.db'}")
    result = runner.invoke(app, ["health", "database", "broker"], terminal_width=300)
    assert result.exit_code == 0, result.output
    assert "skip broker not configured: tasks run in-process" in flat(result.stdout)


def test_migrations_check_says_what_to_run(clean_env, tmp_path):
    clean_env.setenv("IMPROBABLE_DATABASE_URL", f"sqlite:///{tmp_path / 'empty.db'}")
    result = runner.invoke(app, ["health", "migrations"], terminal_width=300)
    assert result.exit_code == 1
    assert "run `python -m db upgrade`" in flat(result.stdout)


def test_http_checks_use_the_process_endpoint(clean_env):
    port = free_port()
    metrics.start_metrics_server(port, "127.0.0.1")
    try:
        ok = runner.invoke(app, ["health", f"http://127.0.0.1:{port}/readyz"], terminal_width=300)
        assert ok.exit_code == 0, ok.output
        metrics.set_ready("celery", False)
        waiting = runner.invoke(app, ["health", f"http://127.0.0.1:{port}/readyz"], terminal_width=300)
        assert waiting.exit_code == 1
        assert "answered 503: not ready: celery" in flat(waiting.stdout)
    finally:
        metrics.stop_metrics_server()
        metrics.clear_readiness()
    down = runner.invoke(app, ["health", f"http://127.0.0.1:{closed_port()}/healthz"], terminal_width=300)
    assert down.exit_code == 1 and "refused" in down.stdout.lower()


def test_unknown_check(clean_env):
    result = runner.invoke(app, ["health", "dtabase"])
    assert result.exit_code == 1
    assert "unknown check 'dtabase'" in flat(result.output)
