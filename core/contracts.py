"""The contracts between the bot, the console, the CLI and the workers, as torch-free pydantic models.

- `SamplingParams`: every sampling parameter with its default, bounds and help, defined once. The Discord
  options, the typer options and the console parser take bounds and help from it (`bounds`, `help_of`);
  the service checks requests with it (`parse_sampling`) and the sampler (trainer.sample) reads it as is.
- `GenerateRequest` → `GenerateResult`: the argument and the answer of the `improbable.generate` task.
- `Liveness`: every timing the bot and the generate workers share, with the order they must keep.
- `RunProgress`: the progress record of a training run (the `training_runs.progress` JSON and the train
  task's PROGRESS meta), written by the trainer service and read by the bot, the console and the metrics.
"""

from __future__ import annotations

import math
from typing import Any

from annotated_types import Ge, Gt, Le
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

MAX_TOKENS_CEILING = 100_000  # a sanity bound; deployments cap lower (IMPROBABLE_MAX_GENERATE_TOKENS)
SEED_MAX = 2**63 - 1  # generations.seed is a signed 64-bit column


class SamplingParams(BaseModel):
    """How to sample one text. Missing keys and None mean the default."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    max_tokens: int = Field(200, ge=1, le=MAX_TOKENS_CEILING, title="length",
                            description="How many characters (character personas) or words (word personas)")
    temperature: float = Field(1.0, ge=0, le=5, json_schema_extra={"zero": "greedy"},
                               description="0 = always the likeliest token; higher = wilder")
    top_k: int = Field(0, ge=0, le=10_000, title="top-k", json_schema_extra={"zero": "off"},
                       description="Sample among the k likeliest tokens only (0 = off)")
    top_p: float = Field(1.0, gt=0, le=1, title="top-p", description="Nucleus sampling mass (1 = off)")
    improbability: float = Field(0.0, ge=0, le=1, json_schema_extra={"zero": "off"},
                                 description="Improbability drive: pick tokens whose probability is nearest "
                                 "this (0 = off)")
    tolerance: float = Field(0.0, ge=0, le=10,
                             description="Improbability band [p/(1+t), p·(1+t)]; 0 = the default band, a factor of "
                             "2 either way")
    repetition_penalty: float = Field(1.0, ge=1, le=10, title="repetition penalty",
                                      description="> 1 discourages recently used tokens")
    repetition_window: int = Field(32, ge=1, le=4096, title="repetition window",
                                   description="How many recent tokens the repetition penalty looks at")
    stop: tuple[str, ...] = Field((), description="Stop when this text appears (repeatable)")
    stop_at_sentence_end: bool = Field(False, description="Stop at the end of the first sentence")
    seed: int | None = Field(None, ge=0, le=SEED_MAX,
                             description="Same persona, prompt, settings and seed ⇒ same text")

    @field_validator("stop")
    @classmethod
    def _no_empty_stop(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not all(value):
            raise ValueError("stop sequences must not be empty")
        return value


SAMPLING_KEYS = tuple(SamplingParams.model_fields)


def bounds(name: str) -> tuple[float, float]:
    """(lowest, highest) allowed value of a numeric sampling parameter (an open low end: its limit)."""
    low = high = None
    for rule in SamplingParams.model_fields[name].metadata:
        if isinstance(rule, Ge | Gt):
            low = rule.ge if isinstance(rule, Ge) else rule.gt
        elif isinstance(rule, Le):
            high = rule.le
    if low is None or high is None:
        raise KeyError(f"{name} has no numeric bounds")
    return low, high


def low_is_open(name: str) -> bool:
    return any(isinstance(rule, Gt) for rule in SamplingParams.model_fields[name].metadata)


def help_of(name: str) -> str:
    return SamplingParams.model_fields[name].description or name


def label_of(name: str) -> str:
    """The name users see in messages (`length` for max_tokens, `top-p` for top_p)."""
    return SamplingParams.model_fields[name].title or name


def rule_of(name: str, high: float | None = None) -> str:
    """'must be between 0 (greedy) and 5', from the bounds (`high` overrides the upper bound)."""
    low, top = bounds(name)
    top = top if high is None else high
    extra = SamplingParams.model_fields[name].json_schema_extra or {}
    zero = f" ({extra['zero']})" if isinstance(extra, dict) and extra.get("zero") else ""
    if low_is_open(name):
        return f"must be more than {low:g} and at most {top:g}"
    return f"must be between {low:g}{zero} and {top:g}"


class SamplingError(ValueError):
    """Invalid sampling parameters; the message names the parameter and its allowed range."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


def _explain(error: dict, labels: bool) -> str:
    loc = error.get("loc") or ("?",)
    name = str(loc[0])
    if error.get("type") == "extra_forbidden":
        return f"unknown sampling parameter: {name}"
    shown = label_of(name) if labels and name in SamplingParams.model_fields else name
    if error.get("type") in ("greater_than_equal", "less_than_equal", "greater_than", "less_than") \
            and name in SamplingParams.model_fields:
        try:
            return f"{shown} {rule_of(name)}"
        except KeyError:
            pass
    return f"{shown}: {str(error.get('msg', 'invalid')).removeprefix('Value error, ')}"


def parse_sampling(values: dict | None, *, labels: bool = False) -> SamplingParams:
    """SamplingParams from JSON-like values (None values mean the default), or SamplingError saying what is
    wrong. `labels=True` names parameters as users see them (length, top-p) instead of by field."""
    given = {k: v for k, v in (values or {}).items() if v is not None}
    try:
        return SamplingParams.model_validate(given)
    except ValidationError as e:
        raise SamplingError("; ".join(_explain(err, labels) for err in e.errors())) from None


def merge_sampling(*layers: dict | None) -> dict:
    """The sampling keys of each layer (a persona's defaults, a schedule's or a user's overrides), later
    layers winning; None values and unknown keys are left out."""
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update({k: v for k, v in (layer or {}).items() if k in SAMPLING_KEYS and v is not None})
    return merged


class BlendVoice(BaseModel):
    """One voice of a blended request: a persona's checkpoint and its weight in the mixture."""

    model_config = ConfigDict(extra="forbid")

    checkpoint_id: int
    weight: float = Field(gt=0, le=1)
    persona: str = ""


class GenerateRequest(BaseModel):
    """The argument of the `improbable.generate` task (typed with Celery's `pydantic=True`). Built by the
    service and by scheduled posts; the worker receives it validated. Unknown top-level keys are ignored
    (older bots); unknown sampling keys are not."""

    model_config = ConfigDict(extra="ignore")

    checkpoint_id: int = Field(description="The checkpoint row to generate with (the persona's active one)")
    persona: str = ""
    prompt: str = ""
    params: SamplingParams = Field(default_factory=SamplingParams,
                                   description="How to sample; a missing seed is drawn by the worker")
    blend: list[BlendVoice] = Field(default_factory=list, description="Blended voices, the first being "
                                    "`checkpoint_id` (empty: one persona)")
    guild_id: int | None = None
    channel_id: int | None = None
    user_id: int | None = None
    interaction_id: int | None = None
    reply_to: int | None = None
    parent_generation_id: int | None = None
    request_id: str | None = Field(None, description="Idempotency key of the generations row (the task id)")

    @field_validator("prompt", mode="before")
    @classmethod
    def _no_prompt_is_empty(cls, value):
        return "" if value is None else value

    @field_validator("blend")
    @classmethod
    def _blend_starts_with_the_request(cls, voices: list[BlendVoice], info) -> list[BlendVoice]:
        if voices and (len(voices) < 2 or voices[0].checkpoint_id != info.data.get("checkpoint_id")):
            raise ValueError("a blend needs at least two voices, the first being the request's checkpoint")
        return voices

    def payload(self) -> dict:
        """The request as JSON: what was set, so the sampling parameters are the caller's own."""
        return self.model_dump(mode="json", exclude_unset=True)

    def routing(self) -> dict:
        """The ids a result echoes, so the bot can route it without keeping state."""
        return {k: getattr(self, k) for k in ROUTING_KEYS}


ROUTING_KEYS = ("persona", "guild_id", "channel_id", "user_id", "interaction_id", "reply_to")


class ProbabilitySummary(BaseModel):
    """What a finished text says about its own probabilities: the mean and least probability of the chosen
    tokens, and the improbability drive's picks as (word, probability)."""

    mean: float | None = None
    min: float | None = None
    tokens: int = 0
    n_picks: int = 0
    picks: list[tuple[str, float]] = Field(default_factory=list)


class GenerateResult(BaseModel):
    """What `improbable.generate` answers: the text, how it was made, and the request's routing ids."""

    model_config = ConfigDict(extra="ignore")

    text: str
    full_text: str = Field(description="Prompt and completion as the tokenizer joins them")
    seed: int | None = None
    tokens: int | None = None
    finish_reason: str | None = Field(None, description="length, stop or sentence")
    unknown: list[str] = Field(default_factory=list, description="Prompt characters or words the model never saw")
    latency_ms: int | None = None
    load_ms: int = Field(0, description="Time spent loading the checkpoint (0 when it was resident)")
    batch_peak: int = Field(0, description="The largest batch this request was stepped in")
    checkpoint_id: int | None = None
    generation_id: int | None = Field(None, description="Its row in `generations` (None: not recorded)")
    duplicate: bool = Field(False, description="Another run of the same request answered first")
    probability: ProbabilitySummary | None = None
    worker: str | None = None
    persona: str = ""
    guild_id: int | None = None
    channel_id: int | None = None
    user_id: int | None = None
    interaction_id: int | None = None
    reply_to: int | None = None


class LivenessError(ValueError):
    """Timings whose order cannot work; the message names the order that is broken."""


class Liveness(BaseModel):
    """Every timing the bot and the workers share about a generate job being alive, in one place, with the
    order they must keep. A running job writes its partial text (or the same again, a heartbeat) every
    `partial_heartbeat`; a worker silent for `lease` has its jobs re-published by another (its reaper looks
    every lease/5); the bot tells the user after `stall_notice` of silence and gives up after `stall`, so a
    take-over must fit before `stall`. A result store (Redis) away for up to `outage` is waited out by the
    bot; the worker retries storing a result for `result_retry`, so it must give up no later than the bot."""

    model_config = ConfigDict(frozen=True)

    partial_interval: float = Field(0.5, gt=0, description="Seconds between partial-text updates while it grows")
    partial_heartbeat: float = Field(2.0, gt=0, description="Seconds between updates when the text has not grown")
    partial_rate: float = Field(64.0, gt=0, description="Partial-text updates one worker writes a second at most, "
                                "over all its jobs: with more jobs than partial_rate × partial_interval each is "
                                "updated less often, never less than every partial_heartbeat (the bot relays at "
                                "most Discord's ~50 requests a second in all anyway)")
    lease: float = Field(10.0, gt=0, description="Silence after which a generate worker is taken for dead")
    stall_notice: float = Field(12.0, gt=0, description="Silence after which the bot tells the user")
    stall: float = Field(45.0, gt=0, description="Silence after which the bot gives the job up")
    started_grace: float = Field(60.0, ge=0, description="More silence allowed while a job loads its model")
    outage: float = Field(45.0, gt=0, description="How long the bot follows a job through a result-store outage")
    reconnect: float = Field(20.0, ge=0, description="After an outage, how long no consumer proves nothing")
    result_retry: float = Field(40.0, gt=0, description="How long a worker retries storing a result")
    recording_outage: float = Field(30.0, gt=0, description="How long a database outage is waited out by the "
                                    "generation recorder")
    token_lifetime: float = Field(14 * 60, gt=0, le=15 * 60, description="How long the bot uses an interaction's "
                                  "token (Discord keeps it 15 minutes)")

    @property
    def takeover(self) -> float:
        """Worst case from a worker's death to its job re-published: a lease, then the reaper's next look."""
        return self.lease + self.lease / 5

    @model_validator(mode="after")
    def _order(self) -> Liveness:
        rules = [
            (self.partial_interval <= self.partial_heartbeat, "partial_interval <= partial_heartbeat"),
            (self.partial_heartbeat < self.stall_notice, "partial_heartbeat < stall_notice: a live job would "
             "look stalled between two heartbeats"),
            (self.stall_notice < self.stall, "stall_notice < stall"),
            (self.partial_heartbeat < self.lease, "partial_heartbeat < lease"),
            (self.takeover + self.partial_heartbeat < self.stall, "lease + lease/5 (take-over) + partial_heartbeat "
             f"< stall: the bot would give up on a dead worker's job ({self.stall:g} s) before another worker "
             f"takes it over ({self.takeover:g} s)"),
            (self.result_retry <= self.outage, "result_retry <= outage: the bot would stop waiting while the "
             "worker still retries storing the result"),
            (self.recording_outage < self.result_retry + self.outage, "recording_outage < result_retry + outage"),
        ]
        broken = [rule for ok, rule in rules if not ok]
        if broken:
            raise LivenessError("generate liveness timings out of order: " + "; ".join(broken))
        return self


def _finite(value: Any) -> Any:
    return value if not isinstance(value, float) or math.isfinite(value) else None


class RunProgress(BaseModel):
    """A training run's progress. Every key is optional (a queued run has none); unknown keys are kept."""

    model_config = ConfigDict(extra="allow")

    step: int | None = None
    total: int | None = None  # steps the run is expected to take
    epoch: float | None = None
    loss: float | None = None  # smoothed training loss, nats/token
    val_loss: float | None = None
    best_val_loss: float | None = None
    tokens_per_s: float | None = None
    eta: float | None = None  # seconds left
    fraction: float | None = None  # 0..1
    elapsed: float | None = None  # seconds
    sample: str | None = None
    warning: str | None = None
    resumed_from: int | None = None  # step a resumed run started from
    first_step: int | None = None
    attempt: int | None = None
    owner: str | None = None  # host:pid of the trainer
    heartbeat: float | None = None  # time.time() of its last write

    @field_validator("epoch", "loss", "val_loss", "best_val_loss", "tokens_per_s", "eta", "fraction", "elapsed")
    @classmethod
    def _finite_or_none(cls, value):
        return _finite(value)

    def done_fraction(self) -> float | None:
        """`fraction`, else step/total."""
        if self.fraction is not None:
            return self.fraction
        if self.step is not None and self.total:
            return self.step / self.total
        return None

    def record(self) -> dict:
        """The JSON stored in the run row (None values left out)."""
        return self.model_dump(exclude_none=True)


# --- the probability picture's pieces ---------------------------------------------------------------------------
# A generation's text cut into words, punctuation runs and whitespace, each with the probability the model gave it:
# the worker makes them from the sampler's stream (worker/probability.py) and keeps them in the generation row as
# JSON, the bot draws them on request (bot/pictures.py).

import json  # noqa: E402 - this section's own imports, kept with it
from dataclasses import dataclass  # noqa: E402


@dataclass(frozen=True)
class Piece:
    text: str
    probability: float | None  # None: not written by the model (the prompt)
    picked: bool = False  # chosen by the improbability drive

    @property
    def is_space(self) -> bool:
        return self.text.isspace()


def pieces_to_json(pieces) -> str:
    """[[text, probability, picked], ...]: about 4 KB for 280 characters."""
    return json.dumps([[p.text, p.probability, p.picked] for p in pieces], ensure_ascii=False)


def pieces_from_json(data: str) -> list[Piece]:
    return [Piece(str(t), None if p is None else float(p), bool(k)) for t, p, k in json.loads(data)]
