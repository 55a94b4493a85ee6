"""Blended voices: held-out loss of a trump+shakespeare blend on each corpus against each voice
alone, the loss across blend weights, and samples.

    .venv/bin/python -m bench.quality.blend                          # the bundled checkpoints
    .venv/bin/python -m bench.quality.blend --a runs/x/best.safetensors --b runs/y/best.safetensors

Each corpus is scored on its held-out slice: the first --chars characters of its last 10 % (the tail the
bundled checkpoints were validated on), in --streams contiguous streams whose state is carried through
chunks. Text is read through the blend's union vocabulary (characters neither voice knows are dropped and
counted). A voice alone gives probability 0 to a character it lacks: its loss is reported over the
characters it can write, with the share it cannot. The 0.5/0.5 number comes from trainer/blend.py's
BlendedModel itself; the weight sweep mixes the voices' per-character probabilities, and the two are checked
to agree at 0.5. Prints a summary and writes bench/results/blend.json.
"""

from __future__ import annotations

import argparse
import json
import math
import time
import unicodedata
from pathlib import Path

import torch

from bench.common import RESULTS, ROOT, corpus_file
from core.contracts import SamplingParams
from trainer import checkpoint as ckpt
from trainer.blend import BlendedModel
from trainer.sample import generate

CORPORA = ("trump", "shakespeare")  # by name on the corpus path
SWEEP = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]  # weight of voice A


def held_out(path: Path, n_chars: int) -> str:
    text = unicodedata.normalize("NFC", path.read_text(encoding="utf-8"))
    return text[int(len(text) * 0.9):][:n_chars]


@torch.inference_mode()
def score(blended: BlendedModel, ids: torch.Tensor, chunk: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Per position, log p(next char): under the blend, and under each voice alone (-inf where it cannot write
    it). `ids` is (streams, length); returns tensors of shape (streams, length - 1)."""
    B, L = ids.shape
    state = blended.init_state(B)
    voice_states = blended.split_state(state)
    mixed, per_voice = [], [[] for _ in blended.voices]
    owns = []  # per voice: union id -> the voice's id, -1 where it lacks the character
    for i in range(len(blended.voices)):
        writes = getattr(blended, f"_writes_{i}")
        own = torch.full((len(blended.tokenizer),), -1, dtype=torch.long)
        own[writes] = torch.arange(len(writes))
        owns.append(own)
    for start in range(0, L - 1, chunk):
        x, y = ids[:, start:min(start + chunk, L - 1)], ids[:, start + 1:min(start + chunk, L - 1) + 1]
        log_p, state = blended(x, state)
        mixed.append(log_p.gather(-1, y[..., None]).squeeze(-1))
        for i, voice in enumerate(blended.voices):
            # The same reading of the text as the blend's (stand-ins included), scored at the voice's own id.
            hidden, voice_states[i] = voice(getattr(blended, f"_reads_{i}")[x], voice_states[i])
            voice_log_p = torch.log_softmax(voice.head.logits(hidden).float(), -1)
            target = owns[i][y]
            got = voice_log_p.gather(-1, target.clamp_min(0)[..., None]).squeeze(-1)
            per_voice[i].append(torch.where(target >= 0, got, torch.full_like(got, -math.inf)))
    return torch.cat(mixed, 1), [torch.cat(v, 1) for v in per_voice]


def summarise(log_p: torch.Tensor) -> dict:
    flat = log_p.flatten().double()
    finite = flat[torch.isfinite(flat)]
    loss = float(-finite.mean())
    return {"nats_per_char": round(loss, 4), "bits_per_char": round(loss / math.log(2), 4),
            "cannot_write_share": round(1 - len(finite) / len(flat), 5), "scored_chars": len(flat)}


def pictures(checkpoints, names, driven, path: Path) -> dict:
    """The probability picture of the driven sample (written next to the JSON, for the README), and the PNG size
    of a 1,000-character blended generation."""
    from bot.pictures import describe_sampling, render_picture
    from worker.probability import pieces_from_stream

    model, stream = driven
    spec = "+".join(f"{n}:{w:g}" for n, w in zip(names, model.weights))
    picture = render_picture(pieces_from_stream(stream, model.tokenizer),
                             *describe_sampling(spec, stream.params.model_dump(mode="json"), stream.seed))
    path.write_bytes(picture.png)
    long = generate(model, model.tokenizer, ["The king"], SamplingParams(max_tokens=1000, temperature=0.8, seed=3))[0]
    started = time.perf_counter()
    big = render_picture(pieces_from_stream(long, model.tokenizer),
                         *describe_sampling(spec, long.params.model_dump(mode="json"), long.seed))
    seconds = time.perf_counter() - started
    return {"driven_sample_png": str(path.relative_to(ROOT)), "driven_sample_png_bytes": len(picture.png),
            "png_bytes_1000_chars": len(big.png), "size_1000_chars": [big.width, big.height],
            "render_seconds_1000_chars": round(seconds, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--a", default=str(ROOT / "db" / "bundled" / "trump.safetensors"))
    parser.add_argument("--b", default=str(ROOT / "db" / "bundled" / "shakespeare.safetensors"))
    parser.add_argument("--names", default="trump,shakespeare")
    parser.add_argument("--chars", type=int, default=100_000)
    parser.add_argument("--streams", type=int, default=10)
    parser.add_argument("--chunk", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(RESULTS / "blend.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = args.names.split(",")
    checkpoints = [ckpt.load(args.a), ckpt.load(args.b)]
    blended = BlendedModel([c.model for c in checkpoints], [c.tokenizer for c in checkpoints], [0.5, 0.5], names)
    tok = blended.tokenizer
    result = {"voices": {n: {"checkpoint": str(Path(p).relative_to(ROOT)) if Path(p).is_relative_to(ROOT) else p,
                             "vocab": len(c.tokenizer), "model": c.meta["model"]["family"] + "/" + c.meta["model"]["cell"]
                             + f"/{c.meta['model']['n_layers']}x{c.meta['model']['n_hidden']}"}
                         for n, p, c in zip(names, (args.a, args.b), checkpoints)},
              "union_vocab": len(tok), "slice": f"first {args.chars} chars of the last 10% of each corpus",
              "streams": args.streams, "corpora": {}}

    for corpus in CORPORA:
        text = held_out(corpus_file(corpus), args.chars)
        dropped = len(tok.unknown(text))
        ids = torch.tensor(tok.encode(text))
        per_stream = len(ids) // args.streams
        ids = ids[:per_stream * args.streams].view(args.streams, per_stream)
        started = time.perf_counter()
        mixed, voices = score(blended, ids, args.chunk)
        seconds = time.perf_counter() - started
        # The sweep's mixture at 0.5 must be the BlendedModel's own number (same voices, same reading).
        check = torch.logaddexp(voices[0] + math.log(0.5), voices[1] + math.log(0.5))
        assert torch.allclose(check, mixed, atol=1e-4), "the weight sweep disagrees with BlendedModel at 0.5"
        sweep = {}
        for w in SWEEP:
            parts = [v + (math.log(x) if x > 0 else -math.inf) for v, x in ((voices[0], w), (voices[1], 1 - w))]
            sweep[f"{w:.1f}"] = summarise(torch.logaddexp(*parts))["nats_per_char"] if 0 < w < 1 else None
        best = min((k for k in sweep if sweep[k] is not None), key=lambda k: sweep[k])
        result["corpora"][corpus] = {
            "chars": len(text), "dropped_unknown_chars": dropped, "seconds": round(seconds, 1),
            "blend_0.5": summarise(mixed),
            **{f"{n}_alone": summarise(v) for n, v in zip(names, voices)},
            f"sweep_nats_per_char_by_{names[0]}_weight": sweep, f"best_{names[0]}_weight": float(best),
        }
        print(f"{corpus}: {json.dumps(result['corpora'][corpus])}", flush=True)

    samples, streams = [], []
    for weights, prompt, params in (
        ((0.5, 0.5), "The king", SamplingParams(max_tokens=300, temperature=0.8, seed=1)),
        ((0.7, 0.3), "The king", SamplingParams(max_tokens=300, temperature=0.8, seed=1)),
        ((0.5, 0.5), "My fellow Americans", SamplingParams(max_tokens=300, improbability=0.01, seed=2)),
    ):
        model = BlendedModel([c.model for c in checkpoints], [c.tokenizer for c in checkpoints], weights, names)
        started = time.perf_counter()
        stream = generate(model, model.tokenizer, [prompt], params)[0]
        streams.append((model, stream))
        samples.append({"blend": "+".join(f"{n}:{w:g}" for n, w in zip(names, weights)), "prompt": prompt,
                        "params": {k: v for k, v in params.model_dump(mode="json").items() if v not in (None, (), [])},
                        "text": prompt + stream.text, "seconds": round(time.perf_counter() - started, 1),
                        "picks": len(stream.picks),
                        "mean_log10_pick_probability": round(sum(math.log10(p) for _, p in stream.picks)
                                                             / len(stream.picks), 3) if stream.picks else None})
        print(f"\n[{samples[-1]['blend']}, {params.model_dump(mode='json')}]\n{prompt}{stream.text}", flush=True)
    result["samples"] = samples
    result["pictures"] = pictures(checkpoints, names, streams[-1], Path(args.out).with_name("blend_picture.png"))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
