"""`improbable chat`: the bot's commands in a terminal, on the embedded defaults (no broker: jobs run
in-process), as a newcomer would run it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import db

from .conftest import CORPORA, clean_env, install_checkpoint

IMPROBABLE = str(Path(sys.executable).with_name("improbable"))


@pytest.fixture
def console_env(tmp_path, tiny_model):
    url = f"sqlite:///{tmp_path / 'data' / 'improbable.db'}"
    db.upgrade(url)
    install_checkpoint(url, tmp_path / "data" / "storage", tiny_model)
    return clean_env(IMPROBABLE_DATA_DIR=str(tmp_path / "data"), IMPROBABLE_CORPUS_PATH=str(CORPORA),
                     IMPROBABLE_TORCH_THREADS="1")


def chat(env: dict, *lines: str, status: int = 0) -> str:
    """The output of `improbable chat -c LINE ...`, which exits 1 when a command failed."""
    args = [IMPROBABLE, "chat"] + [a for line in lines for a in ("-c", line)]
    out = subprocess.run(args, capture_output=True, text=True, env={**env, "COLUMNS": "200"}, timeout=120,
                         cwd=Path(env["IMPROBABLE_DATA_DIR"]).parent)
    assert out.returncode == status, out.stdout + out.stderr
    return out.stdout


@pytest.mark.slow
def test_console_chat_runs_the_bot_commands(console_env):
    out = chat(console_env, "/personas", "/generate alice Alice was --length 40 --seed 3",
               "/generate alice Alice was --length 40 --seed 3", "/regenerate", "/more", "/continue and so",
               "alice: Down the hole", "/generate alcie x", "/persona info alice", "/train status",
               "/schedule list", "/nonsense", "/generate", "/quit", "/personas", status=1)
    lines = out.splitlines()
    assert any(line.startswith("alice") and "ready" in line for line in lines)
    assert any(line.startswith("harry-potter") and "no model yet" in line for line in lines)
    texts = [lines[i + 1] for i, line in enumerate(lines) if line.startswith("Alice ·") and line.endswith("seed 3")]
    assert len(texts) == 2 and texts[0] == texts[1] and texts[0].startswith("Alice was")  # same seed, same text
    assert "improbability 0.1" in out and "target 0.1" in out and "Down the hole" in out
    assert "Did you mean alice?" in out  # Discord's markdown as plain text
    assert "`alice`" not in out
    assert "checkpoint" in out and "validation loss 3.100" in out and "Alice was here." in out
    assert "nothing is training" in out and "Discord" in out and "unknown command /nonsense" in out
    assert "usage" in out  # /generate without a persona
    assert sum(line.startswith("harry-potter") for line in lines) == 1  # nothing runs after /quit


@pytest.mark.slow
def test_console_joins_a_word_model_s_prompt_and_completion(console_env):
    """The bundled movie-reviews model: "this movie was" + "so bad" reads "this movie was so bad", never
    "this movie wasso bad", and `<unk>` is never shown, even for a prompt with words it never saw."""
    out = chat(console_env, "/generate movie-reviews this movie was --length 12 --seed 1",
               "/generate movie-reviews this movie was --length 12 --seed 2",
               "/generate movie-reviews this zzqxv movie was --length 12 --seed 3")
    texts = [line for line in out.splitlines() if line.startswith("this ")]
    assert len(texts) == 3, out
    for line in texts:
        assert not re.match(r"this movie was[A-Za-z0-9]", line), line
        assert re.match(r"this (zzqxv )?movie was[ ,.!?;:'\"]", line), line
    assert "<unk>" not in out and "zzqxv" in out


@pytest.mark.slow
def test_a_failed_command_exits_non_zero(console_env):
    """Scripts can rely on the exit status: 1 after any failed -c command, 0 when all worked."""
    assert "unknown command /nonsense" in chat(console_env, "/personas", "/nonsense", status=1)
    assert "alice" in chat(console_env, "/personas")


@pytest.mark.slow
def test_console_operator_tools(console_env):
    """The console is the operator: servers and reports as plain text, a disabled persona refused until it
    is enabled again, a server blocked (its data purged) and unblocked."""
    from db.models import Report

    url = f"sqlite:///{Path(console_env['IMPROBABLE_DATA_DIR']) / 'improbable.db'}"
    chat(console_env, "/generate alice Zebra quartz --length 20 --seed 3")
    engine = db.make_engine(url)
    try:
        with db.session_scope(engine) as session:
            gen = session.query(db.Generation).one()
            session.add(Report(reporter_id=77, guild_id=4242, generation_id=gen.id, persona_slug="alice",
                               text=gen.prompt + gen.output, reason="Rude **words**"))
    finally:
        engine.dispose()

    out = chat(console_env, "/operator servers", "/operator reports", "/operator disable-persona alice",
               "/generate alice Not now --length 5", "/operator enable-persona alice",
               "/generate alice Again --length 5", "/operator block-server 4242", "/operator servers",
               "/operator reports --all", "/operator unblock-server 4242", "/operator unblock-server 4242",
               "/operator disable-persona nobody", status=1)
    lines = out.splitlines()
    assert "4242 ?: personas none; 0 uploads, 0 texts, 0 bytes, 1 open reports" in lines
    assert any(line.startswith("#1 ") and "open, server 4242, by 77, persona alice" in line
               and line.endswith("Rude **words**") for line in lines)
    assert "  Zebra quartz" in out
    assert "alice is disabled" in lines and "alice is enabled again" in lines
    assert "! alice has been disabled by the bot's operator and cannot be used." in lines  # plain, no backticks
    assert "Not now" not in out and any(line.startswith("Again") for line in lines)
    assert "server 4242 is blocked: 0 personas and 0 texts purged." in out
    assert "4242 ? BLOCKED: personas none; 0 uploads, 0 texts, 0 bytes, 0 open reports" in lines
    assert "no reports" in lines  # the blocked server's report was purged with it
    assert "server 4242 is unblocked" in lines and "server 4242 is not blocked" in lines
    assert sum(line.startswith("! ") for line in lines) == 2  # the disabled persona, the unknown one
