"""The probability picture of a result (`/generate show:probabilities`, and the Info button): a generation's
text as a PNG, each word shaded by the probability the model gave it, drawn here on request from the pieces
the worker computed from the stream and kept in the generation row (core.contracts.Piece,
worker/probability.py).

`render_picture(pieces, title, subtitle)` → `Picture` (PNG bytes, and each piece's box on the image): wrapped
lines, a shaded box behind every written word on a log colour scale from white (p = 1) to dark red (the
scale's floor, the decade at or below the least likely word, between 1e-8 and 1e-2), a blue underline under
every improbability pick, a title, and a legend with the colour bar. Pillow only, and the DejaVu Sans font
that ships inside matplotlib's package data (found without importing matplotlib).

The layout measures each piece once; a word wider than a line is cut where the line ends, found by
proportion and a binary search over a line's worth of characters, so the cost grows linearly with the text.
Text past `MAX_PICTURE_CHARS` is cut with an ellipsis, and the picture stops at `MAX_LINES` lines or after
`MAX_LAYOUT_SECONDS` of CPU. A 1,000-character text is a 1000×~500 image of about 50 KB (a 256-colour palette
PNG), far below Discord's attachment limit. Characters DejaVu Sans lacks (CJK, emoji) draw as boxes.
"""

from __future__ import annotations

import asyncio
import io
import math
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from importlib.util import find_spec
from pathlib import Path

import discord
from PIL import Image, ImageDraw, ImageFont

import service.controls
from core.contracts import Piece, pieces_from_json
from core.settings import get_settings
from service.policy import Actor
from service.quotas import Quotas

MAX_PICTURE_CHARS = 4000  # twice Discord's message limit; longer texts are cut
MAX_LINES = 150  # 4,500 px of text: a text of blank lines or one-letter lines stops here
MAX_LAYOUT_SECONDS = 0.25  # of CPU for placing the text; what is not placed by then is left out
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
PICTURES_KEPT = 64  # the latest pictures drawn, kept for the next click on the same text (~20-50 KB each)


@dataclass
class Picture:
    png: bytes
    width: int
    height: int
    floor: float  # the probability at the dark end of the colour scale
    # (piece index, (left, top, right, bottom)) for every drawn fragment of a non-space piece: a word
    # wrapped across lines has several. Tests read colours inside them; an image map could use them.
    boxes: list[tuple[int, tuple[int, int, int, int]]] = field(default_factory=list)


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


class _Lines:
    """Places text left to right from (left, top), wrapping at `right`: `placements` [(piece index, text, x, y,
    width)]. Stops (`full`) at MAX_LINES lines or past the CPU deadline."""

    def __init__(self, font, left: int, right: int, top: int):
        self.font, self.left, self.right = font, left, right
        self.x, self.y, self.lines = float(left), top, 1
        self.placements: list[tuple[int, str, float, int, float]] = []
        self.deadline = time.process_time() + MAX_LAYOUT_SECONDS
        self.full = False

    def newline(self) -> None:
        if self.lines >= MAX_LINES or time.process_time() > self.deadline:
            self.full = True
            return
        self.x, self.y, self.lines = float(self.left), self.y + LINE_HEIGHT, self.lines + 1

    def _fitting(self, text: str, width: float, room: float) -> int:
        """The most leading characters of `text` (`width` wide) that fit in `room`: a guess by proportion, then
        a binary search that measures prefixes about a line long, never the whole text again."""
        guess = int(len(text) * room / width) if width > 0 else len(text)
        lo, hi = 0, min(len(text), 2 * guess + 16)  # lo fits; hi is tried, grown while it still fits
        while hi < len(text) and self.font.getlength(text[:hi]) <= room:
            lo, hi = hi, min(len(text), 2 * hi)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self.font.getlength(text[:mid]) <= room:
                lo = mid
            else:
                hi = mid
        return hi if hi == len(text) and self.font.getlength(text) <= room else lo

    def place(self, i: int, text: str, width: float) -> None:
        """One piece's text (`width` wide) at the pen: on the next line when it would run past the edge and
        fits on a line of its own; cut where each line ends when it is wider than a line."""
        while text and not self.full:
            room = self.right - self.x
            if width <= room:
                self.placements.append((i, text, self.x, self.y, width))
                self.x += width
                return
            if self.x > self.left and width <= self.right - self.left:
                self.newline()
                continue
            fits = self._fitting(text, width, room)
            if fits == 0 and self.x > self.left:
                self.newline()
                continue
            head = text[:max(fits, 1)]
            head_width = self.font.getlength(head)
            self.placements.append((i, head, self.x, self.y, head_width))
            self.x += head_width
            text, width = text[len(head):], max(width - head_width, 0.0)  # the rest's width, unmeasured
            if text:
                self.newline()


def _layout(pieces: Sequence[Piece], font, left: int, right: int, top: int):
    """Place each non-space piece, wrapping at whitespace and breaking a group wider than a line where the line
    ends. Returns (placements [(piece index, text, x, y, width)], y below the last line)."""
    lines = _Lines(font, left, right, top)
    space = font.getlength(" ")
    group: list[tuple[int, float]] = []  # pieces written without whitespace between them, with their widths

    def flush():
        if group and lines.x > left and lines.x + sum(w for _, w in group) > right:
            lines.newline()
        for i, w in group:
            lines.place(i, pieces[i].text, w)
        group.clear()

    newlines = 0  # in a row: more than two (one blank line) are not drawn, the picture is about the words
    for i, piece in enumerate(pieces):
        if lines.full:
            break
        if not piece.is_space:
            group.append((i, font.getlength(piece.text)))
            newlines = 0
            continue
        flush()
        for ch in piece.text:
            if ch == "\n":
                newlines += 1
                if newlines <= 2:
                    lines.newline()
            elif lines.x > left:  # a space at the start of a wrapped line is not drawn
                lines.x += space
    flush()
    return lines.placements, lines.y + LINE_HEIGHT


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
    for i, text, x, y, w in placements:
        piece = pieces[i]
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


# --- the Discord attachment -------------------------------------------------------------------------------------

def _draw(generation_id: int, actor: Actor) -> bytes | None:
    source = service.controls.picture_source(generation_id, actor)  # the member's access, checked each time
    if source is None:
        return None
    title, subtitle = describe_sampling(source["persona"], source["params"], source["seed"])
    return _png_of(source["pieces"], title, subtitle)


@lru_cache(maxsize=PICTURES_KEPT)
def _png_of(pieces: str, title: str, subtitle: str) -> bytes:
    """The PNG of a generation's pieces (their JSON) under its title: a text whose Info button several members
    press is drawn once (~45 ms of CPU for 600 characters)."""
    return render_picture(pieces_from_json(pieces), title, subtitle).png


class Drawing:
    """Where pictures are drawn: a thread pool of their own with IMPROBABLE_PICTURE_CONCURRENCY threads (so
    drawings never take the default executor's threads from database calls), and each member's cooldown
    (IMPROBABLE_PICTURE_COOLDOWN_SECONDS) between two pictures, in the SQL counters every bot process shares
    (service.quotas): a member of servers on two shards' processes waits the same."""

    def __init__(self, threads: int, cooldown: float, quotas: Quotas | None = None):
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="picture")
        self.cooldown = cooldown
        self.quotas = quotas or Quotas()

    async def may_draw(self, user_id: int | None) -> bool:
        """Claim the member's turn: False within their cooldown."""
        return await asyncio.to_thread(self.quotas.hit, f"picture:{user_id}", self.cooldown) == 0

    async def run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)


@lru_cache(maxsize=1)
def drawing() -> Drawing:
    settings = get_settings()
    return Drawing(settings.picture_concurrency, settings.picture_cooldown_seconds)


async def picture_file(generation_id: int, actor: Actor) -> discord.File | None:
    """The picture as an attachment, or None when the generation has none or the member asked for another
    picture within their cooldown (service.errors.TextGone when the generation is gone, or another server's)."""
    pool = drawing()
    if not await pool.may_draw(actor.user_id):
        return None
    png = await pool.run(_draw, generation_id, actor)
    if png is None:
        return None
    return discord.File(io.BytesIO(png), filename=f"probabilities-{generation_id}.png",
                        description="Each word shaded by the probability the model gave it")
