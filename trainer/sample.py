"""One sampler for every model family, batched, with per-row parameters.

`BatchSampler` holds a batch of independent generation streams over one model. Streams join with
`add()` (their prompt is fed through the model once, to warm the state), every `step()` advances all
of them by one token together, and finished streams leave at the step boundary. The serving engine
uses it directly; `generate()` is the one-shot convenience.

Per row: greedy (temperature 0), temperature, top-k, top-p, a repetition guard, stop sequences or
stop at the end of a sentence, a length limit, a seed, and the *improbability drive*: a target
probability p in (0, 1] picks, at each step, the token whose probability (under the model, at
temperature 1) is nearest p; with a tolerance it samples uniformly among the tokens within
p·(1 ± tolerance). p = 1 is greedy; small p walks the long tail.

Randomness comes from a counter-based hash of (seed, position), not from a shared generator, so a
stream's draws do not depend on which other streams share its batch: same checkpoint, prompt,
parameters and seed give the same text.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import asdict, dataclass, field

import torch

from .model import LanguageModel, State, cat_states, select_state


@dataclass
class SamplingParams:
    max_tokens: int = 200
    temperature: float = 1.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    improbability: float = 0.0  # target probability in (0, 1]; 0 = off
    tolerance: float = 0.0  # improbability band, relative to the target
    repetition_penalty: float = 1.0  # > 1 discourages tokens seen in the last `repetition_window`
    repetition_window: int = 32
    stop: tuple[str, ...] = ()
    stop_at_sentence_end: bool = False
    seed: int | None = None  # None = a fresh random seed (recorded on the stream)

    def __post_init__(self) -> None:
        self.stop = tuple(self.stop)
        checks = [
            (self.max_tokens >= 1, "max_tokens must be at least 1"),
            (self.temperature >= 0 and math.isfinite(self.temperature), "temperature must be 0 (greedy) or positive"),
            (self.top_k >= 0, "top_k must be 0 (off) or positive"),
            (0 < self.top_p <= 1, "top_p must be in (0, 1]"),
            (0 <= self.improbability <= 1, "improbability must be a probability in (0, 1], or 0 for off"),
            (self.tolerance >= 0, "tolerance must be non-negative"),
            (self.repetition_penalty >= 1, "repetition_penalty must be at least 1"),
            (self.repetition_window >= 1, "repetition_window must be at least 1"),
            (all(self.stop), "stop sequences must not be empty"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["stop"] = list(self.stop)
        return d

    @classmethod
    def from_dict(cls, data: dict) -> SamplingParams:
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown sampling parameters: {', '.join(sorted(unknown))}")
        return cls(**data)


@dataclass
class Stream:
    prompt: str
    params: SamplingParams
    seed: int
    unknown: list[str]  # prompt characters/words outside the vocabulary (dropped or <unk>)
    tokens: list[int] = field(default_factory=list)
    probabilities: list[float] = field(default_factory=list)  # model probability of each chosen token
    text: str = ""  # the completion so far
    done: bool = False
    finish_reason: str = ""  # length | stop | sentence


class BatchSampler:
    def __init__(self, model: LanguageModel, tokenizer, device: str | torch.device = "cpu"):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.streams: list[Stream] = []
        self.state: State | None = None
        self.current = torch.empty(0, dtype=torch.long, device=self.device)  # next input token per row
        self.recent = torch.empty(0, 0, dtype=torch.long, device=self.device)  # repetition window per row
        self._rows: _RowParams | None = None

    def __len__(self) -> int:
        return len(self.streams)

    @torch.inference_mode()
    def add(self, prompt: str, params: SamplingParams) -> Stream:
        seed = params.seed if params.seed is not None else secrets.randbits(31)
        stream = Stream(prompt, params, seed, self.tokenizer.unknown(prompt))
        ids = self.tokenizer.encode(prompt) or self.tokenizer.encode(self.tokenizer.default_prime())
        prompt_ids = torch.tensor(ids, dtype=torch.long, device=self.device)
        state = self.model.init_state(1, self.device)
        if len(ids) > 1:
            _, state = self.model(prompt_ids[None, :-1], state)
        window = max([s.params.repetition_window for s in self.streams] + [params.repetition_window])
        recent = torch.full((1, window), -1, dtype=torch.long, device=self.device)
        tail = prompt_ids[-window:]
        recent[0, window - len(tail):] = tail
        self.state = state if self.state is None else cat_states([self.state, state])
        self.current = torch.cat([self.current, prompt_ids[-1:]])
        self.recent = torch.cat([_widen(self.recent, window), recent])
        self.streams.append(stream)
        self._rows = None
        return stream

    @torch.inference_mode()
    def step(self) -> list[Stream]:
        """Advance every stream by one token; return the streams that finished (they leave the batch)."""
        if not self.streams:
            return []
        if self._rows is None:
            self._rows = _RowParams(self.streams, self.device)
        logits, self.state = self.model.step(self.current, self.state)
        tokens, probs = choose(logits, self._rows, self.recent)
        self._rows.counters += 1
        self.current = tokens
        self.recent = torch.cat([self.recent[:, 1:], tokens[:, None]], 1)
        finished, keep = [], []
        for row, (stream, token, p) in enumerate(zip(self.streams, tokens.tolist(), probs.tolist())):
            self._append(stream, token, p)
            if stream.done:
                finished.append(stream)
            else:
                keep.append(row)
        if finished:
            self._leave(keep)
        return finished

    def run(self) -> None:
        while self.streams:
            self.step()

    def _append(self, stream: Stream, token: int, probability: float) -> None:
        stream.tokens.append(token)
        stream.probabilities.append(probability)
        if self.tokenizer.kind == "char":
            stream.text += self.tokenizer.vocab[token]
        else:
            stream.text = self.tokenizer.decode(stream.tokens)
        params = stream.params
        for stop in params.stop:
            at = stream.text.find(stop, max(0, len(stream.text) - len(stop) - 64))
            if at >= 0:
                stream.text, stream.done, stream.finish_reason = stream.text[:at], True, "stop"
                return
        if params.stop_at_sentence_end and self.tokenizer.ends_sentence(token) and len(stream.tokens) > 1:
            stream.done, stream.finish_reason = True, "sentence"
        elif len(stream.tokens) >= params.max_tokens:
            stream.done, stream.finish_reason = True, "length"

    def _leave(self, keep: list[int]) -> None:
        index = torch.tensor(keep, dtype=torch.long, device=self.device)
        self.streams = [self.streams[i] for i in keep]
        self.state = select_state(self.state, index) if keep else None
        self.current, self.recent = self.current[index], self.recent[index]
        self._rows = self._rows.select(index) if keep else None


def _widen(recent: torch.Tensor, window: int) -> torch.Tensor:
    """Left-pad every row's repetition window to `window` columns (-1 = empty)."""
    if recent.size(1) >= window:
        return recent
    pad = torch.full((recent.size(0), window - recent.size(1)), -1, dtype=torch.long, device=recent.device)
    return torch.cat([pad, recent], 1)


class _RowParams:
    """Per-row sampling parameters as tensors, rebuilt only when rows join."""

    def __init__(self, streams: list[Stream], device: torch.device):
        def col(values, dtype=torch.float32):
            return torch.tensor(values, dtype=dtype, device=device)

        ps = [s.params for s in streams]
        self.temperature = col([p.temperature for p in ps])
        self.top_k = col([p.top_k for p in ps], torch.long)
        self.top_p = col([p.top_p for p in ps])
        self.target = col([p.improbability for p in ps])
        self.tolerance = col([p.tolerance for p in ps])
        self.penalty = col([p.repetition_penalty for p in ps])
        self.window = col([p.repetition_window for p in ps], torch.long)
        self.seeds = col([_seed_key(s.seed) for s in streams], torch.long)
        self.counters = col([len(s.tokens) for s in streams], torch.long)
        # Python-side flags keep the common case (plain temperature sampling) to a handful of ops.
        self.any_greedy = any(p.temperature == 0 for p in ps)
        self.any_temperature = any(p.temperature not in (0.0, 1.0) for p in ps)
        self.any_top_k = any(p.top_k for p in ps)
        self.any_top_p = any(p.top_p < 1 for p in ps)
        self.any_improbable = any(p.improbability > 0 for p in ps)
        self.any_tolerance = any(p.tolerance > 0 and p.improbability > 0 for p in ps)
        self.any_penalty = any(p.repetition_penalty > 1 for p in ps)

    def select(self, index: torch.Tensor) -> _RowParams:
        new = object.__new__(_RowParams)
        for name, value in vars(self).items():
            setattr(new, name, value[index] if torch.is_tensor(value) else value)
        return new


_M32 = 0xFFFFFFFF


def _mix32(x: torch.Tensor) -> torch.Tensor:
    # A well-mixing 32-bit integer hash; all products stay below 2**63 in int64.
    x = (((x >> 16) ^ x) * 0x45D9F3B) & _M32
    x = (((x >> 16) ^ x) * 0x45D9F3B) & _M32
    return (x >> 16) ^ x


def _seed_key(seed: int) -> int:
    return (seed ^ (seed >> 32) * 0x9E3779B1) & _M32


def uniform(seeds: torch.Tensor, counters: torch.Tensor) -> torch.Tensor:
    """U[0, 1) for each (seed, counter), independent of batch composition."""
    x = _mix32(_mix32(seeds) ^ ((counters * 0x27D4EB2F) & _M32))
    return x.double() / 2.0**32


def choose(logits: torch.Tensor, rows: _RowParams, recent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick one token per row. Returns (tokens, probability of each token under the model at T=1)."""
    logits = logits.float()
    V = logits.size(1)
    if rows.any_penalty:
        seen = torch.zeros(logits.size(0), V + 1, device=logits.device)
        window_mask = torch.arange(recent.size(1), device=logits.device) >= recent.size(1) - rows.window[:, None]
        seen.scatter_(1, torch.where((recent >= 0) & window_mask, recent, V), 1.0)
        seen = seen[:, :V].bool()
        penalty = rows.penalty[:, None]
        logits = torch.where(seen, torch.where(logits > 0, logits / penalty, logits * penalty), logits)
    model_probs = torch.softmax(logits, dim=1)

    scaled = logits / rows.temperature.clamp_min(1e-6)[:, None] if rows.any_temperature else logits
    if rows.any_top_k:
        k = rows.top_k.clamp(1, V)
        kth = torch.topk(scaled, int(k.max()), dim=1).values.gather(1, (k - 1)[:, None])
        kth = torch.where(rows.top_k[:, None] > 0, kth, torch.full_like(kth, -math.inf))
        scaled = scaled.masked_fill(scaled < kth, -math.inf)
    probs = torch.softmax(scaled, dim=1) if (rows.any_temperature or rows.any_top_k) else model_probs
    if rows.any_top_p:
        sorted_probs, order = probs.sort(dim=1, descending=True)
        drop = (sorted_probs.cumsum(1) - sorted_probs) >= rows.top_p[:, None]
        probs = torch.zeros_like(probs).scatter_(1, order, sorted_probs.masked_fill(drop, 0.0))

    u = uniform(rows.seeds, rows.counters).to(probs.dtype)
    tokens = _inverse_cdf(probs, u)
    if rows.any_greedy:
        tokens = torch.where(rows.temperature == 0, logits.argmax(1), tokens)
    if rows.any_improbable:
        distance = (model_probs - rows.target[:, None]).abs()
        improbable = distance.argmin(1)
        if rows.any_tolerance:
            band = (distance <= (rows.target * rows.tolerance)[:, None]).float()
            in_band = band.sum(1) > 0
            banded = _inverse_cdf(band, u)
            improbable = torch.where(in_band & (rows.tolerance > 0), banded, improbable)
        tokens = torch.where(rows.target > 0, improbable, tokens)
    return tokens, model_probs.gather(1, tokens[:, None]).squeeze(1)


def _inverse_cdf(weights: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    cdf = weights.cumsum(1)
    index = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(1), right=True).squeeze(1)
    return index.clamp_max(weights.size(1) - 1)


def generate(model: LanguageModel, tokenizer, prompts: list[str],
             params: SamplingParams | list[SamplingParams]) -> list[Stream]:
    """Complete every prompt (batched); returns one finished Stream per prompt, in order."""
    per_row = params if isinstance(params, list) else [params] * len(prompts)
    sampler = BatchSampler(model, tokenizer, next(model.parameters()).device)
    streams = [sampler.add(prompt, p) for prompt, p in zip(prompts, per_row)]
    sampler.run()
    return streams
