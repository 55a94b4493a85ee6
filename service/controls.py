"""The per-message controls under a result (bot/views.py): Delete (the requester or a manager; the row is
kept and marked `deleted_at`) and Info (everything about how the text was made, for an ephemeral reply)."""

from __future__ import annotations

from db import Generation, session_scope
from db.types import utcnow
from service.policy import Actor, UserError

MAX_PICKS_SHOWN = 12  # improbability picks listed by Info (the row keeps up to worker.generation.MAX_PICKS_KEPT)
PARAM_ORDER = ("max_tokens", "temperature", "top_k", "top_p", "improbability", "tolerance", "seed")


def _generation(session, generation_id: int) -> Generation:
    gen = session.get(Generation, generation_id)
    if gen is None:
        raise UserError("That text is no longer in the database (its persona may have been deleted).")
    return gen


def delete_generation(generation_id: int, actor: Actor) -> None:
    """Mark the generation deleted if `actor` asked for it or manages the server; UserError otherwise. The
    caller removes the message (Discord), this records that it is gone."""
    with session_scope() as session:
        gen = _generation(session, generation_id)
        if not actor.can_manage and (gen.user_id is None or gen.user_id != actor.user_id):
            owner = f"<@{gen.user_id}>, who asked for it," if gen.user_id else "a server manager"
            raise UserError(f"Only {owner} or someone with Manage Server can delete this text.")
        if gen.deleted_at is None:
            gen.deleted_at = utcnow()


def _p(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def generation_info(generation_id: int) -> str:
    """A Discord-markdown summary of one generation: persona and checkpoint, every sampling parameter, seed,
    tokens, latency, mean and minimum token probability, and the improbability picks against the target."""
    with session_scope() as session:
        gen = _generation(session, generation_id)
        params = dict(gen.params or {})
        summary = params.pop("probability", None) or {}
        lines = [f"**{gen.persona.display_name}** (`{gen.persona.slug}`), checkpoint {gen.checkpoint_id or 'n/a'}"]
        seed, latency, deleted = gen.seed, gen.latency_ms, gen.deleted_at is not None
    shown = [k for k in PARAM_ORDER if k in params] + sorted(k for k in params if k not in PARAM_ORDER)
    lines.append("Sampling: " + ", ".join(f"{k} `{params[k]}`" for k in shown if k != "seed"))
    lines.append(f"Seed `{seed}` · tokens {summary.get('tokens', 'n/a')} · "
                 f"latency {latency if latency is not None else 'n/a'} ms")
    lines.append(f"Token probability: mean {_p(summary.get('mean'))}, minimum {_p(summary.get('min'))}")
    target = params.get("improbability")
    picks = summary.get("picks") or []
    if target:
        if picks:
            listed = ", ".join(f"`{w.strip() or repr(w)}` {p:.3g}" for w, p in picks[:MAX_PICKS_SHOWN])
            more = summary.get("n_picks", len(picks)) - min(len(picks), MAX_PICKS_SHOWN)
            lines.append(f"Improbability target {target:g}, realised: {listed}" + (f" (+{more} more)" if more else ""))
        else:
            lines.append(f"Improbability target {target:g}: no picks recorded for this text")
    if deleted:
        lines.append("(deleted)")
    return "\n".join(lines)



def picture_source(generation_id: int) -> dict | None:
    """What the probability picture of a generation is drawn from: {"pieces": JSON from the worker
    (worker/probability.py), "persona", "params", "seed"}; None when the row has no pieces (generated before
    they were kept, or they could not be made)."""
    with session_scope() as session:
        gen = _generation(session, generation_id)
        params = dict(gen.params or {})
        pieces = (params.pop("probability", None) or {}).get("pieces")
        if not pieces:
            return None
        return {"pieces": pieces, "persona": gen.persona.display_name, "params": params, "seed": gen.seed}
