"""`/voice me` end to end on a realistic data package: how long a member waits for their voice, and what it says.

A ~100 KB Discord data-package .zip of one member is built from a chatty source: the dialogue of a novel on the
corpus path (Anne of Green Gables), split into short messages, spread over three channels of this server, two of
another server and a DM (newer channels as messages.json, an older one as messages.csv; a few mentions, links,
custom emoji and attachment-only messages, as real packages have). It then goes the way `/voice me
this_server_only:true` goes (bot/voice.py): the upload check, parsing, ingesting and the queued run
(service.voices), the run trained in-process as the embedded default does (Celery's eager mode,
worker.app.enqueue of improbable.train) with the recipe's default budget, the quality gate, and the voice ready.
Then three samples through improbable.generate (temperature 0.8, seeds 0-2, 300 characters, prompt "I think"),
each with the longest run of characters it shares with the text the voice was trained on.

    IMPROBABLE_CORPUS_PATH=/work/shared/corpora python -m bench.quality.voice_me

Uses a fresh SQLite database and storage in a temporary folder. Writes bench/results/voice_me.json.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import platform
import random
import re
import tempfile
import time
import zipfile
from contextlib import contextmanager
from datetime import datetime, timedelta

from bench.common import RESULTS, corpus_file, print_table

GUILD, OTHER_GUILD, MEMBER, CHANNEL = 4100, 4200, 777, 41
SOURCE_BOOK = "45-anne-of-green-gables.txt"
QUOTE = re.compile(r"“([^”]{2,800})”")
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
TITLES = ("Mr.", "Mrs.", "Dr.", "St.", "Mme.")
# (channel id, server, name, share of the messages, format)
CHANNELS = [(41, GUILD, "general", 0.30, "json"), (42, GUILD, "books", 0.14, "json"),
            (43, GUILD, "off-topic", 0.12, "csv"), (51, OTHER_GUILD, "chat", 0.18, "json"),
            (52, OTHER_GUILD, "memes", 0.08, "json"), (61, None, "Direct Message with gilbert#0001", 0.18, "json")]
NOISE = ["<@123456789012345678> ", "<:sparkle:998877665544332211> ", " https://example.org/p/42", " <t:1700000000:R>"]


def chat_lines(book: str, seed: int = 0) -> list[str]:
    """The book's dialogue as chat messages: each quoted speech on one line, long ones cut into one to three
    sentences, the odd one lower-cased without its full stop, as people type."""
    rng = random.Random(seed)
    out = []
    for match in QUOTE.finditer(book):
        speech = " ".join(match.group(1).split()).replace("--", " - ").strip(" ,")
        sentences = []
        for part in SENTENCE_END.split(speech):  # "Mrs. Lynde" is one sentence
            if sentences and sentences[-1].endswith(TITLES):
                sentences[-1] += " " + part
            elif part:
                sentences.append(part)
        while sentences:
            take = rng.choice((1, 1, 2, 3))
            line, sentences = " ".join(sentences[:take]), sentences[take:]
            if rng.random() < 0.15:
                line = line[:1].lower() + line[1:].rstrip(".")
            out.append(line)
    return out


def build_package(lines: list[str], target_bytes: int, seed: int = 0) -> tuple[bytes, int]:
    """A package .zip of about `target_bytes`: the lines in order, dealt to the channels by their shares."""
    rng = random.Random(seed)
    for n in range(2000, len(lines) + 1, 250):
        data = _zip(lines[:n], rng=random.Random(seed))
        if len(data) >= target_bytes:
            return data, n
    return _zip(lines, rng=rng), len(lines)


def _zip(lines: list[str], rng: random.Random) -> bytes:
    per_channel: dict[int, list[dict]] = {c[0]: [] for c in CHANNELS}
    when = datetime(2023, 3, 1, 9, 0)
    ids = iter(range(1_080_000_000_000_000_000, 2_000_000_000_000_000_000, 7919))
    weights = [c[3] for c in CHANNELS]
    for line in lines:
        when += timedelta(minutes=rng.randint(1, 240))
        text, attachment = line, ""
        r = rng.random()
        if r < 0.03:
            text = rng.choice(NOISE[:2]) + text
        elif r < 0.05:
            text = text + rng.choice(NOISE[2:])
        elif r < 0.06:
            text, attachment = "", "https://cdn.discordapp.com/attachments/1/2/image.png"
        cid = rng.choices([c[0] for c in CHANNELS], weights)[0]
        per_channel[cid].append({"ID": next(ids), "Timestamp": when.strftime("%Y-%m-%d %H:%M:%S"),
                                 "Contents": text, "Attachments": attachment})
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("package/messages/index.json", json.dumps(
            {str(c[0]): c[2] if c[1] is None else f"{c[2]} in {'Here' if c[1] == GUILD else 'There'}"
             for c in CHANNELS}))
        for cid, guild, name, _, kind in CHANNELS:
            info = {"id": str(cid), "type": 1 if guild is None else 0, "name": name}
            if guild is not None:
                info["guild"] = {"id": str(guild), "name": "Here" if guild == GUILD else "There"}
            z.writestr(f"package/messages/c{cid}/channel.json", json.dumps(info))
            rows = per_channel[cid]
            z.writestr(f"package/messages/c{cid}/messages.{kind}", _csv(rows) if kind == "csv" else json.dumps(rows))
        z.writestr("package/account/user.json", json.dumps({"id": str(MEMBER), "username": "anne"}))
    return buf.getvalue()


def _csv(rows: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, ["ID", "Timestamp", "Contents", "Attachments"])
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def longest_copy(sample: str, source: str) -> tuple[int, str]:
    """The longest run of `sample`'s characters that occurs in `source` as it is, and that run."""
    best, best_at, start, length = 0, 0, 0, 0
    while start + length < len(sample):
        if sample[start:start + length + 1] in source:
            length += 1
            if length > best:
                best, best_at = length, start
        else:
            start += 1
            length = max(0, length - 1)
    return best, sample[best_at:best_at + best]


@contextmanager
def timed_gate(seconds: list[float]):
    """Add the quality gate's time (opening it: the held-out split and the base's loss; judging the candidate)
    to `seconds`, by wrapping the two functions the run calls."""
    import trainer.gate
    import worker.training

    def wrap(owner, name):
        original = getattr(owner, name)

        def timed(*args, **kwargs):
            t = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                seconds.append(time.perf_counter() - t)
        setattr(owner, name, timed)
        return original

    opened, judged = wrap(trainer.gate, "open_gate"), wrap(worker.training, "_judge")
    try:
        yield
    finally:
        trainer.gate.open_gate, worker.training._judge = opened, judged


def _environment(folder: str) -> None:
    os.environ.update({"IMPROBABLE_DATABASE_URL": f"sqlite:///{folder}/improbable.db",
                       "IMPROBABLE_STORAGE_URL": f"{folder}/storage", "IMPROBABLE_DATA_DIR": f"{folder}/data",
                       "IMPROBABLE_BROKER_URL": ""})
    import db
    from core.settings import get_settings

    get_settings.cache_clear()
    db.upgrade(os.environ["IMPROBABLE_DATABASE_URL"])


def voice_me(package: bytes) -> dict:
    """`/voice me this_server_only:true` with the default budget, trained in-process; the numbers."""
    import service.quotas
    import service.voices
    from db import TrainingRun, session_scope
    from service.policy import Actor, policy
    from trainer.recipes import load_recipe
    from worker.app import enqueue

    actor = Actor(MEMBER, GUILD, CHANNEL)
    gate: list[float] = []
    started = time.perf_counter()
    service.voices.check_voice_upload(actor, [len(package)], None)
    text = service.voices.voice_text(package, "package.zip", GUILD, policy(GUILD).max_upload_bytes)
    new = service.voices.train_voice(actor, "Anne", text, None)
    service.quotas.record_training(GUILD, None)
    ingested = time.perf_counter()
    with timed_gate(gate):
        run = enqueue("improbable.train", new.run_id).get()
    done = time.perf_counter()
    view = service.voices.show_voice(actor)
    with session_scope() as session:
        trained = session.get(TrainingRun, new.run_id)
        config = {"recipe": trained.recipe, "recipe_minutes": load_recipe(trained.recipe).get("minutes"),
                  "overrides": trained.config}
    metrics = {k: v for k, v in run.items() if k != "sample"}  # the run's summary: its metrics, flat
    return {"actor": actor, "slug": new.persona_slug, "text": text.text, "kept": text.kept, "read": text.read,
            "parse_ingest_s": ingested - started, "run_s": done - ingested, "gate_s": sum(gate),
            "total_s": done - started, "ready": view.ready, "status": run.get("status"), "metrics": metrics,
            "overrides": config}


def samples(slug: str, actor, source: str, n: int = 3) -> list[dict]:
    import service.generation
    from core.contracts import GenerateResult
    from worker.app import enqueue

    out = []
    for seed in range(n):
        prepared = service.generation.prepare_generation(
            slug, "I think", actor, {"temperature": 0.8, "max_tokens": 300, "seed": seed})
        result = GenerateResult.model_validate(enqueue("improbable.generate", prepared.payload).get())
        length, run = longest_copy(result.full_text, source)
        out.append({"seed": seed, "text": result.full_text, "chars": len(result.text), "longest_copied": length,
                    "copied": run})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package-kb", type=float, default=100)
    args = parser.parse_args()
    from trainer.precision import cpu_model

    load_start = os.getloadavg()
    book = (corpus_file("base") / SOURCE_BOOK).read_text(encoding="utf-8")
    package, n_lines = build_package(chat_lines(book), int(args.package_kb * 1000))
    with tempfile.TemporaryDirectory() as folder:
        _environment(folder)
        r = voice_me(package)
        written = samples(r["slug"], r["actor"], r["text"]) if r["ready"] else []
    m = r["metrics"]
    row = {"package_kb": round(len(package) / 1000, 1), "messages_read": r["read"], "kept_this_server": r["kept"],
           "corpus_bytes": len(r["text"].encode("utf-8")), "parse_ingest_s": round(r["parse_ingest_s"], 2),
           "training_s": round(r["run_s"] - r["gate_s"], 1), "train_loop_s": m.get("elapsed"),
           "gate_s": round(r["gate_s"], 1), "call_to_ready_s": round(r["total_s"], 1), "steps": m.get("steps"),
           "promoted": m.get("promoted"), "ready": r["ready"]}
    print_table("/voice me this_server_only on a data package, default budget, in-process", [row])
    print(f"\ngate: {m.get('gate')}  losses: {m.get('gate_losses')}")
    print_table('samples: temperature 0.8, 300 characters, prompt "I think"',
                [{k: v for k, v in s.items() if k != "text"} for s in written])
    for s in written:
        print(f"\n--- seed {s['seed']} (longest copied run {s['longest_copied']} chars) ---\n{s['text']}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "voice_me.json").write_text(json.dumps({
        "machine": {"platform": platform.platform(), "cpu": cpu_model(), "cpus": os.cpu_count(),
                    "python": platform.python_version(), "load_average_at_start": load_start,
                    "load_average_at_end": os.getloadavg()},
        "source": f"base/{SOURCE_BOOK}: dialogue split into {n_lines} chat messages",
        "run": {"status": r["status"], "config": r["overrides"], "stop_reason": m.get("stop_reason"),
                "val_loss": m.get("val_loss"), "gate": m.get("gate"), "gate_losses": m.get("gate_losses")},
        "row": row, "samples": written}, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
