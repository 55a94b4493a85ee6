"""Quality report for the bundled personas: a markdown table (bench/results/quality_report.md) + JSON.

    .venv/bin/python -m bench.quality.quality_report               # every checkpoint in db/bundled/
    .venv/bin/python -m bench.quality.quality_report runs/x/best.safetensors
    .venv/bin/python -m bench.quality.quality_report --skip-loss   # only the generation measures (faster)

Per persona: held-out loss (its own training run's held-out split, rebuilt by trainer.data.rebuild_split); for
word models, the same
held-out tokens scored by an interpolated Kneser–Ney trigram trained on the same training tokens
(bench/quality/kneser_ney.py; target: the model's perplexity ≥ 15 % lower); originality, the share of
20-character windows of generated text that are found verbatim in the corpus (reported); and the
improbability drive:

- real-word rate (char personas): the share of generated alphabetic words (600-character completions of
  "The " with seeds 0-5, what a reader sees; the last word left out when the length limit cut it) that
  occur at least twice in the persona's corpus or in the base corpus (case-insensitive), with pure sampling
  at temperature 0.8 (target ≥ 0.97) and at improbability 0.05 (target ≥ 0.92);
- distinct texts among 6 seeds at improbability 0.05 (target 6);
- calibration at p = 0.5, 0.1, 0.01: over every improbability pick of 6 seeds (whole words for char
  personas, tokens for word personas), the median of realised probability / p (target in [0.5, 2] at
  p = 0.1 and 0.01) and the share of picks within a factor of 2 of p (reported);
- speed: characters (tokens) per CPU second of batch-1 generation on one thread, plain (T = 0.8) and
  with the drive (p = 0.05).

Every target is printed next to its measured figure, missed ones marked. Rows that other benchmarks
write to bench/results/finetune.json and bench/results/word_models.json ({"rows": [{metric, target,
measured, ok}]}) are printed too, when those files exist.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
import time
from collections import Counter
from functools import cache
from pathlib import Path

import torch

from bench.common import RESULTS, ROOT, corpus_dirs, load_corpus
from bench.quality.kneser_ney import KneserNeyTrigram
from core.contracts import SamplingParams
from core.text import originality
from trainer import checkpoint as ckpt
from trainer.data import TokenStreams, rebuild_split
from trainer.evaluate import evaluate
from trainer.sample import generate

TARGETS = (0.5, 0.1, 0.01)
PROMPTS = ["The", "I", "And then", "When", "She"]
SEEDS = range(6)
DRIVE_PROMPT = "The "  # ends at a word boundary, so the drive chooses from the first word on
RATE_CHARS, CALIBRATION_CHARS, CALIBRATION_WORD_TOKENS = 600, 300, 100
WORD_RE = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)*")  # alphabetic words, inner apostrophes kept
EXTERNAL = ("finetune.json", "word_models.json")  # rows written by other benchmarks


def report_one(path: Path, skip_loss: bool = False) -> dict:
    loaded = ckpt.load(path)
    config = loaded.meta["train_config"]
    decoded = load_corpus(config["corpus"])
    corpus = decoded.text
    row = {"persona": path.stem, "family": loaded.family}
    if not skip_loss:
        row.update(held_out(loaded, decoded))
    length = 400 if loaded.tokenizer.kind == "char" else 100
    samples = generate(loaded.model, loaded.tokenizer, PROMPTS,
                       [SamplingParams(max_tokens=length, temperature=0.8, seed=i) for i in range(len(PROMPTS))])
    shares = [originality(s.text, corpus) for s in samples]
    shares = [s for s in shares if s is not None]
    row["copied_20char_windows"] = round(1 - sum(shares) / len(shares), 3) if shares else None
    row.update(drive_measures(loaded, corpus))
    return row


def held_out(loaded, corpus) -> dict:
    """The checkpoint's own validation split, rebuilt as its training run cut it (trainer.data.rebuild_split)."""
    kind = loaded.tokenizer.kind
    train_ids, val, _ = rebuild_split(loaded.meta, loaded.tokenizer, corpus)
    nats = evaluate(loaded.model, TokenStreams(val, 32, 100))
    split = loaded.meta.get("split", {}).get("mode", loaded.meta["train_config"].get("split", "tail"))
    row = {"val_tokens": len(val), "val_nats_per_token": round(nats, 4), "val_ppl": round(math.exp(nats), 2),
           "split": split}
    if kind == "word":
        trigram = KneserNeyTrigram(train_ids.numpy(), len(loaded.tokenizer))
        kn_ppl = trigram.perplexity(val.numpy())
        row.update({"kn_trigram_ppl": round(kn_ppl, 2), "ppl_below_trigram": round(1 - math.exp(nats) / kn_ppl, 3)})
    return row


@cache
def base_word_counts() -> Counter:
    """Lower-cased word counts of the base corpus (every .txt of a `base` folder on the corpus path)."""
    counts = Counter()
    for folder in corpus_dirs():
        for path in sorted((folder / "base").glob("*.txt")):
            counts.update(WORD_RE.findall(path.read_text(encoding="utf-8", errors="replace").lower()))
    return counts


def whole_words(text: str) -> list[str]:
    """Alphabetic words of a completion; a last word that the length limit may have cut is left out."""
    words = WORD_RE.findall(text)
    if words and text and (text[-1].isalpha() or text[-1] in "'’"):
        words = words[:-1]
    return words


def real_word_rate(texts: list[str], corpus_counts: Counter) -> float | None:
    base = base_word_counts()
    words = [w.lower() for text in texts for w in whole_words(text)]
    if not words:
        return None
    return sum(corpus_counts[w] >= 2 or base[w] >= 2 for w in words) / len(words)


def calibration(picks: list[float], target: float) -> tuple[float | None, float | None]:
    """(median realised / target, share of picks within a factor of 2 of the target)."""
    ratios = [p / target for p in picks]
    if not ratios:
        return None, None
    return statistics.median(ratios), sum(0.5 <= r <= 2 for r in ratios) / len(ratios)


def drive_measures(loaded, corpus: str) -> dict:
    model, tok = loaded.model, loaded.tokenizer
    is_char = tok.kind == "char"
    row = {}

    def run(**kw) -> list:
        return [generate(model, tok, [DRIVE_PROMPT], SamplingParams(seed=seed, **kw))[0] for seed in SEEDS]

    if is_char:
        counts = Counter(WORD_RE.findall(corpus.lower()))
        plain = run(max_tokens=RATE_CHARS, temperature=0.8)
        driven = run(max_tokens=RATE_CHARS, improbability=0.05)
        row["real_word_rate_T0.8"] = _round(real_word_rate([s.text for s in plain], counts))
        row["real_word_rate_p0.05"] = _round(real_word_rate([s.text for s in driven], counts))
        row["distinct_texts_p0.05"] = len({s.text for s in driven})
        row["sample_p0.05"] = driven[0].text[:160]
    else:
        row["distinct_texts_p0.05"] = len({s.text for s in run(max_tokens=CALIBRATION_WORD_TOKENS, improbability=0.05)})
    for target in TARGETS:
        length = CALIBRATION_CHARS if is_char else CALIBRATION_WORD_TOKENS
        streams = run(max_tokens=length, improbability=target)
        median, within = calibration([p for s in streams for _, p in s.picks], target)
        row[f"calibration_{target}_median_ratio"] = _round(median)
        row[f"calibration_{target}_within_2x"] = _round(within)
        row[f"calibration_{target}_picks"] = sum(len(s.picks) for s in streams)
    for name, kw in (("plain_T0.8", {"temperature": 0.8}), ("drive_p0.05", {"improbability": 0.05})):
        n = 600 if is_char else 150
        # CPU time of this (single-threaded) process: on a shared machine wall time mostly measures the neighbours.
        started = time.process_time()
        stream = generate(model, tok, [DRIVE_PROMPT], SamplingParams(max_tokens=n, seed=0, **kw))[0]
        row[f"{'chars' if is_char else 'tokens'}_per_cpu_s_{name}"] = round(
            len(stream.tokens) / max(time.process_time() - started, 1e-6))
    return row


def _round(x: float | None, digits: int = 3) -> float | None:
    return None if x is None else round(x, digits)


def target_rows(rows: list[dict]) -> list[dict]:
    """Every target with its measured figure: {persona, metric, target, measured, ok}."""
    out = []

    def add(persona, metric, target, measured, ok):
        out.append({"persona": persona, "metric": metric, "target": target, "measured": measured,
                    "ok": None if measured is None else bool(ok(measured))})

    for row in rows:
        name = row["persona"]
        if row.get("real_word_rate_T0.8", "absent") != "absent":
            add(name, "real-word rate, T = 0.8", "≥ 0.97", row["real_word_rate_T0.8"], lambda m: m >= 0.97)
            add(name, "real-word rate, improbability 0.05", "≥ 0.92", row["real_word_rate_p0.05"],
                lambda m: m >= 0.92)
            add(name, "distinct texts from 6 seeds (p = 0.05)", "6", row["distinct_texts_p0.05"], lambda m: m == 6)
        for target in TARGETS:
            measured = row.get(f"calibration_{target}_median_ratio")
            within = row.get(f"calibration_{target}_within_2x")
            if target == 0.5:  # no target: reported
                add(name, f"calibration p = {target}: median ratio (within 2x: {within})", "reported", measured,
                    lambda m: True)
            else:
                add(name, f"calibration p = {target}: median realised/target (within 2x: {within})", "[0.5, 2]",
                    measured, lambda m: 0.5 <= m <= 2)
        if "ppl_below_trigram" in row:
            add(name, "perplexity below the Kneser–Ney trigram", "≥ 0.15", row["ppl_below_trigram"],
                lambda m: m >= 0.15)
    return out


def external_rows() -> dict[str, list[dict]]:
    """Rows other benchmarks wrote ({"rows": [{metric, target, measured, ok}, ...]}), by file name."""
    found = {}
    for name in EXTERNAL:
        path = RESULTS / name
        if path.exists():
            try:
                found[name] = list(json.loads(path.read_text()).get("rows", []))
            except (json.JSONDecodeError, AttributeError) as e:
                print(f"warning: {path} is not a {{'rows': [...]}} JSON file ({e})", file=sys.stderr)
    return found


def targets_markdown(rows: list[dict]) -> str:
    lines = ["| persona | metric | target | measured | ok |", "|---|---|---|---|---|"]
    for r in rows:
        ok = {True: "yes", False: "**MISSED**", None: "n/a"}[r.get("ok")]
        lines.append(f"| {r.get('persona', '')} | {r.get('metric', '')} | {r.get('target', '')} | "
                     f"{r.get('measured', '')} | {ok} |")
    return "\n".join(lines)


def bundled_checkpoints() -> list[Path]:
    """The bundled personas (db/bundled/)."""
    found = sorted((ROOT / "db" / "bundled").glob("*.safetensors"))
    if not found:
        raise SystemExit("no bundled checkpoints found under db/bundled/")
    return found


def to_markdown(rows: list[dict]) -> str:
    keys = list(dict.fromkeys(k for row in rows for k in row))
    lines = ["| " + " | ".join(keys) + " |", "|" + "|".join("---" for _ in keys) + "|"]
    lines += ["| " + " | ".join(str(row.get(k, "")) for k in keys) + " |" for row in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="*", type=Path)
    parser.add_argument("--out", type=Path, default=RESULTS / "quality_report")
    parser.add_argument("--skip-loss", action="store_true", help="skip held-out loss and the trigram (slow)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: batch-1 generation gains nothing from more, and a second thread on "
                             "a busy machine makes every step wait for the slower one)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    paths = args.checkpoints or bundled_checkpoints()
    rows = []
    for path in paths:
        print(f"scoring {path} ...", file=sys.stderr, flush=True)
        rows.append(report_one(path, skip_loss=args.skip_loss))
    table = to_markdown([{k: v for k, v in row.items() if not k.startswith("sample")} for row in rows])
    notes = ("\nppl_below_trigram: 1 − model ppl / Kneser–Ney trigram ppl (target ≥ 0.15); "
             "copied_20char_windows: share of generated 20-char windows found verbatim in the corpus; "
             "real_word_rate: share of generated words occurring ≥ 2 times in the persona's or the base corpus; "
             "calibration_p_*: improbability picks' realised probability / p (median) and share within 2x; "
             "speed: batch-1 chars (tokens) per CPU second, one thread.\n")
    targets = target_rows(rows)
    external = external_rows()
    sections = ["## Targets\n\n" + targets_markdown(targets)]
    for name, ext_rows in external.items():
        sections.append(f"## From bench/results/{name}\n\n" + targets_markdown(ext_rows))
    samples = "\n".join(f"- {row['persona']} (p = 0.05, seed 0): {row['sample_p0.05']!r}"
                         for row in rows if "sample_p0.05" in row)
    text = table + "\n" + notes + "\n" + "\n\n".join(sections) + "\n\n## Samples\n\n" + samples + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text("# Quality report\n\n" + text)
    args.out.with_suffix(".json").write_text(json.dumps({"personas": rows, "targets": targets,
                                                         "external": external}, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
