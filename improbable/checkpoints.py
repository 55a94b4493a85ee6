"""What `improbable generate|evaluate|info` accept as a model: a checkpoint path or a persona's name.

A name resolves to the persona's active checkpoint in the embedded defaults' database when one is configured
(IMPROBABLE_DATABASE_URL, or the SQLite file in the data dir once `improbable chat` or the bot has made it),
else to the bundled checkpoint of that name (db/bundled/), so `improbable generate trump` works on a fresh
clone. Anything else is one line naming what exists.
"""

from __future__ import annotations

from pathlib import Path

from core.settings import Settings


class ModelNotFound(ValueError):
    """Neither a checkpoint file nor a persona; the message says what to pass instead."""


def _looks_like_a_path(text: str) -> bool:
    return "/" in text or "\\" in text or text.endswith(".safetensors") or text.startswith(".")


def _from_database(name: str, settings: Settings) -> Path | None:
    """The persona's active checkpoint as a local file, or None when the database has no such persona,
    no active checkpoint, or cannot be read (the bundled file is then the answer)."""
    if not settings.database_url and not (settings.data_dir / "improbable.db").is_file():
        return None  # nothing configured: do not create a database just to look a name up
    try:
        from db.personas import get_persona
        from db.session import make_engine, session_scope
        from db.storage import open_storage

        engine = make_engine(settings.effective_database_url)
        try:
            with session_scope(engine) as session:
                persona = get_persona(session, name, None)
                checkpoint = persona.active_checkpoint if persona else None
                key = checkpoint.storage_key if checkpoint else None
        finally:
            engine.dispose()
        if key is None:
            return None
        storage = open_storage(settings.effective_storage_url)
        local = storage.local_path(key)
        if local is not None:
            return local
        cached = settings.data_dir / "cache" / key  # remote storage: one copy per key (keys are unique)
        if not cached.is_file():
            cached.parent.mkdir(parents=True, exist_ok=True)
            cached.write_bytes(storage.get(key))
        return cached
    except Exception:  # an unreachable or unmigrated database must not stop a name the bundle can answer
        return None


def saved_run_config(out_dir: Path) -> dict:
    """The training settings of the run in out_dir ({} when there is none or it is unreadable)."""
    from core.checkpoints import CheckpointError, read_meta

    try:
        return read_meta(out_dir / "last.safetensors").get("train_config", {})
    except (CheckpointError, OSError):
        return {}


def persona_names(settings: Settings) -> list[str]:
    from db.bundled import bundled_checkpoints

    return sorted(bundled_checkpoints())


def resolve_checkpoint(name_or_path: str, settings: Settings) -> Path:
    """A checkpoint file for a path or a persona name; ModelNotFound (one line, with the names) otherwise."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    if not _looks_like_a_path(name_or_path):
        found = _from_database(name_or_path.strip().lower(), settings)
        if found is not None:
            return found
        from db.bundled import bundled_checkpoints

        bundled = bundled_checkpoints().get(name_or_path.strip().lower())
        if bundled is not None:
            return bundled
    names = ", ".join(persona_names(settings))
    raise ModelNotFound(f"{name_or_path}: no such checkpoint file or persona; pass a .safetensors path "
                        f"(e.g. runs/alice/best.safetensors) or a persona: {names}")


def training_corpus(meta: dict, settings: Settings):
    """The text a checkpoint was trained on, found from any folder: its absolute path when the file is still
    there, else its name on the corpus path, else any corpus there with the same content (sha256). Checked
    against the checkpoint's corpus_sha256, so a changed file is never scored as if it were the same split."""
    from core.text import CorpusError
    from trainer.corpus import list_corpora, load_corpus

    config = meta.get("train_config", {})
    want = meta.get("corpus_sha256")
    tried = [c for c in (config.get("corpus_path"), config.get("corpus")) if c]
    for candidate in tried:
        try:
            corpus = load_corpus(candidate, settings.corpus_dirs)
        except (CorpusError, OSError):
            continue
        if want is None or corpus.sha256 == want:
            return corpus
    for entry in list_corpora(settings.corpus_dirs) if want else []:
        try:
            corpus = load_corpus(entry.path)
        except (CorpusError, OSError):
            continue
        if corpus.sha256 == want:
            return corpus
    raise ModelNotFound(f"the checkpoint's training text ({' or '.join(tried) or 'unnamed'}) is not found with the "
                        "same content on the corpus path; pass it with --corpus PATH, or set IMPROBABLE_CORPUS_PATH")


def validation_split(meta: dict, tokenizer, corpus):
    """(token ids, characters) of the held-out part of `corpus` exactly as training split it (trainer.data's
    rebuild_split: the run's split mode and fraction, its paragraph split or, for older checkpoints, the token
    blocks or the tail), so `evaluate` reproduces the run's validation loss."""
    from trainer.data import rebuild_split

    _, val_ids, chars = rebuild_split(meta, tokenizer, corpus)
    return val_ids, chars
