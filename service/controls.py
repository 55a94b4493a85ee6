"""The per-message controls under a result (bot/views.py): Delete (the requester or a manager; the row is
kept, marked deleted_at, its text blanked) and Info (everything about how the text was made, as data the bot
renders)."""

from __future__ import annotations

from dataclasses import dataclass, field

from db import session_scope
from db.types import utcnow
from service.errors import NotOwner
from service.lookup import find_generation
from service.policy import Actor

MAX_PICKS_SHOWN = 12  # improbability picks listed by Info (the row keeps up to worker.generation.MAX_PICKS_KEPT)
PARAM_ORDER = ("max_tokens", "temperature", "top_k", "top_p", "improbability", "tolerance", "seed")


def delete_generation(generation_id: int, actor: Actor) -> None:
    """Mark the generation deleted and blank its prompt and output if `actor` asked for it or manages the
    server; NotOwner otherwise. The caller removes the message (Discord); Continue on it then says it is gone."""
    with session_scope() as session:
        gen = find_generation(session, generation_id, actor)
        if not actor.can_manage and (gen.user_id is None or gen.user_id != actor.user_id):
            raise NotOwner(gen.user_id)
        if gen.deleted_at is None:
            gen.deleted_at = utcnow()
        gen.prompt, gen.output = "", ""  # the text goes with the message (the row stays for statistics)


@dataclass
class GenerationInfo:
    """How one text was made, for the Info button: persona and checkpoint, the sampling parameters in
    PARAM_ORDER (seed apart), tokens, latency, mean and minimum token probability, and the improbability
    drive's target with the picks it realised [(word, probability)], `more_picks` not listed."""

    display_name: str
    slug: str
    checkpoint_id: int | None
    params: list[tuple[str, object]] = field(default_factory=list)
    seed: int | None = None
    tokens: int | None = None
    latency_ms: int | None = None
    mean_probability: float | None = None
    min_probability: float | None = None
    target: float | None = None
    picks: list[tuple[str, float]] = field(default_factory=list)
    more_picks: int = 0
    deleted: bool = False


def generation_info(generation_id: int, actor: Actor) -> GenerationInfo:
    """How a text of the actor's server was made; another server's text is TextGone, as a missing one."""
    with session_scope() as session:
        gen = find_generation(session, generation_id, actor)
        params = dict(gen.params or {})
        summary = params.pop("probability", None) or {}
        info = GenerationInfo(gen.persona.display_name, gen.persona.slug, gen.checkpoint_id, seed=gen.seed,
                              latency_ms=gen.latency_ms, deleted=gen.deleted_at is not None)
    shown = [k for k in PARAM_ORDER if k in params] + sorted(k for k in params if k not in PARAM_ORDER)
    info.params = [(k, params[k]) for k in shown if k != "seed"]
    info.tokens, info.mean_probability = summary.get("tokens"), summary.get("mean")
    info.min_probability, info.target = summary.get("min"), params.get("improbability") or None
    picks = summary.get("picks") or []
    info.picks = [(str(w), float(p)) for w, p in picks[:MAX_PICKS_SHOWN]]
    info.more_picks = max(summary.get("n_picks", len(picks)) - len(info.picks), 0)
    return info


def picture_source(generation_id: int, actor: Actor) -> dict | None:
    """What the probability picture of a generation is drawn from: {"pieces": JSON from the worker
    (worker/probability.py), "persona", "params", "seed"}; None when the row has no pieces (generated before
    they were kept, or they could not be made). Another server's text is TextGone, as a missing one."""
    with session_scope() as session:
        gen = find_generation(session, generation_id, actor)
        params = dict(gen.params or {})
        pieces = (params.pop("probability", None) or {}).get("pieces")
        if not pieces:
            return None
        return {"pieces": pieces, "persona": gen.persona.display_name, "params": params, "seed": gen.seed}
