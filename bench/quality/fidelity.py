"""Voice fidelity: does a persona sound like itself (not like the base or another persona), and are its real
words bought by copying its corpus?

    .venv/bin/python -m bench.quality.fidelity [--n 30] [--chars 600] [--temperature 0.8 0.7] [--threads 2]
    .venv/bin/python -m bench.quality.fidelity --checkpoint alice=runs/alice/best.safetensors   # a candidate

Judges independent of the generators: one character 5-gram modified Kneser–Ney model (CharKneserNey, below)
per persona corpus (trump, alice, shakespeare), one for a fresh upload's text and one for the base books (a
sample: --base-books books, --base-chars in all). Each judge is built from the training part of its text
only; N windows of --chars characters, spread evenly through the text (each starting at a line start), are
held out from it. 600 characters is what a reader sees of one completion (the issue's real-word measure).

The fresh upload is a book the base never trained on: one of the base corpus's held-out books (the trainer's
split holds out every 10th book; UPLOAD_BOOK is one of them and not in the base judge's sample), fine-tuned
from the shipped base with the upload recipe (`alice`, trainer/recipes/alice.json) for a step budget
(--upload-steps, about the recipe's 3 minutes on one idle thread, so the machine's load does not change the
model). The run folder (--upload-run) is resumed: a finished run is reused, not trained again.

For every bundled persona (db/bundled/, or --checkpoint NAME=PATH), the upload and the shipped base model (the
control: a fresh upload before any training, its "own" judge the base), N texts are generated (prompt "The ",
seeds 0..N-1, pure sampling at each --temperature) and scored:

- attribution accuracy: share of texts whose lowest per-char cross-entropy is under the voice's own judge;
  the ceiling is the same judges on the voice's real held-out windows;
- originality: share of 20-character windows of a text not found in the voice's corpus (core.text.originality;
  for the 23 MB of base books an exact hashed equivalent, tests/test_fidelity.py checks they agree);
- real-word rate: share of words (letters, apostrophes inside) that occur at least twice in the voice's corpus
  or in the base books (all of them); a word cut by the end of the window is not counted;
- tell-apart: a numpy logistic regression trained to tell real held-out windows from generated texts, k-fold
  cross-validated; once on char 1-3-gram counts, once on the two judges' scores (own judge, base judge).
  50 % = indistinguishable.

Prints one table and writes bench/results/fidelity.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

from bench.common import RESULTS, corpus_dirs, load_corpus, print_table
from core.text import originality

PERSONAS = ("trump", "alice", "shakespeare")
BASE = "base"
UPLOAD = "upload"
UPLOAD_BOOK = "base/730-oliver-twist.txt"  # a held-out book of the base's split (every 10th, from the 6th)
UPLOAD_STEPS = 400  # the upload recipe's 3 minutes on one idle thread (bench/results/early_stop.json: 442)
ORDER = 5
UNKNOWN = 0  # id of a character no judge saw


# -----------------------------------------------------------------------------
# the judge: a character n-gram modified Kneser–Ney model


class CharVocab:
    """Characters to ids 1..V-1 (0 = unknown), shared by every judge so their probabilities compare."""

    def __init__(self, texts: list[str]):
        chars = set()
        for text in texts:
            chars.update(text)
        self.codepoints = np.array(sorted(ord(c) for c in chars), dtype=np.int64)
        self.size = len(self.codepoints) + 1

    def encode(self, text: str) -> np.ndarray:
        cp = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
        if len(self.codepoints) == 0:
            return np.zeros(len(cp), dtype=np.int64)
        pos = np.clip(np.searchsorted(self.codepoints, cp), 0, len(self.codepoints) - 1)
        return np.where(self.codepoints[pos] == cp, pos + 1, UNKNOWN).astype(np.int64)


def _lookup(keys: np.ndarray, values: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Values for `queries` in the sorted `keys`, 0 where absent."""
    if len(keys) == 0:
        return np.zeros(len(queries))
    pos = np.clip(np.searchsorted(keys, queries), 0, len(keys) - 1)
    return np.where(keys[pos] == queries, values[pos], 0).astype(np.float64)


def _discounts(counts: np.ndarray) -> tuple[float, float, float]:
    """Chen & Goodman's modified-KN discounts D1, D2, D3+ from the count-of-counts."""
    n = [float((counts == k).sum()) for k in (1, 2, 3, 4)]
    if min(n) == 0:
        return 0.5, 1.0, 1.5
    y = n[0] / (n[0] + 2 * n[1])
    d = (1 - 2 * y * n[1] / n[0], 2 - 3 * y * n[2] / n[1], 3 - 4 * y * n[3] / n[2])
    return tuple(float(np.clip(dk, 0.05, k + 0.95)) for k, dk in enumerate(d))  # keeps D(c) < c


class _Order:
    """One order's n-gram table (raw counts at the top order, continuation counts below) and, per context,
    the total count and how many n-grams were seen once, twice, three or more times."""

    def __init__(self, keys: np.ndarray, counts: np.ndarray, V: int):
        self.keys, self.counts = keys, counts.astype(np.float64)
        self.d = _discounts(counts)
        self.ctx, index = np.unique(keys // V, return_inverse=True)
        self.total = np.bincount(index, weights=self.counts)
        d1, d2, d3 = self.d
        mass = np.where(counts == 1, d1, np.where(counts == 2, d2, d3))
        self.backoff = np.bincount(index, weights=mass) / self.total  # γ(h): mass discounted to the lower order

    def discount(self, c: np.ndarray) -> np.ndarray:
        d1, d2, d3 = self.d
        return np.where(c == 0, 0.0, np.where(c == 1, d1, np.where(c == 2, d2, d3)))


class CharKneserNey:
    """Interpolated modified Kneser–Ney over characters (Chen & Goodman 1998), vectorised with numpy:

        P_k(w | h) = (c_k(hw) − D_k(c_k(hw))) / c_k(h·)  +  γ_k(h) · P_{k−1}(w | h')      if c_k(h·) > 0
                   = P_{k−1}(w | h')                                                       otherwise
        γ_k(h)     = (D_k1 · N1(h·) + D_k2 · N2(h·) + D_k3+ · N3+(h·)) / c_k(h·),     P_0(w) = 1 / V

    c_k is the raw count at the top order and the continuation count (distinct left neighbours) below it;
    h' is h without its first character. n-grams are counted inside each document only.
    """

    def __init__(self, documents: list[str], vocab: CharVocab, order: int = ORDER):
        self.vocab, self.order, V = vocab, order, vocab.size
        self.chars = sum(len(doc) for doc in documents)
        top = []
        for doc in documents:
            ids = vocab.encode(doc)
            if len(ids) >= order:
                code = np.zeros(len(ids) - order + 1, dtype=np.int64)
                for j in range(order):
                    code = code * V + ids[j:len(ids) - order + 1 + j]
                top.append(code)
        keys, counts = np.unique(np.concatenate(top) if top else np.zeros(0, np.int64), return_counts=True)
        self.orders = [_Order(keys, counts, V)]
        for k in range(order - 1, 0, -1):  # continuation counts: distinct left neighbours of each k-gram
            keys, counts = np.unique(keys % V ** k, return_counts=True)
            self.orders.insert(0, _Order(keys, counts, V))

    def prob(self, context: np.ndarray, w: np.ndarray) -> np.ndarray:
        """P(w | context) for rows of `context` ids (order − 1 columns, oldest first) and next ids `w`."""
        V = self.vocab.size
        context, w = np.asarray(context, dtype=np.int64), np.asarray(w, dtype=np.int64)
        p = np.full(len(w), 1.0 / V)
        h = np.zeros(len(w), dtype=np.int64)  # the last k context characters as one code, oldest first
        for k, table in enumerate(self.orders):  # order k + 1
            if k:
                h = h + context[:, -k] * V ** (k - 1)
            total = _lookup(table.ctx, table.total, h)
            gamma = _lookup(table.ctx, table.backoff, h)
            c = _lookup(table.keys, table.counts, h * V + w)
            seen = total > 0
            p = np.where(seen, (c - table.discount(c)) / np.maximum(total, 1) + gamma * p, p)
        return p

    def nats_per_char(self, text: str) -> float:
        """Mean −ln P of each character that has a full context (the first order − 1 are its context)."""
        ids = self.vocab.encode(text)
        n = len(ids) - self.order + 1
        if n <= 0:
            return float("nan")
        context = np.stack([ids[j:j + n] for j in range(self.order - 1)], axis=1)
        return float(-np.log(self.prob(context, ids[self.order - 1:])).mean())



# -----------------------------------------------------------------------------
# texts: judge sources with held-out windows, generated texts


def holdout(text: str, n: int, chars: int) -> tuple[list[str], list[str]]:
    """(training pieces, n held-out windows): the windows are spread evenly through the text, each starting at
    a line start; the judge is built from the pieces between them."""
    cuts, windows = [], []
    segment = len(text) / n
    for k in range(n):
        start = int((k + 0.5) * segment)
        start = min(text.find("\n", start, int((k + 1) * segment)) + 1 or start, len(text) - chars)
        if cuts and start < cuts[-1][1]:
            continue
        cuts.append((start, start + chars))
        windows.append(text[start:start + chars])
    bounds = [0, *[x for cut in cuts for x in cut], len(text)]
    pieces = [text[bounds[i]:bounds[i + 1]] for i in range(0, len(bounds), 2)]
    return [p for p in pieces if p], windows


def sample_indices(n_documents: int, books: int) -> list[int]:
    """Which of the base's documents the base judge reads: `books` spread through the list."""
    return [i * n_documents // books for i in range(books)]


def base_sample(documents: list[str], books: int, chars: int) -> str:
    """`chars` characters from `books` base books spread through the list, the middle of each book."""
    chosen = [documents[i] for i in sample_indices(len(documents), books)]
    per_book = chars // books
    middles = [d[max(0, len(d) // 2 - per_book // 2):][:per_book] for d in chosen]
    return "\n\n".join(middles)


def voice_checkpoint(voice: str, overrides: dict[str, str]):
    """The checkpoint file that speaks for a voice: --checkpoint's, else the bundled persona's or the shipped base."""
    from db.bundled import bundled_checkpoints
    from trainer.pretrained import resolve_init

    if voice in overrides:
        return resolve_init(overrides[voice])
    return resolve_init("base") if voice == BASE else bundled_checkpoints()[voice]


def generated_texts(path, n: int, chars: int, temperature: float, top_p: float = 1.0) -> list[str]:
    """n completions of "The " by the checkpoint at `path`, seeds 0..n-1, sampling at `temperature` (pure
    sampling unless top_p < 1: nucleus sampling, as the personas' defaults do)."""
    from core.contracts import SamplingParams
    from trainer import checkpoint as ckpt
    from trainer.sample import generate

    loaded = ckpt.load(path)
    params = [SamplingParams(max_tokens=chars, temperature=temperature, top_p=top_p, seed=seed) for seed in range(n)]
    return [s.text for s in generate(loaded.model.eval(), loaded.tokenizer, ["The "] * n, params)]


def upload_file(book: str):
    """The fresh upload's file: `book` (a path relative to a corpus folder) found on the corpus path."""
    for folder in corpus_dirs():
        if (folder / book).is_file():
            return folder / book
    raise SystemExit(f"{book} is not under any corpus folder ({', '.join(map(str, corpus_dirs()))})")


def check_unseen(path, base_books: int) -> None:
    """The upload must be a book the base held out (no model trained on it), and not one the base judge reads."""
    from core.checkpoints import read_meta
    from trainer.corpus import find_corpus
    from trainer.pretrained import resolve_init

    files = sorted(p for p in find_corpus(BASE, corpus_dirs()).glob("*.txt"))  # the base corpus's document order
    fraction = read_meta(resolve_init("base"))["train_config"]["val_fraction"]
    k = max(2, round(1 / fraction))
    index = next((i for i, f in enumerate(files) if f.name == path.name), None)
    if index is None or index % k != k // 2:
        raise SystemExit(f"{path.name} is not one of the base's held-out books (every {k}th from the {k // 2 + 1}th)")
    if index in sample_indices(len(files), base_books):
        raise SystemExit(f"{path.name} is one of the books the base judge is built from")


def train_upload(text: str, steps: int, runs: str):
    """Fine-tune the shipped base on the upload with the upload recipe for `steps` steps, in a run folder under
    `runs` named by the base's weights and the steps (resumed: a finished run is reused); the best checkpoint's
    path and the run's figures."""
    from core.checkpoints import read_meta
    from trainer.pretrained import resolve_init
    from trainer.recipes import load_recipe
    from trainer.train import TrainConfig, train

    out_dir = str(Path(runs) / f"{read_meta(resolve_init('base'))['tensors_sha256'][:12]}-{steps}")
    config = TrainConfig.from_dict({**load_recipe("alice"), "minutes": 0, "max_steps": steps, "threads": 1,
                                    "out_dir": out_dir, "name": "upload"})
    result = train(config, text, resume=True)
    best = Path(out_dir) / "best.safetensors"
    meta = read_meta(best)
    return best, {"run": out_dir, "steps": steps, "best_step": meta.get("step"),
                  "val_loss": round(meta["metrics"]["val_loss"], 4), "stop_reason": result.stop_reason}


# -----------------------------------------------------------------------------
# copying and real words


def _rolling_hashes(text: str, window: int) -> np.ndarray:
    """A 64-bit polynomial hash of each `window`-character window of `text`, in order."""
    cp = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    n = max(len(cp) - window + 1, 0)
    h = np.zeros(n, dtype=np.uint64)
    for j in range(window):
        h = h * np.uint64(1_000_003) + cp[j:j + n]
    return h


def window_hashes(texts: list[str], window: int = 20) -> np.ndarray:
    """The sorted distinct hashes of every `window`-character window of the texts."""
    return np.unique(np.concatenate([np.zeros(0, np.uint64)] + [_rolling_hashes(t, window) for t in texts]))


def hashed_originality(generated: str, hashes: np.ndarray, window: int = 20) -> float | None:
    """core.text.originality against a corpus given by its window_hashes (for corpora too big to search)."""
    h = _rolling_hashes(generated, window)
    if len(h) == 0 or len(hashes) == 0:
        return None
    pos = np.clip(np.searchsorted(hashes, h), 0, len(hashes) - 1)
    return 1.0 - float((hashes[pos] == h).mean())


WORD = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)*")


def words(text: str) -> list[str]:
    """Lower-cased words, leaving out one the text's start or end may have cut."""
    return [m.group().lower().replace("’", "'") for m in WORD.finditer(text)
            if m.start() > 0 and m.end() < len(text)]


def twice_seen(text: str) -> set[str]:
    counts = Counter(m.lower().replace("’", "'") for m in WORD.findall(text))
    return {w for w, c in counts.items() if c >= 2}


def real_word_rate(texts: list[str], known: set[str]) -> float:
    found = [w for t in texts for w in words(t)]
    return sum(w in known for w in found) / max(len(found), 1)


# -----------------------------------------------------------------------------
# tell-apart: can a simple classifier tell real held-out text from generated text?

FEATURE_DIMS = 4096


def ngram_features(texts: list[str], dims: int = FEATURE_DIMS) -> np.ndarray:
    """log(1 + count) of hashed char 1-3-grams, each row scaled to unit length."""
    import zlib

    X = np.zeros((len(texts), dims))
    for i, text in enumerate(texts):
        grams = Counter(text[j:j + k] for k in (1, 2, 3) for j in range(len(text) - k + 1))
        for gram, count in grams.items():
            X[i, zlib.crc32(gram.encode("utf-8")) % dims] += count
    X = np.log1p(X)
    return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)


def logistic(X: np.ndarray, y: np.ndarray, l2: float = 0.1, steps: int = 500, lr: float = 0.5) -> np.ndarray:
    """L2-regularised logistic regression by full-batch gradient descent; weights with the bias last."""
    Xb = np.hstack([X, np.ones((len(X), 1))])
    w = np.zeros(Xb.shape[1])
    for _ in range(steps):
        p = 1 / (1 + np.exp(-np.clip(Xb @ w, -30, 30)))
        grad = Xb.T @ (p - y) / len(y) + l2 * np.r_[w[:-1], 0.0]
        w -= lr * grad
    return w


def cv_accuracy(X: np.ndarray, y: np.ndarray, folds: int = 5, seed: int = 0) -> float:
    """Stratified k-fold accuracy of `logistic` (features standardised on each training fold)."""
    rng = np.random.default_rng(seed)
    fold = np.empty(len(y), dtype=int)
    for label in (0, 1):
        members = rng.permutation(np.flatnonzero(y == label))
        fold[members] = np.arange(len(members)) % folds
    correct = 0
    for f in range(folds):
        train, test = fold != f, fold == f
        mean, std = X[train].mean(0), X[train].std(0) + 1e-6
        w = logistic((X[train] - mean) / std, y[train])
        z = np.hstack([(X[test] - mean) / std, np.ones((test.sum(), 1))]) @ w
        correct += int(((z > 0) == (y[test] == 1)).sum())
    return correct / len(y)


# -----------------------------------------------------------------------------
# the benchmark


def judges_and_windows(n: int, chars: int, max_chars: int, base_books: int, base_chars: int, upload: str):
    """The judge per voice (built from its training part), each voice's held-out windows and full corpus."""
    corpora, windows, pieces = {}, {}, {}
    for name in PERSONAS:
        corpora[name] = load_corpus(name).text
    corpora[UPLOAD] = upload
    for name, text in corpora.items():
        pieces[name], windows[name] = holdout(text[:max_chars], n, chars)
    base_documents = load_corpus(BASE).document_texts()
    pieces[BASE], windows[BASE] = holdout(base_sample(base_documents, base_books, base_chars), n, chars)
    vocab = CharVocab([p for ps in pieces.values() for p in ps])
    judges = {name: CharKneserNey(ps, vocab) for name, ps in pieces.items()}
    return judges, windows, corpora, base_documents


def attribute(judges: dict[str, CharKneserNey], texts: list[str]) -> tuple[np.ndarray, list[str]]:
    """Per-char cross-entropy of each text under each judge (texts × judges), and each text's best judge."""
    names = list(judges)
    scores = np.array([[judges[j].nats_per_char(t) for j in names] for t in texts])
    return scores, [names[i] for i in scores.argmin(1)]


VOICE_NAMES = {BASE: "base model (upload before training)"}


def measure_voice(voice: str, texts: list[str], real: list[str], judges, corpus, base_hashes, known) -> dict:
    gen_scores, gen_to = attribute(judges, texts)
    real_scores, real_to = attribute(judges, real)
    own = list(judges).index(voice)
    if voice == BASE:
        origin = [hashed_originality(t, base_hashes) for t in texts]
    else:
        origin = [originality(t, corpus) for t in texts]
    origin = [o for o in origin if o is not None]
    X_ngram = ngram_features(real + texts)
    X_judge = np.vstack([real_scores, gen_scores])
    y = np.r_[np.zeros(len(real)), np.ones(len(texts))]
    counts = Counter(gen_to)
    return {
        "voice": VOICE_NAMES.get(voice, voice),
        "texts": len(texts),
        "attributed_own": round(sum(a == voice for a in gen_to) / len(texts), 3),
        "heldout_attributed_own": round(sum(a == voice for a in real_to) / len(real), 3),
        "attributed_to": " ".join(f"{k}:{v}" for k, v in counts.most_common()),
        "nats_own_gen": round(float(gen_scores[:, own].mean()), 3),
        "nats_own_real": round(float(real_scores[:, own].mean()), 3),
        "originality_mean": round(float(np.mean(origin)), 4),
        "originality_min": round(float(np.min(origin)), 4),
        "real_words_gen": round(real_word_rate(texts, known), 4),
        "real_words_real": round(real_word_rate(real, known), 4),
        "tell_apart_ngrams": round(cv_accuracy(X_ngram, y), 3),
        "tell_apart_judges": round(cv_accuracy(X_judge, y), 3),
    }


def machine() -> dict:
    from trainer.precision import cpu_model

    return {"platform": platform.platform(), "cpu": cpu_model(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "load_average_at_start": os.getloadavg()}


def parse_checkpoints(pairs: list[str]) -> dict[str, str]:
    """--checkpoint NAME=PATH pairs: the voices spoken by a checkpoint other than the bundled one."""
    out = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or name not in (*PERSONAS, UPLOAD, BASE):
            raise SystemExit(f"--checkpoint takes NAME=PATH with NAME one of {', '.join((*PERSONAS, UPLOAD, BASE))}")
        out[name] = path
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=30, help="texts (and held-out windows) per voice")
    parser.add_argument("--chars", type=int, default=600)
    parser.add_argument("--temperature", type=float, nargs="+", default=[0.8])
    parser.add_argument("--top-p", type=float, default=1.0, help="1 = pure sampling (the issue's measure)")
    parser.add_argument("--max-chars", type=int, default=2_000_000, help="most characters a persona judge reads")
    parser.add_argument("--base-books", type=int, default=10)
    parser.add_argument("--base-chars", type=int, default=2_000_000)
    parser.add_argument("--upload-book", default=UPLOAD_BOOK, help="the upload: a book file under a corpus folder")
    parser.add_argument("--upload-steps", type=int, default=UPLOAD_STEPS)
    parser.add_argument("--upload-run", default="runs/fidelity-upload", help="where the upload's runs go (one folder per base and step budget, resumed)")
    parser.add_argument("--checkpoint", action="append", default=[], metavar="NAME=PATH",
                        help="a voice spoken by this checkpoint instead of the bundled one (or the upload run's)")
    parser.add_argument("--voices", nargs="+", default=[*PERSONAS, UPLOAD, BASE])
    parser.add_argument("--out", default=str(RESULTS / "fidelity.json"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    overrides = parse_checkpoints(args.checkpoint)
    host, started, timings = machine(), time.perf_counter(), {}
    book = upload_file(args.upload_book)
    check_unseen(book, args.base_books)
    upload = {"book": args.upload_book, "chars": len(book.read_text(encoding="utf-8"))}
    if UPLOAD in args.voices and UPLOAD not in overrides:
        t0 = time.perf_counter()
        overrides[UPLOAD], run = train_upload(book.read_text(encoding="utf-8"), args.upload_steps, args.upload_run)
        upload.update(run, train_s=round(time.perf_counter() - t0, 1))
        print(f"upload: {upload}", file=sys.stderr, flush=True)
    VOICE_NAMES[UPLOAD] = f"upload ({book.stem}, {args.upload_steps} steps)"
    judges, windows, corpora, base_documents = judges_and_windows(
        args.n, args.chars, args.max_chars, args.base_books, args.base_chars, book.read_text(encoding="utf-8"))
    timings["judges_s"] = round(time.perf_counter() - started, 1)
    base_hashes = window_hashes(base_documents)
    base_words = set().union(*(twice_seen(d) for d in base_documents))
    timings["base_index_s"] = round(time.perf_counter() - started - timings["judges_s"], 1)
    rows, samples = [], {}
    for voice in args.voices:
        path = voice_checkpoint(voice, overrides)
        known = base_words if voice == BASE else base_words | twice_seen(corpora[voice])
        for temperature in args.temperature:
            t0 = time.perf_counter()
            texts = generated_texts(path, args.n, args.chars, temperature, args.top_p)
            timings[f"generate_{voice}_T{temperature}_s"] = round(time.perf_counter() - t0, 1)
            row = measure_voice(voice, texts, windows[voice], judges, corpora.get(voice), base_hashes, known)
            rows.append({"voice": row.pop("voice"), "T": temperature, **row})
            samples[f"{voice} T {temperature}"] = texts[:2]
            print(f"{voice} T {temperature}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    timings["total_s"] = round(time.perf_counter() - started, 1)
    host["load_average_at_end"] = os.getloadavg()
    sampling = "pure sampling" if args.top_p >= 1 else f"top-p {args.top_p}"
    print_table(f"voice fidelity: {args.n} texts of {args.chars} chars per voice, prompt \"The \", {sampling}, "
                f"judged by char {ORDER}-gram modified Kneser-Ney models", rows)
    print(f"\ncolumns: attributed_own = share of generated texts whose best judge (lowest nats/char among "
          f"{', '.join(judges)}) is the voice's own; heldout_attributed_own = the same on real held-out windows "
          "(the ceiling); originality = share of 20-char windows not in the voice's corpus; real_words = share "
          "of words seen at least twice in the voice's corpus or the base books (gen / real held-out); "
          "tell_apart = 5-fold CV accuracy of a logistic regression telling real held-out from generated "
          f"(ngrams: char 1-3-gram counts; judges: the {len(judges)} judges' scores); 50 % = indistinguishable.")
    print(f"\nCPU {host['cpu']}, {args.threads} threads; load {host['load_average_at_start']} -> "
          f"{host['load_average_at_end']}; {timings['total_s']} s", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "command": " ".join(["python -m bench.quality.fidelity", *sys.argv[1:]]), "machine": host,
        "params": {**vars(args), "order": ORDER, "prompt": "The ", "judges": list(judges),
                   "judge_chars": {name: judge.chars for name, judge in judges.items()}},
        "checkpoints": {voice: str(voice_checkpoint(voice, overrides)) for voice in args.voices},
        "upload": upload,
        "control": "the base model row is a fresh upload before any training (the shipped base itself); its own "
                   "judge is the base-books judge",
        "timings": timings, "rows": rows, "samples": samples}, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
