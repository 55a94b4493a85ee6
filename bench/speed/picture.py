"""CPU time to draw the probability picture (bot/pictures.py), the work one Info click costs the bot.

    .venv/bin/python -m bench.speed.picture [--repeats 3]

Two texts: one word of 3,500 characters (a model stuck on one letter run; the layout used to shrink such a
word one character at a time) and a normal 2,000-character text (prose from the alice corpus on the corpus
path, else a stand-in sentence), shaded by made-up probabilities. Each is drawn `--repeats` times after one
warm-up draw (fonts loaded); the median CPU-seconds (time.process_time) is reported. Prints a table and writes
bench/results/picture.json. Target: at most 0.5 CPU-s for each.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

from bot.pictures import describe_sampling, render_picture
from core.contracts import Piece
from worker.probability import char_pieces

RESULTS = Path(__file__).resolve().parents[1] / "results"
OUT = RESULTS / "picture.json"
TARGET_CPU_SECONDS = 0.5
STAND_IN = "Alice was beginning to get very tired of sitting by her sister on the bank, and of having nothing to do. "


def prose(chars: int) -> str:
    """`chars` characters of the alice corpus when the corpus path has it, else the stand-in repeated."""
    for folder in os.environ.get("IMPROBABLE_CORPUS_PATH", "").split(os.pathsep):
        path = Path(folder) / "alice" / "alice.txt" if folder else None
        if path is not None and path.is_file():
            text = path.read_text(encoding="utf-8", errors="replace")
            return text[len(text) // 3:][:chars]
    return (STAND_IN * (chars // len(STAND_IN) + 1))[:chars]


def cases() -> dict[str, list[Piece]]:
    word = ("improbable" * 350)[:3500]
    text = prose(2000)
    probabilities = [0.9 if ch == " " else (0.02 if i % 7 == 0 else 0.6) for i, ch in enumerate(text)]
    return {"one 3,500-character word": [Piece("Once", None), Piece(" ", None), Piece(word, 1e-4, True)],
            "2,000 characters of prose": char_pieces(text, probabilities, prompt="Alice ")}


def measure(pieces: list[Piece], repeats: int) -> dict:
    title, subtitle = describe_sampling("bench", {"temperature": 0.8, "improbability": 0.01}, 7)
    picture = render_picture(pieces, title, subtitle)  # warm-up: fonts loaded and cached
    seconds = []
    for _ in range(repeats):
        started = time.process_time()
        picture = render_picture(pieces, title, subtitle)
        seconds.append(time.process_time() - started)
    return {"chars": sum(len(p.text) for p in pieces), "cpu_seconds": round(statistics.median(seconds), 4),
            "cpu_seconds_max": round(max(seconds), 4), "size": [picture.width, picture.height],
            "png_bytes": len(picture.png), "fragments": len(picture.boxes),
            "within_target": statistics.median(seconds) <= TARGET_CPU_SECONDS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    results = {name: measure(pieces, args.repeats) for name, pieces in cases().items()}
    print(f"| text | chars | CPU-s (median of {args.repeats}) | max | image | PNG bytes | ≤ {TARGET_CPU_SECONDS} s |")
    print("| --- | ---: | ---: | ---: | --- | ---: | --- |")
    for name, r in results.items():
        print(f"| {name} | {r['chars']:,} | {r['cpu_seconds']:.3f} | {r['cpu_seconds_max']:.3f} | "
              f"{r['size'][0]}×{r['size'][1]} | {r['png_bytes']:,} | {'yes' if r['within_target'] else 'NO'} |")
    RESULTS.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"target_cpu_seconds": TARGET_CPU_SECONDS, "repeats": args.repeats,
                               "cpu": platform.processor() or platform.machine(), "results": results},
                              indent=2) + "\n")
    print(f"wrote {OUT.relative_to(RESULTS.parents[1])}")


if __name__ == "__main__":
    main()
