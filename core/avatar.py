"""A persona's default avatar: its initials on a colour hashed from its slug, as a small PNG (Pillow, no
torch). The same persona always gets the same picture; the bot's webhooks and the scheduled posts of the
workers both upload it as a webhook's avatar (bot/webhooks.py explains why)."""

from __future__ import annotations

import colorsys
import hashlib
import io
import re

from PIL import Image, ImageDraw, ImageFont

SIZE = 128  # pixels: Discord shows avatars at most 128 px in chat
LABEL = " · AI"  # every name a persona posts under says the text is generated
MAX_NAME = 80  # Discord's limit on a webhook's name and a message's username
# Discord refuses a webhook name or username containing these, and names that are only "everyone" or "here"
_REFUSED = re.compile(r"discord|clyde", re.IGNORECASE)


def initials(name: str) -> str:
    """Up to two letters or digits: the first of the first two words ("Mad Hatter" → "MH"), else the first
    two of one word ("alice" → "AL"); "?" for a name without any."""
    words = re.findall(r"[^\W_]+", name)
    if not words:
        return "?"
    if len(words) == 1:
        return words[0][:2].upper()
    return (words[0][0] + words[1][0]).upper()


def colour(slug: str) -> tuple[int, int, int]:
    """A saturated, mid-dark colour from the slug's hash (white letters stay readable on it)."""
    digest = hashlib.sha256(slug.encode()).digest()
    hue = int.from_bytes(digest[:2], "big") / 65536
    r, g, b = colorsys.hls_to_rgb(hue, 0.4, 0.55)
    return round(r * 255), round(g * 255), round(b * 255)


def avatar_png(display_name: str, slug: str, size: int = SIZE) -> bytes:
    """The PNG bytes of the default avatar of a persona."""
    image = Image.new("RGB", (size, size), colour(slug))
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=size * 0.42)
    draw.text((size / 2, size / 2), initials(display_name), fill=(255, 255, 255), font=font, anchor="mm")
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()


def webhook_name(display_name: str) -> str:
    """The name a persona posts under through a webhook: its display name with the generated label
    ("Alice · AI"), without what Discord refuses in a webhook's name, within Discord's length."""
    name = re.sub(r"\s+", " ", _REFUSED.sub("", display_name)).strip(" @#:`") or "persona"
    return name[: MAX_NAME - len(LABEL)].rstrip() + LABEL


def digest(data: bytes) -> str:
    """A short name for an avatar's bytes (a stored webhook whose avatar differs is updated)."""
    return hashlib.sha256(data).hexdigest()[:16]
