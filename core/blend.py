"""Blend specs: `trump:0.7+shakespeare` → [("trump", 0.7), ("shakespeare", 0.3)].

Torch-free, so the bot can parse and validate what a user typed before anything is queued. Which
personas exist, and whether they are character personas (a blend mixes next-character distributions,
trainer/blend.py), is the caller's to check; this module only parses names and numbers.

Grammar: personas joined by `+`, each `name` or `name:weight`. Weights are positive finite numbers.
- every weight given: they are normalised to sum to 1 (`trump:2+shakespeare:1` → 2/3, 1/3);
- some missing: the given ones are shares of 1 and the missing ones split what is left equally
  (`trump:0.7+shakespeare` → 0.7, 0.3), so the given ones must sum to less than 1;
- none given: equal shares.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

# The persona slug rule of db/personas.SLUG_RE (core is a leaf and cannot import db): lower-case letters,
# digits and inner hyphens, 1-32 characters. It contains neither `+` nor `:`, so the grammar is unambiguous.
PERSONA_NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?$")
MAX_BLEND_VOICES = 2  # the product mixes two voices (issue 15); trainer/blend.py itself takes any number
MIN_WEIGHT = 0.01  # a smaller share changes nothing audible and is almost surely a typo
MAX_SPEC_LENGTH = 200


class BlendSpecError(ValueError):
    """A blend spec the user typed is malformed; the message says what to fix."""


@dataclass(frozen=True)
class BlendVoice:
    persona: str
    weight: float  # normalised: the voices' weights sum to 1


def is_blend_spec(text: str) -> bool:
    """Whether a persona argument asks for a blend (contains `+`) rather than naming one persona."""
    return "+" in text


def parse_blend(spec: str, max_voices: int = MAX_BLEND_VOICES) -> list[BlendVoice]:
    """Parse and validate a blend spec; weights normalised to sum to 1, in the order typed."""
    text = spec.strip()
    if len(text) > MAX_SPEC_LENGTH:
        raise BlendSpecError(f"blend spec is too long ({len(text)} characters, at most {MAX_SPEC_LENGTH})")
    parts = [p.strip() for p in text.split("+")]
    if len(parts) < 2:
        raise BlendSpecError(f"`{spec}` is not a blend: join at least two personas with +, e.g. trump:0.7+shakespeare")
    if len(parts) > max_voices:
        raise BlendSpecError(f"a blend mixes at most {max_voices} personas; `{spec}` has {len(parts)}")
    names: list[str] = []
    given: list[float | None] = []
    for part in parts:
        if not part:
            raise BlendSpecError(f"`{spec}` has an empty part: write persona or persona:weight between the + signs")
        name, sep, number = part.partition(":")
        name = name.strip().lower()
        if not PERSONA_NAME_RE.match(name):
            raise BlendSpecError(f"`{name or part}` is not a persona name (lower-case letters, digits and hyphens)")
        if name in names:
            raise BlendSpecError(f"`{name}` appears twice in `{spec}`; give it one weight")
        names.append(name)
        given.append(_weight(number.strip(), name) if sep else None)

    known = [w for w in given if w is not None]
    missing = len(given) - len(known)
    if missing == 0:
        total = sum(known)
        weights = [w / total for w in known]
    else:
        rest = 1.0 - sum(known)
        if rest <= MIN_WEIGHT * missing - 1e-12:
            raise BlendSpecError(
                f"the given weights sum to {sum(known):g}, leaving nothing for "
                f"{', '.join(n for n, w in zip(names, given) if w is None)}: keep them below 1 or give every weight")
        weights = [w if w is not None else rest / missing for w in given]
    for name, w in zip(names, weights):
        if w < MIN_WEIGHT - 1e-12:
            raise BlendSpecError(f"`{name}` would get {w:.3g} of the blend; every voice needs at least {MIN_WEIGHT}")
    return [BlendVoice(n, w) for n, w in zip(names, weights)]


def format_blend(voices: list[BlendVoice]) -> str:
    """The canonical spec of a parsed blend (`trump:0.7+shakespeare:0.3`): for titles, logs and cache keys."""
    return "+".join(f"{v.persona}:{v.weight:.3g}" for v in voices)


def _weight(number: str, name: str) -> float:
    try:
        value = float(number)
    except ValueError:
        raise BlendSpecError(f"the weight of `{name}` must be a number, not `{number}`") from None
    if not math.isfinite(value) or value <= 0:
        raise BlendSpecError(f"the weight of `{name}` must be a positive number, not `{number}`")
    return value
