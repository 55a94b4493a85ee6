"""Peak memory of the real bot process taking a large upload.

    .venv/bin/python -m bench.speed.upload_memory [--sizes 10 50 100]

Starts the fake Discord from tests/bot, its own redis-server (a queue no trainer listens to: the upload is
ingested and its run queued, nothing trains), a migrated SQLite database whose guild allows 100 MB, and the
real bot (`python -m bot`). Each size is a `/persona create` with one .txt attachment of that many MB of
public-domain prose (the base corpus on the corpus path, repeated), sent in increasing order; after each the bot's
VmHWM (peak resident memory, from /proc) is read. Prints a table and writes
bench/results/upload_memory.json. Target: the bot's peak ≤ 1 GB at the hard cap (core.text.HARD_MAX_BYTES,
100 MB), i.e. memory bounded by a small multiple of the largest upload any setting allows; the growth over
the idle bot as a multiple of the upload is printed beside it. (Python holds the text as 1, 2 or 4 bytes per
character, so prose with curly quotes costs twice its UTF-8 size once decoded.)
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from bench.common import RESULTS, corpus_dirs, corpus_file
from tests.bot.conftest import clean_env, guild_limits, start_bot, start_redis
from tests.bot.fake_discord import FakeDiscord, opt

OUT = RESULTS / "upload_memory.json"
TARGET_PEAK_MB = 1000  # the bot's peak resident memory with an upload at the hard cap


def prose(n_bytes: int) -> bytes:
    books = sorted(corpus_file("base").glob("*.txt"))
    out, size = [], 0
    while size < n_bytes:
        for book in books:
            data = book.read_bytes()
            out.append(data)
            size += len(data)
            if size >= n_bytes:
                break
    data = b"".join(out)[:n_bytes]
    return data[:data.rfind(b"\n") + 1]


def cancel_runs(database_url: str) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(database_url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE training_runs SET status = 'cancelled' WHERE status = 'queued'"))
    engine.dispose()


def status_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[10, 50, 99.9], help="MB, in increasing order")
    args = parser.parse_args()
    import db

    base = Path(tempfile.mkdtemp(prefix="upload-memory-"))
    database_url = f"sqlite:///{base / 'improbable.db'}"
    db.upgrade(database_url)
    fake = FakeDiscord().start()
    redis_proc, redis_url = start_redis(base, "redis")
    guild_limits(database_url, fake.guild_id, cooldown_seconds=0, train_cooldown_seconds=0,
                 max_upload_bytes=100_000_000, trainer_role_id=fake.trainer_role)
    env = clean_env(IMPROBABLE_DATABASE_URL=database_url, IMPROBABLE_STORAGE_URL=str(base / "storage"),
                    IMPROBABLE_DATA_DIR=str(base / "data"), IMPROBABLE_BROKER_URL=redis_url,
                    IMPROBABLE_CORPUS_PATH=os.pathsep.join(map(str, corpus_dirs())), DISCORD_TOKEN="fake-token", DISCORD_API_BASE=fake.api_base)
    bot = start_bot(fake, env, base, "bot")
    rows = []
    try:
        time.sleep(2)
        idle = status_mb(bot.proc.pid, "VmHWM")
        print(f"bot idle: peak {idle:.0f} MB")
        for i, mb in enumerate(args.sizes):
            data = prose(int(mb * 1e6))
            att_id, att = fake.attachment(f"big{i}.txt", data)
            started = time.monotonic()
            ix = fake.slash("persona create", [opt("name", f"big{i}"), opt("file", att_id, 11)], user=fake.owner,
                            resolved={"attachments": {att_id: att}})

            def answered(ix=ix):
                ids = [ix.original_id, *ix.followups]
                texts = [(m or {}).get("content", "") for m in map(fake.message, ids)]
                return next((t for t in texts if t and ("Training" in t or "cannot" in t or "limit" in t)), None)

            reply = fake.wait_for(answered, 300, f"the answer to a {mb} MB upload")
            if "Training" not in reply:
                raise SystemExit(f"the {mb} MB upload was refused: {reply}")
            took = time.monotonic() - started
            peak = status_mb(bot.proc.pid, "VmHWM")
            rows.append({"upload_mb": round(len(data) / 1e6, 1), "bot_peak_mb": round(peak),
                         "growth_mb": round(peak - idle), "growth_x": round((peak - idle) / (len(data) / 1e6), 2),
                         "seconds": round(took, 1), "reply": reply[:80]})
            del data
            cancel_runs(database_url)  # one queued run per member: the next upload is not refused for it
    finally:
        bot.stop()
        redis_proc.stop()
        fake.stop()
    print(f"\n| upload MB | bot peak MB (target ≤ {TARGET_PEAK_MB} at the cap) | growth over idle ({idle:.0f} MB) "
          f"| growth × upload | s |")
    print("|---|---|---|---|---|")
    for r in rows:
        ok = "" if r["upload_mb"] < 99 else (" met" if r["bot_peak_mb"] <= TARGET_PEAK_MB else " MISSED")
        print(f"| {r['upload_mb']} | {r['bot_peak_mb']}{ok} | {r['growth_mb']} | {r['growth_x']} | {r['seconds']} |")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    from trainer.precision import cpu_model

    OUT.write_text(json.dumps({"idle_mb": round(idle), "target_peak_mb_at_cap": TARGET_PEAK_MB, "rows": rows,
                                   "cpu": cpu_model()}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
