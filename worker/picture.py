"""The probability picture: a generation's text as a PNG, each word shaded by the probability the model gave it.

Two steps, both torch-free (Pillow, and the DejaVu Sans font that ships inside matplotlib's package data):

1. pieces: the text cut into `Piece`s (a word, a run of punctuation, or whitespace), each with the
   probability the model gave it and whether the improbability drive picked it.
   - `char_pieces` (character models): consecutive characters grouped into words, a word's probability
     the product of its characters' probabilities, i.e. P(these letters | the text before);
   - `token_pieces` (word models): one piece per token, the spacing between them as whitespace;
   - `pieces_from_stream` picks one of the two for a finished `trainer.sample.Stream`, prompt included
     (shown grey, unshaded: the model did not write it).
   Pieces serialise with `pieces_to_json`/`pieces_from_json`, so a stored generation can be drawn later.
2. `render_picture(pieces, title, subtitle)` → `Picture` (PNG bytes, and each piece's box on the image):
   wrapped lines, a shaded box behind every written word on a log colour scale from white (p = 1) to
   dark red (the scale's floor, the decade at or below the least likely word, between 1e-8 and 1e-2),
   a blue underline under every improbability pick, a title, and a legend with the colour bar.

A 1,000-character text is a 1000×~500 image of about 50 KB (a 256-colour palette PNG), far below
Discord's 8 MB attachment limit. Text past
`MAX_PICTURE_CHARS` is cut with an ellipsis. Characters DejaVu Sans lacks (CJK, emoji) draw as boxes.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from importlib.util import find_spec
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

MAX_PICTURE_CHARS = 4000  # twice Discord's message limit; longer texts are cut
WIDTH = 1000
MARGIN = 24
FONT_SIZE = 20
LINE_HEIGHT = 30
BOX_PAD = 2  # the shaded box reaches this far above and below the glyphs
FLOOR_RANGE = (1e-8, 1e-2)  # the colour scale's lower end is the least likely word's decade, within this
# White → ColorBrewer YlOrRd: near-certain words stay paper-white, unlikely ones turn dark red.
GRADIENT = ("#ffffff", "#ffeda0", "#fed976", "#feb24c", "#fd8d3c", "#fc4e2a", "#e31a1c", "#bd0026", "#800026")
PICK_COLOUR = (31, 79, 255)
PROMPT_COLOUR = (120, 120, 120)
APOSTROPHES = ("'", "’")


@dataclass(frozen=True)
class Piece:
    text: str
    probability: float | None  # None: not written by the model (the prompt)
    picked: bool = False  # chosen by the improbability drive

    @property
    def is_space(self) -> bool:
        return self.text.isspace()


@dataclass
class Picture:
    png: bytes
    width: int
    height: int
    floor: float  # the probability at the dark end of the colour scale
    # (piece index, (left, top, right, bottom)) for every drawn fragment of a non-space piece: a word
    # wrapped across lines has several. Tests read colours inside them; an image map could use them.
    boxes: list[tuple[int, tuple[int, int, int, int]]] = field(default_factory=list)


# --- pieces ----------------------------------------------------------------------------------------------------

def _kind(text: str, i: int) -> str:
    ch = text[i]
    if ch.isspace():
        return "space"
    if ch.isalnum():
        return "word"
    if ch in APOSTROPHES and 0 < i < len(text) - 1 and text[i - 1].isalnum() and text[i + 1].isalnum():
        return "word"  # don't, o’er: one word
    return "punct"


def _runs(text: str) -> list[tuple[int, int]]:
    """(start, end) of each word, punctuation run and whitespace run of `text`, in order."""
    runs, start = [], 0
    for i in range(1, len(text) + 1):
        if i == len(text) or _kind(text, i) != _kind(text, start):
            runs.append((start, i))
            start = i
    return runs if text else []


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
    pieces = []
    for a, b in _runs(full):
        if b <= offset:
            continue
        if a < offset:  # a run that straddles the end of the prompt: the prompt's part is unshaded
            pieces.append(Piece(full[a:offset], None))
            a = offset
        log_p = sum(math.log(max(p, 1e-300)) for p in probabilities[a - offset:b - offset])
        pieces.append(Piece(full[a:b], math.exp(log_p), any(i in picked for i in range(a, b))))
    return _prompt_pieces(prompt[:_straddle_start(full, offset)]) + pieces


def _straddle_start(full: str, offset: int) -> int:
    """Where the prompt's last run starts if that run continues into the completion (else the prompt's end)."""
    for a, b in _runs(full):
        if a < offset < b:
            return a
    return offset


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


def pieces_to_json(pieces: Iterable[Piece]) -> str:
    return json.dumps([[p.text, p.probability, p.picked] for p in pieces], ensure_ascii=False)


def pieces_from_json(data: str) -> list[Piece]:
    return [Piece(str(t), None if p is None else float(p), bool(k)) for t, p, k in json.loads(data)]


def describe_sampling(persona: str, params: Mapping, seed: int | None = None) -> tuple[str, str]:
    """(title, subtitle) for a picture: the persona, then the sampling parameters that are not defaults."""
    parts = []
    temperature = params.get("temperature", 1.0)
    parts.append("greedy" if temperature == 0 else f"temperature {temperature:g}")
    if params.get("top_k"):
        parts.append(f"top-k {params['top_k']}")
    if params.get("top_p", 1.0) < 1:
        parts.append(f"top-p {params['top_p']:g}")
    if params.get("improbability"):
        band = 1 + (params.get("tolerance") or 1.0)
        parts.append(f"improbability {params['improbability']:g} (band ×{band:g})")
    if params.get("repetition_penalty", 1.0) > 1:
        parts.append(f"repetition penalty {params['repetition_penalty']:g}")
    seed = seed if seed is not None else params.get("seed")
    if seed is not None:
        parts.append(f"seed {seed}")
    return persona, " · ".join(parts)


# --- rendering -------------------------------------------------------------------------------------------------

@lru_cache(maxsize=8)
def _font(size: int, bold: bool = False) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """DejaVu Sans from matplotlib's package data (found without importing matplotlib, which is slow to
    import), else Pillow's own bundled font."""
    spec = find_spec("matplotlib")
    if spec and spec.origin:
        path = Path(spec.origin).parent / "mpl-data" / "fonts" / "ttf" / ("DejaVuSans-Bold.ttf" if bold else
                                                                        "DejaVuSans.ttf")
        if path.is_file():
            return ImageFont.truetype(str(path), size)
    return ImageFont.load_default(size)


def _hex(colour: str) -> tuple[int, int, int]:
    return tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5))


def colour_of(probability: float, floor: float) -> tuple[int, int, int]:
    """The shade of a probability: position log(p)/log(floor) along GRADIENT (p ≤ floor: the darkest)."""
    t = min(max(math.log(max(probability, 1e-300)) / math.log(floor), 0.0), 1.0)
    x = t * (len(GRADIENT) - 1)
    i = min(int(x), len(GRADIENT) - 2)
    a, b = _hex(GRADIENT[i]), _hex(GRADIENT[i + 1])
    f = x - i
    return tuple(round(a[k] + (b[k] - a[k]) * f) for k in range(3))


def _ink_on(background: tuple[int, int, int]) -> tuple[int, int, int]:
    luminance = 0.299 * background[0] + 0.587 * background[1] + 0.114 * background[2]
    return (0, 0, 0) if luminance > 140 else (255, 255, 255)


def scale_floor(pieces: Sequence[Piece]) -> float:
    shaded = [p.probability for p in pieces if p.probability is not None and not p.is_space]
    lowest = min(shaded, default=1.0)
    decade = 10.0 ** math.floor(math.log10(max(lowest, 1e-300)))
    return min(max(decade, FLOOR_RANGE[0]), FLOOR_RANGE[1])


def _clip(pieces: Sequence[Piece], limit: int) -> list[Piece]:
    out, used = [], 0
    for p in pieces:
        if used + len(p.text) > limit:
            out.append(Piece(p.text[:limit - used] + "…", p.probability, p.picked))
            break
        out.append(p)
        used += len(p.text)
    return out


def _layout(pieces: Sequence[Piece], font, left: int, right: int, top: int):
    """Place each non-space piece: [(piece index, text, x, y)], wrapping at whitespace and breaking a group wider
    than a line by characters. Returns (placements, y below the last line)."""
    placements = []
    x, y = left, top
    space = font.getlength(" ")
    group: list[int] = []  # pieces written without whitespace between them (a word and its punctuation)

    def flush():
        nonlocal x, y
        if not group:
            return
        width = sum(font.getlength(pieces[i].text) for i in group)
        if x > left and x + width > right:
            x, y = left, y + LINE_HEIGHT
        for i in group:
            text = pieces[i].text
            while text:
                fits = len(text)
                while fits > 1 and x + font.getlength(text[:fits]) > right:
                    fits -= 1
                if x > left and x + font.getlength(text[:fits]) > right:
                    x, y = left, y + LINE_HEIGHT
                    continue
                placements.append((i, text[:fits], x, y))
                x += font.getlength(text[:fits])
                text = text[fits:]
        group.clear()

    newlines = 0  # in a row: more than two (one blank line) are not drawn, the picture is about the words
    for i, piece in enumerate(pieces):
        if not piece.is_space:
            group.append(i)
            newlines = 0
            continue
        flush()
        for ch in piece.text:
            if ch == "\n":
                newlines += 1
                if newlines <= 2:
                    x, y = left, y + LINE_HEIGHT
            elif x > left:  # a space at the start of a wrapped line is not drawn
                x += space
    flush()
    return placements, y + LINE_HEIGHT


def render_picture(pieces: Sequence[Piece], title: str, subtitle: str = "", width: int = WIDTH) -> Picture:
    """The PNG of `pieces` (see the module docstring); boxes let a caller (or a test) find each piece."""
    pieces = _clip([Piece(p.text.replace("\t", " ").replace("\r", ""), p.probability, p.picked) for p in pieces],
                   MAX_PICTURE_CHARS)
    floor = scale_floor(pieces)
    font, title_font, small = _font(FONT_SIZE), _font(22, bold=True), _font(14)
    left, right = MARGIN, width - MARGIN
    top = MARGIN + 30 + (22 if subtitle else 0) + 12
    placements, bottom = _layout(pieces, font, left, right, top)
    legend_top = bottom + 16
    height = legend_top + 56 + MARGIN

    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((left, MARGIN), title, font=title_font, fill=(0, 0, 0))
    if subtitle:
        draw.text((left, MARGIN + 32), subtitle, font=small, fill=(90, 90, 90))

    ascent, descent = font.getmetrics()
    text_offset = (LINE_HEIGHT - ascent - descent) // 2
    boxes = []
    for i, text, x, y in placements:
        piece = pieces[i]
        w = font.getlength(text)
        box = (round(x), y + text_offset - BOX_PAD, round(x + w), y + text_offset + ascent + descent + BOX_PAD)
        boxes.append((i, box))
        if piece.probability is None:
            draw.text((x, y + text_offset), text, font=font, fill=PROMPT_COLOUR)
            continue
        shade = colour_of(piece.probability, floor)
        draw.rectangle(box, fill=shade)
        draw.text((x, y + text_offset), text, font=font, fill=_ink_on(shade))
        if piece.picked:
            draw.rectangle((box[0], box[3] - 3, box[2], box[3]), fill=PICK_COLOUR)

    _legend(draw, left, legend_top, floor, small)
    return Picture(_png(image), width, height, floor, boxes)


def _png(image: Image.Image) -> bytes:
    """PNG bytes in a 256-colour adaptive palette: the picture is flat boxes and anti-aliased text, which a
    palette keeps intact at a third of the RGB file's size (48 KB vs 161 KB for 1,000 characters); 64 colours
    would merge the thin pick underline into the greys."""
    buffer = io.BytesIO()
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _legend(draw: ImageDraw.ImageDraw, left: int, top: int, floor: float, font) -> None:
    draw.text((left, top), "probability the model gave each word (log scale)", font=font, fill=(60, 60, 60))
    bar_top, bar_width, bar_height = top + 20, 360, 14
    for x in range(bar_width):
        p = floor ** (x / (bar_width - 1))
        draw.line((left + x, bar_top, left + x, bar_top + bar_height), fill=colour_of(p, floor))
    draw.rectangle((left, bar_top, left + bar_width, bar_top + bar_height), outline=(160, 160, 160))
    decades = round(-math.log10(floor))
    for d in range(decades + 1):
        x = left + round(d / decades * (bar_width - 1))
        draw.line((x, bar_top + bar_height, x, bar_top + bar_height + 4), fill=(60, 60, 60))
        label = "1" if d == 0 else f"1e-{d}"
        if d == decades:
            label = "≤" + label
        if decades <= 4 or d % 2 == 0 or d == decades:
            draw.text((x - font.getlength(label) / 2, bar_top + bar_height + 5), label, font=font, fill=(60, 60, 60))
    x = left + bar_width + 40
    draw.text((x, bar_top - 2), "improbability pick", font=font, fill=(0, 0, 0))
    w = font.getlength("improbability pick")
    draw.rectangle((x, bar_top + 15, x + w, bar_top + 18), fill=PICK_COLOUR)
    x += w + 30
    draw.text((x, bar_top - 2), "prompt (not generated)", font=font, fill=PROMPT_COLOUR)
