"""`/personas` and `/persona info|create|retrain|delete`."""

from __future__ import annotations

import asyncio
import io
from typing import Literal

import discord
from discord import app_commands

import service.generation
import service.personas
import service.policy
import service.quotas
import service.webhooks
from bot import replies
from bot.autocomplete import forget_names, persona_autocomplete
from bot.formatting import escape, fit, split_message, truncate, user_error
from bot.jobs import GENERATE, JobError
from bot.limits import Refusal, actor_of, cooldown_message, trainer_only, upload_limit
from bot.training import start_run
from core.settings import Settings

# the service refuses more than IMPROBABLE_TRAIN_MAX_MINUTES; offer what a default deployment accepts
MINUTES = app_commands.Range[float, 0.05, float(Settings.model_fields["train_max_minutes"].default)]
SAMPLE_TOKENS = 200
SAMPLE_TIMEOUT = 30.0
Families = Literal["char-rnn", "word-gru", "word-mlp"]


def _status(p: service.personas.PersonaSummary) -> str:
    if p.training:
        return "training"
    return "ready" if p.ready else "no model yet"


@app_commands.command(name="personas", description="The voices you can use here.")
async def personas(interaction: discord.Interaction) -> None:
    await replies.defer(interaction)
    rows = await asyncio.to_thread(service.personas.list_personas, interaction.guild_id)
    lines = [f"**Personas** ({len(rows)}) · `/generate persona:<name>` · `/persona info <name>`"]
    for p in rows:
        label = service.personas.FAMILY_LABELS.get(p.family, p.family)
        lines.append(f"`{p.slug}` · {escape(p.display_name)} · {label} · {p.scope} · {_status(p)}")
    chunks = split_message("\n".join(lines))
    await replies.send(interaction, chunks[0])
    for chunk in chunks[1:]:
        await replies.followup(interaction, chunk)


persona_group = app_commands.Group(name="persona", description="Inspect, create, retrain and delete personas.")


def _info_text(info: service.personas.PersonaInfo) -> tuple[str, str]:
    label = service.personas.FAMILY_LABELS.get(info.family, info.family)
    header = f"**{escape(info.display_name)}** (`{info.slug}`, {info.scope}) · {info.family}: {label}"
    lines = [escape(truncate(info.description, 400))] if info.description else []
    for c in info.corpora[:3]:
        lines.append(f"Corpus `{escape(c['filename'])}`: {c['n_chars']:,} characters, {c['n_words']:,} words, "
                     f"{c['n_lines']:,} lines, {c['n_unique_chars']:,} distinct characters, "
                     f"{c['n_unique_words']:,} distinct words")
    if not info.corpora:
        lines.append("Corpus: the recipe's built-in text" if info.scope == "built-in" else "Corpus: none")
    if info.checkpoint_id is None:
        lines.append("Model: **none yet**" + (f" (run {info.active_run} is training)" if info.active_run else
                                               f" — train it with `/persona retrain {info.slug}`"))
    else:
        facts = [f"checkpoint {info.checkpoint_id}"]
        if info.val_loss is not None:
            facts.append(f"validation loss {info.val_loss:.3f} nats/token")
        if isinstance(info.metrics.get("val_bpc"), int | float):
            facts.append(f"{info.metrics['val_bpc']:.2f} bits/char")
        if info.trained_at:
            facts.append(f"trained <t:{int(discord.utils.parse_time(info.trained_at).timestamp())}:R>")
        lines.append("Model: " + " · ".join(facts))
        if info.originality is not None:
            lines.append(f"Originality: {info.originality:.0%} of the sample's 20-character windows are not "
                         "in the corpus")
    body = "\n".join(lines)
    if info.sample:
        body += "\nSample:\n" + "\n".join("> " + line for line in escape(info.sample.strip()).splitlines())
    return header, body


async def _fresh_sample(interaction: discord.Interaction, slug: str) -> str | None:
    """A short sample from the active model when training left none (e.g. a bundled checkpoint)."""
    bot = interaction.client
    try:
        request = await asyncio.to_thread(service.generation.prepare_generation, slug, "", actor_of(interaction),
                                          {"max_tokens": SAMPLE_TOKENS})
        # counted against the member who asked and the server, like any job (no cooldown: they asked for info)
        claim = await bot.limits.admit(request, member_id=interaction.user.id, guild_id=interaction.guild_id,
                                       cooldown=False)
    except (service.policy.UserError, Refusal):
        return None
    try:
        job = await bot.jobs.submit(GENERATE, request.payload, user_id=None, guild_id=interaction.guild_id,
                                    label=f"sample of {slug}")
        result = await bot.jobs.wait(job, timeout=SAMPLE_TIMEOUT)
    except JobError:
        return None
    finally:
        await bot.limits.release(claim)
    return result.get("text") or None


@persona_group.command(name="info", description="A persona's corpus, model quality, loss curve and a sample.")
@app_commands.describe(persona="Which persona")
@app_commands.autocomplete(persona=persona_autocomplete)
async def info(interaction: discord.Interaction, persona: str) -> None:
    await replies.defer(interaction)
    data = await asyncio.to_thread(service.personas.persona_info, persona, actor_of(interaction))
    if data.checkpoint_id is not None and not data.sample:
        data.sample = await _fresh_sample(interaction, data.slug)
        await asyncio.to_thread(service.personas.fill_originality, data)
    header, body = _info_text(data)
    rendered = fit(header, body, full_text=f"{header}\n{body}", filename=f"{data.slug}.txt")
    files = [discord.File(io.BytesIO(data.loss_png), filename="loss.png")] if data.loss_png else []
    if rendered.file:
        files.append(discord.File(io.BytesIO(rendered.file[1]), filename=rendered.file[0]))
    await replies.send(interaction, rendered.content, attachments=files)


MORE_FILES = "Another .txt file of the same voice (kept apart from the others in training)"


async def _download(interaction: discord.Interaction, files: list[discord.Attachment | None]) -> list | None:
    """(data, filename) of each attachment given, in order; None (the user told) when Discord fails us."""
    try:
        return [(await f.read(), f.filename) for f in files if f is not None]
    except discord.HTTPException:
        await replies.fail(interaction, "Could not download the attachment from Discord; try again.")
        return None


async def _checked_before_download(interaction: discord.Interaction, files: list[discord.Attachment | None], *,
                                   minutes: float | None, name: str | None = None,
                                   persona: str | None = None) -> bool:
    """Everything known before a byte is read (service.quotas.check_upload: name, permission, cap from
    Discord's sizes, stored bytes, training minutes a day), then the train cooldown, shared by every bot
    process and managers included. False (the user told) when refused."""
    actor = actor_of(interaction)
    sizes = [f.size for f in files if f is not None]
    try:
        await asyncio.to_thread(service.quotas.check_upload, actor, sizes=sizes, name=name, persona=persona,
                                minutes=minutes)
    except service.policy.UserError as e:
        await replies.fail(interaction, user_error(e))
        return False
    refused = await interaction.client.limits.train_cooldown(actor)
    if refused is not None:
        await replies.fail(interaction, cooldown_message(refused))
        return False
    return True


def _ingests(bot) -> asyncio.Semaphore:
    """At most IMPROBABLE_INGEST_CONCURRENCY uploads downloaded and read at once in this process."""
    if getattr(bot, "ingest_slots", None) is None:
        bot.ingest_slots = asyncio.Semaphore(bot.settings.ingest_concurrency)
    return bot.ingest_slots


# Discord has no "several files" option, so a command takes file, file2 … file5: an upload of several texts
# (e.g. one book per file) becomes one corpus whose documents training keeps apart.
@persona_group.command(name="create", description="Create a persona from text files and train it.")
@app_commands.describe(name="Lower-case letters, digits and hyphens, e.g. my-poet", file="A plain-text file (.txt)",
                       family="char-rnn: characters (default, best for small texts); word models need more text",
                       description="One line about the voice",
                       minutes="Training time budget (default: the family's recipe)",
                       file2=MORE_FILES, file3=MORE_FILES, file4=MORE_FILES, file5=MORE_FILES)
@trainer_only()
@upload_limit()
async def create(interaction: discord.Interaction, name: str, file: discord.Attachment,
                 family: Families = "char-rnn", description: str = "", minutes: MINUTES | None = None,
                 file2: discord.Attachment | None = None, file3: discord.Attachment | None = None,
                 file4: discord.Attachment | None = None, file5: discord.Attachment | None = None) -> None:
    await replies.defer(interaction)
    attachments = [file, file2, file3, file4, file5]
    if not await _checked_before_download(interaction, attachments, minutes=minutes, name=name):
        return
    async with _ingests(interaction.client):
        files = await _download(interaction, attachments)
        if files is None:
            return
        (data, filename), *more = files
        new = await asyncio.to_thread(service.personas.create_persona, actor_of(interaction), name, data, filename,
                                      family, description, minutes, more)
    await asyncio.to_thread(service.quotas.record_training, interaction.guild_id, minutes)
    forget_names(interaction.guild_id)
    await start_run(interaction, new)


@persona_group.command(name="retrain", description="Train a persona again (on new texts, or its own).")
@app_commands.describe(persona="Which persona", file="A new text to train on (optional)",
                       minutes="Training time budget (default: the recipe's)",
                       file2=MORE_FILES, file3=MORE_FILES, file4=MORE_FILES, file5=MORE_FILES)
@app_commands.autocomplete(persona=persona_autocomplete)
@trainer_only()
@upload_limit()
async def retrain(interaction: discord.Interaction, persona: str, file: discord.Attachment | None = None,
                  minutes: MINUTES | None = None, file2: discord.Attachment | None = None,
                  file3: discord.Attachment | None = None, file4: discord.Attachment | None = None,
                  file5: discord.Attachment | None = None) -> None:
    await replies.defer(interaction)
    attachments = [file, file2, file3, file4, file5]
    if not await _checked_before_download(interaction, attachments, minutes=minutes, persona=persona):
        return
    async with _ingests(interaction.client):
        files = await _download(interaction, attachments)
        if files is None:
            return
        (data, filename), *more = files or [(None, None)]
        new = await asyncio.to_thread(service.personas.retrain, actor_of(interaction), persona, data, filename,
                                      minutes, more)
    await asyncio.to_thread(service.quotas.record_training, interaction.guild_id, minutes)
    await start_run(interaction, new)


@persona_group.command(name="delete", description="Delete one of this server's personas, its models and texts.")
@app_commands.describe(persona="Which persona (this server's own)")
@app_commands.autocomplete(persona=persona_autocomplete)
@trainer_only()
async def delete(interaction: discord.Interaction, persona: str) -> None:
    await replies.defer(interaction, ephemeral=True)
    name = await asyncio.to_thread(service.personas.delete_persona, actor_of(interaction), persona)
    forget_names(interaction.guild_id)
    await replies.send(interaction, f"Deleted `{name}` with its models, texts, schedules and history.")


@persona_group.command(name="avatar", description="The picture a persona posts with in this server.")
@app_commands.describe(persona="Which persona", image="A PNG, JPEG, GIF or WebP (none: draw it from the name again)")
@app_commands.autocomplete(persona=persona_autocomplete)
@trainer_only()
async def avatar(interaction: discord.Interaction, persona: str, image: discord.Attachment | None = None) -> None:
    await replies.defer(interaction, ephemeral=True)
    if image is not None and image.size > service.webhooks.MAX_AVATAR_BYTES:  # refused before downloading
        await replies.send(interaction, f"That image is too large for an avatar ({image.size:,} bytes; at most "
                                        f"{service.webhooks.MAX_AVATAR_BYTES:,}).")
        return
    try:
        data = await image.read() if image is not None else None
        slug = await asyncio.to_thread(service.webhooks.choose_avatar, actor_of(interaction), persona, data)
    except service.policy.UserError as e:
        await replies.send(interaction, user_error(e))
        return
    await replies.send(interaction, f"`{slug}` now posts with " + ("that picture." if data else
                                                                    "a picture drawn from its name."))


COMMANDS = (personas, persona_group)
