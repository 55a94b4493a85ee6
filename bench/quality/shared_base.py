"""Personas that share the base's weights and differ by a small per-persona part, against full fine-tunes
(issue 23, "Many personas"): is the quality kept, and does one batched step serving many personas pay?

    nice -n 19 .venv/bin/python -m bench.quality.shared_base --part quality --corpora alice   # 6 fine-tunes of 228 steps
    flock /work/notes/bench.lock .venv/bin/python -m bench.quality.shared_base --part speed --streams 128   # ~8 min
    nice -n 19 .venv/bin/python -m bench.quality.shared_base --part quality --variants lora-8 --lr-scales 1  # the recipe's lr
    .venv/bin/python -m bench.quality.shared_base --part sizes

Every character persona is a fine-tune of trainer/pretrained/base (a 2x512 char LSTM, 3.4 M parameters,
13.5 MB in fp32). The per-persona parts tried:
  head+embed   the output layer (weight and bias) and the input embedding: 85 K parameters;
  lora-R       head+embed plus low-rank deltas W + B·A (rank R: 8, 16, 32) on the input and recurrent matrices
               of both LSTM layers (Hu et al. 2021), the base's matrices frozen: 164 K, 242 K, 399 K parameters.

(a) quality: each variant fine-tuned from the base like the corpus's recipe (trainer/recipes/<corpus>.json:
    its batch shape, dropout, learning rate, warm-up and warm-down, precision), for the same STEP budget
    (default 228: what the alice recipe's 3-minute fine-tune made on this host, bench/results/finetune.json), same
    split, data order and seed, all by one loop (below) so that nothing but the trainable part differs: the full
    fine-tune is that loop with every weight trainable; the adapters at 3x the recipe's learning rate
    (--lr-scales), as low-rank and head-only tuning usually want a higher one (1x: the check). Scored afterwards the same way: the adapters merged into a plain
    RecurrentLM (W + B·A), trainer.evaluate over the whole held-out split in float32, and the real-word rate
    (bench/quality/quality_report.py's definition) of 4 samples of 600 characters at temperature 0.8. The
    base itself (no step) is the reference row: the share of the full fine-tune's gain a variant keeps is
    (base - variant) / (base - full).
(b) speed: B streams of 120 characters (temperature 0.8, prompt "It was"), their personas drawn Zipf (s 1.1,
    as bench/speed/many_personas.py draws them) over P personas, decoded through trainer.sample.BatchSampler
    in one of two ways:
      per-checkpoint  one sampler (one batch) per persona, each a full merged model, stepped in turn until all
                      are done: what the engine does today (worker/serve/engine.py batches by checkpoint);
      shared          one sampler for all B streams over SharedStepLM: the base's matrices in one GEMM for
                      every stream, the per-persona parts applied per run of same-persona rows (the streams
                      join sorted by persona, so a step has one run per distinct persona).
    Reported: characters per CPU second of this process (prefill included), and as a check, the share of
    streams whose text is identical to the per-checkpoint text (same seed: the sampler's draws do not depend on
    the batch), and the largest logit difference between the two ways on the first step.
(c) sizes: parameters and bytes of each per-persona part (fp32, and the safetensors file in fp16 as the base
    ships), against a full checkpoint.

Sections of bench/results/shared_base.json ("quality", "speed", "sizes") are merged, so the parts may run
apart (the two corpora in two processes).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import random
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from bench.common import RESULTS, load_corpus, print_table
from trainer import checkpoint as ckpt
from trainer.model import LanguageModel, ModelConfig, RecurrentLM, State, build_model
from trainer.pretrained import resolve_init

OUT = RESULTS / "shared_base.json"
MATRICES = ("weight_ih_l0", "weight_hh_l0")
QUALITY_KEY = ("corpus", "variant", "lr_scale", "steps")
HEAD_EMBED = ("embed.weight", "head.proj.weight", "head.proj.bias")


# -- the per-persona part: which weights a persona owns ------------------------------------------------------

def lora_rank(variant: str) -> int:
    """The LoRA rank a variant names (lora-8 → 8); 0 for full and head+embed."""
    return int(variant.split("-")[1]) if variant.startswith("lora-") else 0


class LoRA(nn.Module):
    """A low-rank delta B·A (out × in, rank r) on one frozen matrix; B starts at zero, so the delta does."""

    def __init__(self, n_out: int, n_in: int, rank: int):
        super().__init__()
        self.A = nn.Parameter(torch.randn(rank, n_in) / n_in ** 0.5)
        self.B = nn.Parameter(torch.zeros(n_out, rank))

    def delta(self) -> torch.Tensor:
        return self.B @ self.A


class AdaptedLM(RecurrentLM):
    """A char LSTM whose trainable weights are a variant's: all of them (full), the head and embedding
    (head+embed), or those and LoRA deltas on every LSTM matrix (lora-R). Trains through the fused LSTM op
    with the merged matrices W + B·A; `merged()` is the plain RecurrentLM it amounts to."""

    def __init__(self, model: RecurrentLM, variant: str):
        super().__init__(model.config)
        self.load_state_dict(model.state_dict())
        self.variant, rank = variant, lora_rank(variant)
        if variant != "full":
            for name, p in self.named_parameters():
                p.requires_grad_(name in HEAD_EMBED)
        self.lora = nn.ModuleList(
            nn.ModuleDict({m: LoRA(*getattr(layer, m).shape, rank) for m in MATRICES}) for layer in self.layers
        ) if rank else None

    def matrices(self, i: int) -> list[torch.Tensor]:
        layer = self.layers[i]
        weights = [getattr(layer, m) for m in MATRICES]
        if self.lora is not None:
            weights = [w + self.lora[i][m].delta().to(w.dtype) for w, m in zip(weights, MATRICES)]
        return [*weights, layer.bias_ih_l0, layer.bias_hh_l0]

    def forward(self, idx: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        if state is None:
            state = self.init_state(idx.size(0), idx.device)
        x = self.drop(self.embed(idx))
        new_layers = []
        for i in range(len(self.layers)):
            native = tuple(s[:, i].unsqueeze(0).contiguous() for s in state)
            x, h, c = torch.lstm(x, native, self.matrices(i), True, 1, 0.0, self.training, False, True)
            new_layers.append((h, c))
            x = self.drop(x)
        return x, tuple(torch.cat(parts, 0).transpose(0, 1) for parts in zip(*new_layers))

    @torch.no_grad()
    def merged(self) -> RecurrentLM:
        plain = RecurrentLM(self.config)
        plain.load_state_dict({k: v for k, v in self.state_dict().items() if not k.startswith("lora.")})
        for i, layer in enumerate(plain.layers):
            for m, w in zip(MATRICES, self.matrices(i)):
                getattr(layer, m).copy_(w)
        return plain.eval()

    def persona_part(self) -> dict[str, torch.Tensor]:
        """The tensors a persona would store on top of the base."""
        if self.variant == "full":
            return dict(self.state_dict())
        return {k: v for k, v in self.state_dict().items() if k in HEAD_EMBED or k.startswith("lora.")}


# -- (a) quality: one fine-tuning loop for every variant ------------------------------------------------------

def start_model(config, tokenizer, base: ckpt.Checkpoint) -> RecurrentLM:
    """The base's weights in a model of the fine-tune's vocabulary, as trainer.train starts a fine-tune."""
    from trainer.finetune import load_base_weights

    torch.manual_seed(config.seed)
    model = build_model(ModelConfig.from_dict({**base.meta["model"], "vocab_size": len(tokenizer),
                                               "dropout": config.dropout}))
    load_base_weights(model, base.model)
    return model


def finetune(model: AdaptedLM, config, data, precision: str, steps: int, lr_scale: float) -> dict:
    """`steps` steps of the recipe's schedule over the trainable weights (the trainer's own learning_rate,
    data order, carried state, clipping and AdamW); returns the run's figures."""
    from trainer.checkpoint import RunState
    from trainer.train import learning_rate, total_steps_of

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, betas=(0.9, 0.99), weight_decay=config.weight_decay,
                                  fused=True)
    state = RunState(model, optimizer, model.init_state(data.batch_size))
    total = total_steps_of(config, data.steps_per_epoch)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
    model.train()
    started, cpu, losses = time.perf_counter(), time.process_time(), []
    for step in range(steps):
        state.step = step
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config, state, total) * lr_scale
        if step and step % data.steps_per_epoch == 0:
            state.carry = model.init_state(data.batch_size)
        x, y = data.streams.chunk(step)
        with autocast:
            loss, carry = model.loss(x, y, state.carry)
        state.carry = tuple(s.detach() for s in carry)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        optimizer.step()
        losses.append(loss.item())
    return {"steps": steps, "train_loss_last50": round(sum(losses[-50:]) / len(losses[-50:]), 4),
            "trainable_params": sum(p.numel() for p in params), "seconds": round(time.perf_counter() - started, 1),
            "cpu_s": round(time.process_time() - cpu, 1)}


def heldout_loss(model: RecurrentLM, data) -> float:
    from trainer.evaluate import eval_streams, evaluate

    return evaluate(model, eval_streams(data.val_ids, 0, data.batch_size, data.seq_len, data.block))


def word_rate(model: RecurrentLM, tokenizer, corpus_text: str, prompt: str) -> tuple[float | None, str]:
    """The real-word rate of 4 samples of 600 characters at temperature 0.8, and the first sample."""
    from bench.quality.quality_report import WORD_RE, real_word_rate
    from core.contracts import SamplingParams
    from trainer.sample import generate

    counts = Counter(w.lower() for w in WORD_RE.findall(corpus_text))
    params = [SamplingParams(max_tokens=600, temperature=0.8, seed=i) for i in range(4)]
    texts = [s.text for s in generate(model, tokenizer, [prompt] * 4, params)]
    return real_word_rate(texts, counts), prompt + texts[0]


PROMPTS = {"alice": "Alice was", "trump": "We are going to"}


def quality(corpus_name: str, variants: list[str], steps: int, lr_scales: list[float], seed: int,
            save=lambda rows: None) -> list[dict]:
    """The base's row and one row per (variant, learning-rate scale), `save`d after each run."""
    from trainer.data import load_data
    from trainer.precision import resolve_precision
    from trainer.recipes import load_recipe
    from trainer.train import TrainConfig

    config = TrainConfig.from_dict({**load_recipe(corpus_name), "minutes": 0, "max_steps": steps, "seed": seed,
                                    "out_dir": tempfile.gettempdir()})
    corpus, base = load_corpus(config.corpus), ckpt.load(resolve_init(config.init))
    data = load_data(config, corpus, torch.device("cpu"), None, base, [])
    precision = resolve_precision(config.precision, "cpu")
    prompt = PROMPTS.get(corpus_name, "The")
    start = start_model(config, data.tokenizer, base).eval()
    rate, sample = word_rate(start, data.tokenizer, corpus.text, prompt)
    rows = [{"corpus": corpus_name, "variant": "base (no step)", "steps": 0, "trainable_params": 0,
             "heldout_nats": round(heldout_loss(start, data), 4), "real_word_rate": round(rate, 3), "sample": sample}]
    print(json.dumps(rows[-1], ensure_ascii=False), flush=True)
    runs = [("full", 1.0)] if "full" in variants else []
    runs += [(v, scale) for scale in lr_scales for v in variants if v != "full"]
    for variant, scale in runs:
        model = AdaptedLM(start_model(config, data.tokenizer, base), variant)
        run = finetune(model, config, data, precision, steps, scale)
        merged = model.merged()
        rate, sample = word_rate(merged, data.tokenizer, corpus.text, prompt)
        rows.append({"corpus": corpus_name, "variant": variant, "lr_scale": scale, "precision": precision, **run,
                     "heldout_nats": round(heldout_loss(merged, data), 4), "real_word_rate": round(rate, 3),
                     "sample": sample})
        print(json.dumps(rows[-1], ensure_ascii=False), flush=True)
        save(rows)
    return rows


def compare(rows: list[dict]) -> None:
    """Each row's gap to the full fine-tune of its corpus and step budget, and the share of that fine-tune's gain
    over the base it keeps (rows of several runs: the file's)."""
    for corpus, steps in {(r["corpus"], r["steps"]) for r in rows if r["steps"]}:
        group = [r for r in rows if r["corpus"] == corpus and r["steps"] in (0, steps)]
        full = next((r["heldout_nats"] for r in group if r["variant"] == "full"), None)
        base = next((r["heldout_nats"] for r in group if r["steps"] == 0), None)
        if full is None or base is None:
            continue
        for r in group:
            r["gap_vs_full"] = round(r["heldout_nats"] - full, 4)
            r["share_of_full_gain"] = round((base - r["heldout_nats"]) / (base - full), 3)


# -- (b) speed: one shared step for many personas -------------------------------------------------------------

class SharedStepLM(LanguageModel):
    """The base's LSTM shared by P personas, each with its own embedding, output layer and (optionally) LoRA
    deltas. The state carries each row's persona, (h, c, persona), so BatchSampler stacks, splits and joins
    streams of different personas unchanged; `joining` is the persona of the next `init_state`.

    A step: the embedding rows gathered per stream (one table, row persona·V + token); each layer's base
    matrices in one GEMM for all streams; then, per run of consecutive rows of one persona, its LoRA delta
    added in place ([x, h] · blockdiag(A_ih, A_hh)ᵀ · [B_ih, B_hh]ᵀ: two small GEMMs a run and layer) and its
    output layer written into its rows of the logits."""

    def __init__(self, base: RecurrentLM, parts: list[AdaptedLM]):
        super().__init__()
        self.config, self.base = base.config, base.eval()
        self.vocab = base.config.vocab_size
        self.embed = torch.cat([p.embed.weight.detach() for p in parts])  # (P·V, E)
        self.head_wt = [p.head.proj.weight.detach().t().contiguous() for p in parts]  # (H, V) each
        self.head_b = [p.head.proj.bias.detach() for p in parts]
        layers = base.layers
        self.w_cat = [torch.cat([ly.weight_ih_l0, ly.weight_hh_l0], 1).t().contiguous() for ly in layers]
        self.b_sum = [ly.bias_ih_l0 + ly.bias_hh_l0 for ly in layers]
        self.lora = parts[0].lora is not None
        if self.lora:
            self.down = [[torch.block_diag(*(p.lora[i][m].A.detach() for m in MATRICES)).t().contiguous()
                          for p in parts] for i in range(len(layers))]  # (in + H, 2r)
            self.up = [[torch.cat([p.lora[i][m].B.detach() for m in MATRICES], 1).t().contiguous()
                        for p in parts] for i in range(len(layers))]  # (2r, 4H)
        self.joining = 0

    def init_state(self, batch_size: int, device: torch.device | str = "cpu") -> State:
        h, c = self.base.init_state(batch_size, device)
        return h, c, torch.full((batch_size,), self.joining, dtype=torch.long, device=device)

    @staticmethod
    def runs(who: torch.Tensor) -> list[tuple[int, int, int]]:
        """(persona, first row, end row) of each run of consecutive rows of one persona."""
        personas, counts = torch.unique_consecutive(who, return_counts=True)
        runs, start = [], 0
        for p, n in zip(personas.tolist(), counts.tolist()):
            runs.append((p, start, start + n))
            start += n
        return runs

    def _cell(self, i: int, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor, runs) -> tuple:
        """One LSTM layer for every row: [x, h] times the base's matrices in one GEMM, each run's LoRA delta,
        then the gates (measured no slower than torch.lstm_cell here, and it takes the per-run deltas)."""
        xh = torch.cat([x, h], 1)
        gates = torch.addmm(self.b_sum[i], xh, self.w_cat[i])
        if self.lora:
            for p, start, end in runs:
                gates[start:end].addmm_(xh[start:end] @ self.down[i][p], self.up[i][p])
        n = h.size(1)
        ifo = torch.sigmoid(gates)  # gate order i, f, g, o; the g quarter is unused
        c = torch.addcmul(ifo[:, n:2 * n] * c, ifo[:, :n], torch.tanh(gates[:, 2 * n:3 * n]))
        return ifo[:, 3 * n:] * torch.tanh(c), c

    def step(self, idx: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        h_all, c_all, who = state
        runs = self.runs(who)
        x = F.embedding(who * self.vocab + idx, self.embed)
        new_h, new_c = [], []
        for i in range(len(self.base.layers)):
            h, c = self._cell(i, x, h_all[:, i], c_all[:, i], runs)
            new_h.append(h)
            new_c.append(c)
            x = h
        logits = x.new_empty(x.size(0), self.vocab)
        for p, start, end in runs:
            torch.addmm(self.head_b[p], x[start:end], self.head_wt[p], out=logits[start:end])
        return logits, (torch.stack(new_h, 1), torch.stack(new_c, 1), who)

    def forward(self, idx: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """A prompt's prefill. Without LoRA, run by run through the fused LSTM op with the base's matrices; with
        LoRA, token by token through `step` (merging a persona's deltas into full matrices for a prompt of a few
        characters cost more, measured: 33 M multiply-adds a layer)."""
        state = state if state is not None else self.init_state(idx.size(0), idx.device)
        if self.lora:
            hidden = []
            for t in range(idx.size(1)):
                _, state = self.step(idx[:, t], state)
                hidden.append(state[0][:, -1])
            return torch.stack(hidden, 1), state
        h_all, c_all, who = state
        hidden, hs, cs = [], [], []
        for p, start, end in self.runs(who):
            x = F.embedding(idx[start:end] + p * self.vocab, self.embed)
            layer_h, layer_c = [], []
            for i, layer in enumerate(self.base.layers):
                native = (h_all[start:end, i].unsqueeze(0).contiguous(), c_all[start:end, i].unsqueeze(0).contiguous())
                x, h, c = torch.lstm(x, native, layer._flat_weights, True, 1, 0.0, False, False, True)
                layer_h.append(h[0])
                layer_c.append(c[0])
            hidden.append(x)
            hs.append(torch.stack(layer_h, 1))
            cs.append(torch.stack(layer_c, 1))
        return torch.cat(hidden), (torch.cat(hs), torch.cat(cs), who)


def random_personas(base: RecurrentLM, count: int, variant: str) -> list[AdaptedLM]:
    """`count` per-persona parts: the base's head and embedding perturbed, LoRA deltas drawn at random (the
    speed of a step does not depend on the values; the check against the merged models needs them nonzero)."""
    parts = []
    for k in range(count):
        torch.manual_seed(k)
        part = AdaptedLM(base, variant)
        with torch.no_grad():
            for p in part.parameters():
                if p.requires_grad:
                    scale = p.std().item() if p.numel() > 1 and p.abs().max() > 0 else 1.0  # LoRA's B starts at 0
                    p.add_(torch.randn_like(p) * 1e-2 * scale)
        parts.append(part.eval())
    return parts


def zipf_draws(personas: int, n: int, s: float, rng: random.Random) -> list[int]:
    from bench.speed.many_personas import zipf_draws as draws

    return draws(personas, n, s, rng)


def decode_per_checkpoint(models: list[RecurrentLM], tokenizer, draws: list[int], chars: int) -> list[str]:
    """The engine's way: one sampler per persona, stepped in turn until every stream is done."""
    from core.contracts import SamplingParams
    from trainer.sample import BatchSampler

    samplers, streams = {}, []
    for row, p in enumerate(draws):
        sampler = samplers.setdefault(p, BatchSampler(models[p], tokenizer))
        streams.append(sampler.add("It was", SamplingParams(max_tokens=chars, temperature=0.8, seed=row)))
    active = list(samplers.values())
    while active:
        for sampler in active:
            sampler.step()
        active = [s for s in active if len(s)]
    return [s.text for s in streams]


def decode_shared(model: SharedStepLM, tokenizer, draws: list[int], chars: int) -> list[str]:
    """One sampler, one step for every stream; streams join sorted by persona (one run per persona)."""
    from core.contracts import SamplingParams
    from trainer.sample import BatchSampler

    sampler, streams = BatchSampler(model, tokenizer), {}
    for row in sorted(range(len(draws)), key=lambda r: draws[r]):
        model.joining = draws[row]
        streams[row] = sampler.add("It was", SamplingParams(max_tokens=chars, temperature=0.8, seed=row))
    sampler.run()
    return [streams[row].text for row in range(len(draws))]


def timed(fn, *args) -> tuple[float, float, list[str]]:
    started, cpu = time.perf_counter(), time.process_time()
    texts = fn(*args)
    return time.process_time() - cpu, time.perf_counter() - started, texts


@torch.inference_mode()
def first_step_gap(shared: SharedStepLM, merged: list[RecurrentLM], draws: list[int]) -> float:
    """The largest |logit| difference between the shared step and each row's merged model, from a random state."""
    rows = sorted(draws)
    torch.manual_seed(0)
    idx = torch.randint(0, shared.vocab, (len(rows),))
    h, c = (torch.randn(len(rows), shared.config.n_layers, shared.config.n_hidden) * 0.5 for _ in range(2))
    logits, _ = shared.step(idx, (h, c, torch.tensor(rows)))
    gap = 0.0
    for r, p in enumerate(rows):
        own, _ = merged[p].step(idx[r:r + 1], (h[r:r + 1], c[r:r + 1]))
        gap = max(gap, (own[0] - logits[r]).abs().max().item())
    return gap


def speed(batches: list[int], personas: list[int], variants: list[str], chars: int, zipf: float,
          rounds: int) -> list[dict]:
    base_ckpt = ckpt.load(resolve_init("base"))
    base = base_ckpt.model.float().eval()
    tokenizer = base_ckpt.tokenizer
    designs = {v: random_personas(base, max(personas), v) for v in variants}
    rows = []
    for batch in batches:
        for count in personas:
            draws = zipf_draws(count, batch, zipf, random.Random(count * 1000 + batch))
            for variant, parts in designs.items():
                merged = [p.merged() for p in parts[:count]]
                shared = SharedStepLM(base, parts[:count])
                gap = first_step_gap(shared, merged, draws)
                per_ckpt, one_step = [], []
                for _ in range(rounds):  # interleaved: a load swing hits both ways alike
                    per_ckpt.append(timed(decode_per_checkpoint, merged, tokenizer, draws, chars))
                    one_step.append(timed(decode_shared, shared, tokenizer, draws, chars))
                total = sum(len(t) for t in per_ckpt[0][2])
                same = sum(a == b for a, b in zip(per_ckpt[0][2], one_step[0][2])) / batch
                best = {name: min(runs, key=lambda r: r[0]) for name, runs in
                        (("per_checkpoint", per_ckpt), ("shared", one_step))}
                row = {"streams": batch, "personas": count, "distinct": len(set(draws)), "part": variant,
                       "per_ckpt_chars_cpu_s": round(total / best["per_checkpoint"][0]),
                       "shared_chars_cpu_s": round(total / best["shared"][0]),
                       "per_ckpt_chars_s": round(total / best["per_checkpoint"][1]),
                       "shared_chars_s": round(total / best["shared"][1])}
                row["gain"] = round(row["shared_chars_cpu_s"] / row["per_ckpt_chars_cpu_s"], 2)
                row.update({"same_text": round(same, 3), "max_logit_gap": float(f"{gap:.2e}"),
                            "load_1min": round(os.getloadavg()[0], 1)})
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


# -- (c) sizes -----------------------------------------------------------------------------------------------

def sizes(variants: list[str]) -> list[dict]:
    from safetensors.torch import save_file

    base = ckpt.load(resolve_init("base")).model.float()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for variant in ["full", *variants]:
            part = AdaptedLM(base, variant).persona_part()
            path = Path(tmp) / f"{variant}.safetensors"
            save_file({k: v.detach().half().contiguous() for k, v in part.items()}, str(path))
            params = sum(v.numel() for v in part.values())
            rows.append({"part": variant, "params": params, "fp32_mb": round(params * 4 / 1e6, 3),
                         "fp16_file_mb": round(path.stat().st_size / 1e6, 3)})
    for r in rows:
        r["share_of_full"] = round(r["params"] / rows[0]["params"], 4)
    return rows


# -- the report -----------------------------------------------------------------------------------------------

def machine() -> dict:
    from trainer.precision import cpu_model

    return {"cpu": cpu_model(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "load_average": os.getloadavg(), "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def merge_results(out: Path, section: str, rows: list[dict], settings: dict, key: tuple[str, ...]) -> None:
    """Put `rows` into `section` of `out`, replacing rows with the same `key` values, under a file lock (two
    quality processes, one a corpus, write the same file)."""
    with open(Path(tempfile.gettempdir()) / f"{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = json.loads(out.read_text()) if out.is_file() else {}
        old = data.get(section, {}).get("rows", [])
        new_keys = {tuple(r.get(k) for k in key) for r in rows}
        kept = [r for r in old if tuple(r.get(k) for k in key) not in new_keys]
        runs = [r for r in data.get(section, {}).get("runs", []) if r.get("pid") != os.getpid()]
        runs.append({"pid": os.getpid(), "machine": machine(), "settings": settings})
        data[section] = {"runs": runs, "rows": kept + rows}
        if section == "quality":
            compare(data[section]["rows"])
        out.write_text(json.dumps(data, indent=1, ensure_ascii=False))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", nargs="+", choices=("quality", "speed", "sizes"), default=["sizes"])
    parser.add_argument("--corpora", nargs="+", default=["alice", "trump"])
    parser.add_argument("--variants", nargs="+", default=["full", "lora-32", "lora-16", "lora-8", "head+embed"])
    parser.add_argument("--steps", type=int, default=228, help="fine-tuning steps of every variant")
    parser.add_argument("--lr-scales", type=float, nargs="+", default=[3.0],
                        help="the adapters' learning rates, as multiples of the recipe's (full: the recipe's)")
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (the engine's on 2 cores)")
    parser.add_argument("--streams", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--personas", type=int, nargs="+", default=[1, 10, 100])
    parser.add_argument("--speed-variants", nargs="+", default=["head+embed", "lora-8", "lora-32"])
    parser.add_argument("--chars", type=int, default=120)
    parser.add_argument("--zipf", type=float, default=1.1)
    parser.add_argument("--rounds", type=int, default=2, help="speed: interleaved rounds, the best counted")
    parser.add_argument("--out", type=Path, default=OUT)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    if "sizes" in args.part:
        rows = sizes([v for v in args.variants if v != "full"])
        print_table("per-persona part vs a full checkpoint", rows)
        merge_results(args.out, "sizes", rows, settings, ("part",))
    if "quality" in args.part:
        for corpus in args.corpora:
            rows = quality(corpus, args.variants, args.steps, args.lr_scales, args.seed,
                           lambda rows: merge_results(args.out, "quality", rows, settings, QUALITY_KEY))
            compare(rows)
            print_table(f"{corpus}: {args.steps} steps, held-out nats/char (whole split, fp32)",
                        [{k: v for k, v in r.items() if k != "sample"} for r in rows])
    if "speed" in args.part:
        rows = speed(args.streams, args.personas, args.speed_variants, args.chars, args.zipf, args.rounds)
        print_table(f"one shared step vs per-checkpoint batches, {args.chars} chars a stream, Zipf {args.zipf}, "
                    f"{args.threads} thread(s)", rows)
        merge_results(args.out, "speed", rows, settings, ("streams", "personas", "part"))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
