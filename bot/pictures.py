"""The probability picture of a result (`/generate show:probabilities`, and the Info button): drawn here on
request from the pieces the worker computed from the stream and kept in the generation row
(worker/probability.py). worker.picture is Pillow only (no torch), so the bot may draw; drawing costs about
0.3 s of CPU, too much to spend on every text in the worker when few are ever looked at."""

from __future__ import annotations

import asyncio
import io

import discord

import service.controls
from worker.picture import describe_sampling, pieces_from_json, render_picture


def _draw(generation_id: int) -> bytes | None:
    source = service.controls.picture_source(generation_id)
    if source is None:
        return None
    title, subtitle = describe_sampling(source["persona"], source["params"], source["seed"])
    return render_picture(pieces_from_json(source["pieces"]), title, subtitle).png


async def picture_file(generation_id: int) -> discord.File | None:
    """The picture as an attachment, or None when the generation has none (service.policy.UserError when the
    generation is gone)."""
    png = await asyncio.to_thread(_draw, generation_id)
    if png is None:
        return None
    return discord.File(io.BytesIO(png), filename=f"probabilities-{generation_id}.png",
                        description="Each word shaded by the probability the model gave it")
