"""What a finished stream says about its own probabilities, for the result's Info button and
`/generate show:probabilities` (bot/views.py): a summary that rides in the result and the generation row,
and the probability picture's pieces (core.contracts.Piece), computed here from the stream (the only place
the per-token probabilities exist) and kept in the row, so the bot can draw the picture any time later, even
after a restart (bot/pictures.py). Drawing is left until someone asks: too dear for every text on a shared
CPU when few are ever looked at.

Pieces: the text cut into words, punctuation runs and whitespace, each with the probability the model gave it
and whether the improbability drive picked it.
- `char_pieces` (character models): consecutive characters grouped into words, a word's probability the
  product of its characters' probabilities, i.e. P(these letters | the text before);
- `token_pieces` (word models): one piece per token, the spacing between them as whitespace;
- `pieces_from_stream` picks one of the two for a finished `trainer.sample.Stream`, prompt included (drawn
  grey, unshaded: the model did not write it)."""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Sequence

from core.contracts import Piece, pieces_to_json

log = logging.getLogger(__name__)

MAX_PICKS_KEPT = 40  # improbability picks kept in the result and the row (Info lists a few)
APOSTROPHES = ("'", "’")


def probability_summary(stream) -> dict:
    """The mean and minimum probability the model gave its chosen tokens, the token count, and the
    improbability drive's picks [(word, probability)] (the first MAX_PICKS_KEPT of n_picks)."""
    probs = [float(p) for p in stream.probabilities]
    return {"mean": sum(probs) / len(probs) if probs else None, "min": min(probs) if probs else None,
            "tokens": len(stream.tokens), "n_picks": len(stream.picks),
            "picks": [[word, float(p)] for word, p in stream.picks[:MAX_PICKS_KEPT]]}


def picture_pieces(stream, tokenizer) -> str | None:
    """The stream's text (prompt included) as probability-shaded pieces, JSON (core.contracts.pieces_to_json):
    about 4 KB for 280 characters, computed in well under a millisecond. None (logged) if they cannot be
    made: a missing picture must never fail the generation."""
    try:
        return pieces_to_json(pieces_from_stream(stream, tokenizer))
    except Exception:
        log.warning("no probability picture for this stream", exc_info=True)
        return None


# --- pieces ------------------------------------------------------------------------------------------------

def _kinds(text: str) -> list[str]:
    """Each character's kind: space, word (letters, digits, and an apostrophe inside a word: don't, o’er) or
    punct."""
    kinds = ["space" if ch.isspace() else "word" if ch.isalnum() else "punct" for ch in text]
    for i in range(1, len(text) - 1):
        if text[i] in APOSTROPHES and text[i - 1].isalnum() and text[i + 1].isalnum():
            kinds[i] = "word"
    return kinds


def _runs(text: str) -> list[tuple[int, int]]:
    """(start, end) of each word, punctuation run and whitespace run of `text`, in order."""
    runs, start = [], 0
    for _, group in itertools.groupby(_kinds(text)):
        end = start + sum(1 for _ in group)
        runs.append((start, end))
        start = end
    return runs


def _picked_positions(full: str, offset: int, picks: Sequence[tuple[str, float]]) -> set[int]:
    """Positions (in `full`) of the words the drive chose. The sampler drives, in order, every word that starts
    with a letter after a non-letter and runs on through letters and apostrophes (I’ll, don't), so pick j is
    the next such run spelled like it. A run cut short by the end of the text may be a prefix of its pick; a
    pick that matches no run (cut by a stop sequence) is skipped when the run matches the one after it."""
    positions: set[int] = set()
    j, i = 0, offset
    while i < len(full) and j < len(picks):
        if full[i].isalpha() and (i == 0 or not full[i - 1].isalpha()):
            end = i
            while end < len(full) and (full[end].isalpha() or full[end] in APOSTROPHES):
                end += 1
            run, at_end = full[i:end], end == len(full)
            if not _spells(run, picks[j][0], at_end) and j + 1 < len(picks) and _spells(run, picks[j + 1][0], at_end):
                j += 1
            if _spells(run, picks[j][0], at_end):
                positions.update(range(i, end))
                j += 1
            i = end
        else:
            i += 1
    return positions


def _spells(run: str, word: str, at_end: bool) -> bool:
    return run == word or (at_end and word.startswith(run))


def _prompt_pieces(prompt: str) -> list[Piece]:
    return [Piece(prompt[a:b], None) for a, b in _runs(prompt)]


def char_pieces(text: str, probabilities: Sequence[float], picks: Sequence[tuple[str, float]] = (),
                prompt: str = "") -> list[Piece]:
    """Pieces of a character model's completion: `probabilities[i]` is the model's for `text[i]`; a word's
    probability is the product of its characters'. `picks` are the stream's (word, P(word)) drive picks;
    `prompt` (written before `text`) comes first, unshaded."""
    if len(probabilities) < len(text):
        raise ValueError(f"{len(text)} characters but only {len(probabilities)} probabilities")
    full = prompt + text
    offset = len(prompt)
    picked = _picked_positions(full, offset, picks)
    pieces, prompt_end = [], offset
    logs = [math.log(max(p, 1e-300)) for p in probabilities]
    for a, b in _runs(full):
        if b <= offset:
            continue
        if a < offset:  # a run that straddles the end of the prompt: the prompt's part is unshaded
            pieces.append(Piece(full[a:offset], None))
            prompt_end, a = a, offset
        log_p = sum(logs[a - offset:b - offset])
        pieces.append(Piece(full[a:b], math.exp(log_p), bool(picked) and any(i in picked for i in range(a, b))))
    return _prompt_pieces(prompt[:prompt_end]) + pieces


def token_pieces(tokens: Sequence[str], probabilities: Sequence[float], text: str, picked: int = 0,
                 prompt_text: str = "") -> list[Piece]:
    """Pieces of a word model's completion: `tokens` as the vocabulary spells them, `text` the detokenized
    completion they make (spacing between tokens becomes whitespace pieces), the first `picked` tokens chosen
    by the drive (it chooses every token of a row with a target). `prompt_text` is everything before the
    completion as shown (the prompt and the space the detokenizer put after it)."""
    pieces = _prompt_pieces(prompt_text)
    at = 0
    for n, (token, p) in enumerate(zip(tokens, probabilities)):
        found = text.find(token, at)
        if found < 0:  # cut off by a stop sequence: the rest was never shown
            break
        if found > at:
            pieces.append(Piece(text[at:found], None))
        pieces.append(Piece(token, float(p), n < picked))
        at = found + len(token)
    if at < len(text):
        pieces.append(Piece(text[at:], None))
    return pieces


def pieces_from_stream(stream, tokenizer, include_prompt: bool = True) -> list[Piece]:
    """Pieces of a finished `trainer.sample.Stream` (duck-typed: prompt, text, tokens, probabilities, picks)
    from the tokenizer that produced it."""
    shown = tokenizer.continue_text(stream.prompt, stream.text) if include_prompt else stream.text
    before = shown[:len(shown) - len(stream.text)]
    if tokenizer.kind == "char":
        return char_pieces(stream.text, stream.probabilities, stream.picks, before)
    spelled = [tokenizer.vocab[t] for t in stream.tokens]
    return token_pieces(spelled, stream.probabilities, stream.text, len(stream.picks), before)
