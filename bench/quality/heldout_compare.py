"""Held-out loss of char checkpoints of one corpus, scored on the characters that every one of them held out.

    .venv/bin/python -m bench.quality.heldout_compare db/bundled/trump.safetensors runs/trump/best.safetensors

Checkpoints trained before trainer/heldout.py's paragraph split held out 4,096-token blocks
(trainer.data.split_documents); later ones hold out whole paragraphs, and a fine-tune continued from an older
checkpoint has trained on both splits' training text. Each checkpoint's own held-out loss is then scored on
different text, so the comparison is made on the characters that all of them held out. Prints a table and
writes --out (JSON, one entry per corpus).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from bench.common import RESULTS, load_corpus, print_table
from core.dedup import paragraphs
from core.text import DOCUMENT_SEPARATOR
from trainer import checkpoint as ckpt
from trainer.data import BLOCK_TOKENS, TokenStreams, split_documents, text_split
from trainer.evaluate import evaluate

MIN_PIECE = 100  # characters: shorter common runs are left out (a model needs some context)


def _document_starts(text: str, documents: list[str]) -> list[int]:
    starts, cursor = [], 0
    for doc in documents:
        at = text.find(doc, cursor)
        if at < 0:
            raise ValueError("a document of the corpus is not found in its text")
        starts.append(at)
        cursor = at + len(doc)
    return starts


def heldout_mask(meta: dict, corpus) -> torch.Tensor:
    """A boolean per character of corpus.text: True where the run whose metadata is `meta` held it out."""
    text, documents = corpus.text, corpus.document_texts()
    config, recorded = meta.get("train_config", {}), meta.get("split", {})
    fraction = recorded.get("val_fraction", config.get("val_fraction", 0.1))
    mode = recorded.get("mode", config.get("split", "tail"))
    mask = torch.zeros(len(text), dtype=torch.bool)
    if recorded.get("paragraphs"):  # trainer.heldout: whole paragraphs, each an exact piece of the text
        cursor = 0
        for piece in text_split(corpus, fraction, mode).val:
            for para in paragraphs(piece):
                at = text.find(para, cursor)
                at = at if at >= 0 else text.find(para)
                if at >= 0:
                    mask[at:at + len(para)] = True
                    cursor = at + len(para)
        return mask
    # the older token-block split, made on positions instead of ids (a char model's ids are its characters)
    starts = _document_starts(text, documents)
    positions = [torch.arange(s, s + len(d)) for s, d in zip(starts, documents)]
    _, val = split_documents(positions, fraction, mode, BLOCK_TOKENS["char"], torch.tensor([-1]))
    mask[val[val >= 0]] = True
    return mask


def common_pieces(mask: torch.Tensor, text: str) -> list[str]:
    """The runs of True in `mask`, as text, at least MIN_PIECE characters each."""
    edges = torch.diff(mask.int(), prepend=torch.tensor([0]), append=torch.tensor([0]))
    begins, ends = torch.nonzero(edges == 1).flatten(), torch.nonzero(edges == -1).flatten()
    return [text[b:e] for b, e in zip(begins.tolist(), ends.tolist()) if e - b >= MIN_PIECE]


def score(loaded, pieces: list[str]) -> float:
    tok = loaded.tokenizer
    ids = tok.encode(DOCUMENT_SEPARATOR.join(pieces))
    return evaluate(loaded.model.eval(), TokenStreams(torch.tensor(ids), 16, 100))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=RESULTS / "heldout_compare.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    loaded = {path: ckpt.load(path) for path in args.checkpoints}
    metas = [m.meta for m in loaded.values()]
    corpora = {m["train_config"]["corpus"] for m in metas}
    if len(corpora) != 1:
        raise SystemExit(f"the checkpoints were trained on different corpora: {', '.join(sorted(corpora))}")
    name = corpora.pop()
    corpus = load_corpus(name)
    mask = torch.ones(len(corpus.text), dtype=torch.bool)
    for meta in metas:
        mask &= heldout_mask(meta, corpus)
    pieces = common_pieces(mask, corpus.text)
    rows = []
    for path, model in loaded.items():
        nats = score(model, pieces)
        rows.append({"checkpoint": str(path), "steps": model.meta.get("step"),
                     "own_split": "paragraphs" if model.meta.get("split", {}).get("paragraphs") else "token blocks",
                     "own_heldout_nats": round(model.meta["metrics"]["val_loss"], 4),
                     "common_heldout_nats": round(nats, 4), "common_bits": round(nats / math.log(2), 4)})
    chars = sum(map(len, pieces))
    print_table(f"{name}: held-out nats/char on the {chars:,} characters "
                f"({len(pieces)} pieces) every checkpoint held out", rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(args.out.read_text()) if args.out.exists() else {}
    previous[name] = {
        "common_chars": chars, "pieces": len(pieces), "rows": rows}
    args.out.write_text(json.dumps(previous, indent=1))


if __name__ == "__main__":
    main()
