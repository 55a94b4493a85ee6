"""What a finished stream says about its own probabilities, for the result's Info button and
`/generate show:probabilities` (bot/views.py): a summary that rides in the result and the generation row,
and the probability picture's pieces (worker/picture.py), computed here from the stream (the only place the
per-token probabilities exist) and kept in the row, so the picture can be drawn any time later, even after a
restart. Drawing is left until someone asks (about 0.3 s of CPU for 280 characters: too dear for every text
on a shared CPU; 64 concurrent requests slowed by a third when every one was drawn)."""

from __future__ import annotations

import logging

from worker.picture import pieces_from_stream, pieces_to_json

log = logging.getLogger(__name__)

MAX_PICKS_KEPT = 40  # improbability picks kept in the result and the row (Info lists a few)


def probability_summary(stream) -> dict:
    """The mean and minimum probability the model gave its chosen tokens, the token count, and the
    improbability drive's picks [(word, probability)] (the first MAX_PICKS_KEPT of n_picks)."""
    probs = [float(p) for p in stream.probabilities]
    return {"mean": sum(probs) / len(probs) if probs else None, "min": min(probs) if probs else None,
            "tokens": len(stream.tokens), "n_picks": len(stream.picks),
            "picks": [[word, float(p)] for word, p in stream.picks[:MAX_PICKS_KEPT]]}


def picture_pieces(stream, tokenizer) -> str | None:
    """The stream's text (prompt included) as probability-shaded pieces, JSON (worker.picture.pieces_to_json):
    about 4 KB for 280 characters, computed in well under a millisecond. None (logged) if they cannot be
    made: a missing picture must never fail the generation."""
    try:
        return pieces_to_json(pieces_from_stream(stream, tokenizer))
    except Exception:
        log.warning("no probability picture for this stream", exc_info=True)
        return None
