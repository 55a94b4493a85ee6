"""One sampler for every model family, batched, with per-row parameters.

`BatchSampler` holds a batch of independent generation streams over one model. Streams join with
`add()` (their prompt is fed through the model once, to warm the state), every `step()` advances all
of them by one token together, and finished streams leave at the step boundary. The serving engine
uses it directly; `generate()` is the one-shot convenience.

Per row: greedy (temperature 0), temperature, top-k, top-p, a repetition guard, stop sequences or
stop at the end of a sentence, a length limit, a seed, and the *improbability drive*: a target
probability p in (0, 1] for what is written next, under the model at temperature 1.

- Word models: at each step, draw (seeded) from the model's distribution restricted to the tokens
  whose probability lies in the band [p / (1 + tolerance), p · (1 + tolerance)]; tolerance 0 means the
  default, 1 (a factor of 2 either way). If the band is empty, take the token nearest p in log space.
  p = 1 is greedy.
- Character models: the target applies to whole *words*, chosen among candidate words rolled out and
  scored at each word boundary: trainer/word_drive.py.

Special tokens (`<unk>` and anything spelled `<...>`) are never generated in any mode: they are
masked out of the logits, so every probability reported is the model's over what it may write.
Each improbability pick is recorded on the stream: `Stream.picks` = [(word or token, probability)].

Randomness comes from a counter-based hash of (seed, position) (trainer/draws.py), so a stream's draws do
not depend on which other streams share its batch: same checkpoint, prompt, parameters and seed give the
same text.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, field

import torch

from core.contracts import SamplingParams
from core.text import DOCUMENT_SEPARATOR

from .draws import effective_tolerance, inverse_cdf, mix32, vocab_mask
from .draws import seed_key as _seed_key
from .model import LanguageModel, State, cat_states, select_state
from .word_drive import WordDrive


@dataclass
class Stream:
    prompt: str
    params: SamplingParams
    seed: int
    unknown: list[str]  # prompt characters/words outside the vocabulary (dropped or <unk>)
    tokens: list[int] = field(default_factory=list)
    probabilities: list[float] = field(default_factory=list)  # model probability of each chosen token
    # Improbability picks: (word, P(word)) for character models, (token, P(token)) for word models.
    picks: list[tuple[str, float]] = field(default_factory=list)
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
        vocab = list(tokenizer.vocab)
        self._banned = vocab_mask(vocab, is_special, self.device)  # never generated, in any mode
        self._any_banned = bool(self._banned.any())
        # The word-level improbability drive, for character models only (word models pick tokens directly).
        self._words = WordDrive(self.model, vocab, self.device) if tokenizer.kind == "char" else None

    def __len__(self) -> int:
        return len(self.streams)

    @torch.inference_mode()
    def add(self, prompt: str, params: SamplingParams) -> Stream:
        seed = params.seed if params.seed is not None else secrets.randbits(31)
        stream = Stream(prompt, params, seed, self.tokenizer.unknown(prompt))
        ids = self.tokenizer.encode(prompt) or self.tokenizer.encode(self.tokenizer.default_prime())
        if self.tokenizer.kind == "char":
            # Read a document break first: training carries the state through the whole stream, so a zero
            # state is almost never seen, and from one a capitalised prompt ("ROMEO:") can lock a model into
            # a junk character ("££££"); after a break the model is where every document of its corpus starts.
            ids = self.tokenizer.encode(DOCUMENT_SEPARATOR) + ids
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
        if self._words is not None:
            self._words.join()
        self._rows = None
        return stream

    @torch.inference_mode()
    def step(self, model=None) -> list[Stream]:
        """Advance every stream by one token; return the streams that finished (they leave the batch).
        `model`: another model with the same state layout to take this step with (the serving engine's int8
        model for a batch of one); the prefill and the word drive's roll-outs keep the sampler's own."""
        if not self.streams:
            return []
        if self._rows is None:
            self._rows = _RowParams(self.streams, self.device, token_level=self._words is None)
        rows = self._rows
        logits, self.state = (model or self.model).step(self.current, self.state)
        tokens, probs, model_probs = _choose(logits, rows, self.recent, self._step_mask())
        if self._words is not None and rows.any_word_target:
            tokens, probs = self._words.drive(self.streams, rows, self.state, self.current, logits, tokens, probs,
                                              model_probs)
        elif rows.any_improbable:
            self._record_token_picks(tokens, probs)
        rows.counters += 1
        self.current = tokens
        if rows.any_penalty:  # only a row with a penalty reads its window (a penalty of 1 changes nothing)
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

    def drop(self, streams: list[Stream]) -> None:
        """Take `streams` out of the batch unfinished (a job whose caller gave up); the others go on."""
        leaving = {id(s) for s in streams}
        keep = [row for row, s in enumerate(self.streams) if id(s) not in leaving]
        if len(keep) < len(self.streams):
            self._leave(keep)

    def _step_mask(self) -> torch.Tensor | None:
        """Tokens no row may pick this step: special tokens, and word characters right after a driven word."""
        ended_words = self._words.step_mask(self._banned) if self._words is not None else None
        if ended_words is not None:
            return ended_words
        return self._banned if self._any_banned else None

    def _record_token_picks(self, tokens: torch.Tensor, probs: torch.Tensor) -> None:
        for stream, token, p in zip(self.streams, tokens.tolist(), probs.tolist()):
            if stream.params.improbability > 0:
                stream.picks.append((self.tokenizer.vocab[token], p))

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
        if self._words is not None:
            self._words.keep(keep)
        self.state = select_state(self.state, index) if keep else None
        self.current, self.recent = self.current[index], self.recent[index]
        self._rows = self._rows.select(index) if keep and self._rows is not None else None  # (None: rebuilt)


def is_special(token: str) -> bool:
    """`<unk>` and any other `<name>` marker: never written, in any sampling mode."""
    return len(token) > 2 and token.startswith("<") and token.endswith(">")


def _widen(recent: torch.Tensor, window: int) -> torch.Tensor:
    """Left-pad every row's repetition window to `window` columns (-1 = empty)."""
    if recent.size(1) >= window:
        return recent
    pad = torch.full((recent.size(0), window - recent.size(1)), -1, dtype=torch.long, device=recent.device)
    return torch.cat([pad, recent], 1)


class _RowParams:
    """Per-row sampling parameters as tensors, rebuilt only when rows join.

    `token_level` False (character models) moves the improbability target from the token choice to
    `word_target`, which the sampler's word-level drive uses."""

    def __init__(self, streams: list[Stream], device: torch.device, token_level: bool = True):
        def col(values, dtype=torch.float32):
            return torch.tensor(values, dtype=dtype, device=device)

        ps = [s.params for s in streams]
        self.temperature = col([p.temperature for p in ps])
        self.top_k = col([p.top_k for p in ps], torch.long)
        self.top_p = col([p.top_p for p in ps])
        targets = [p.improbability for p in ps]
        self.target = col(targets if token_level else [0.0] * len(ps))
        self.word_target = col([0.0] * len(ps) if token_level else targets)
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
        self.any_improbable = token_level and any(t > 0 for t in targets)
        self.any_word_target = not token_level and any(t > 0 for t in targets)
        self.any_penalty = any(p.repetition_penalty > 1 for p in ps)

    @property
    def seed_mix(self) -> torch.Tensor:
        """mix32(seeds): draws.uniform's first hash, which only the counter changes after (kept per seeds
        tensor, so a caller that replaces `seeds` gets it recomputed)."""
        if getattr(self, "_mixed_from", None) is not self.seeds:
            self._mixed_from, self._seed_mix = self.seeds, mix32(self.seeds)
        return self._seed_mix

    def select(self, index: torch.Tensor) -> _RowParams:
        new = object.__new__(_RowParams)
        for name, value in vars(self).items():
            setattr(new, name, value[index] if torch.is_tensor(value) else value)
        return new


def choose(logits: torch.Tensor, rows: _RowParams, recent: torch.Tensor,
           banned: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick one token per row. Returns (tokens, probability of each token under the model at T=1).

    `banned` (V or B×V, bool) marks tokens that must not be picked; the reported probabilities are
    then the model's renormalised over the rest."""
    tokens, probs, _ = _choose(logits, rows, recent, banned)
    return tokens, probs


def _choose(logits, rows, recent, banned=None):
    logits = logits.float()
    V = logits.size(1)
    if banned is not None:
        logits = logits.masked_fill(banned, -math.inf)
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

    # = draws.uniform(rows.seeds, rows.counters), without hashing the (fixed) seeds again every step
    u = (mix32(rows.seed_mix ^ ((rows.counters * 0x27D4EB2F) & 0xFFFFFFFF)).double() / 2.0**32).to(probs.dtype)
    tokens = inverse_cdf(probs, u)
    if rows.any_greedy:
        tokens = torch.where(rows.temperature == 0, logits.argmax(1), tokens)
    if rows.any_improbable:
        tokens = torch.where(rows.target > 0, _improbable_tokens(logits, rows, u), tokens)
    return tokens, model_probs.gather(1, tokens[:, None]).squeeze(1), model_probs


def _improbable_tokens(logits: torch.Tensor, rows: _RowParams, u: torch.Tensor) -> torch.Tensor:
    """Per row: a draw from the model's distribution restricted to the band around the target, else the
    token nearest the target in log space."""
    log_probs = torch.log_softmax(logits, dim=1)  # banned tokens: -inf, never near anything
    distance = (log_probs - rows.target.clamp_min(1e-30).log()[:, None]).abs()
    band = distance <= torch.log1p(effective_tolerance(rows.tolerance))[:, None] + 1e-6
    nearest = distance.argmin(1)
    # Weighting by probability (not uniform) keeps the median realised probability near the target:
    # a band holds more of the rarer tokens than of the likelier ones.
    weights = torch.where(band, log_probs.exp(), torch.zeros_like(log_probs))
    return torch.where(band.any(1), inverse_cdf(weights, u), nearest)


def generate(model: LanguageModel, tokenizer, prompts: list[str],
             params: SamplingParams | list[SamplingParams]) -> list[Stream]:
    """Complete every prompt (batched); returns one finished Stream per prompt, in order."""
    per_row = params if isinstance(params, list) else [params] * len(prompts)
    sampler = BatchSampler(model, tokenizer, next(model.parameters()).device)
    streams = [sampler.add(prompt, p) for prompt, p in zip(prompts, per_row)]
    sampler.run()
    return streams
