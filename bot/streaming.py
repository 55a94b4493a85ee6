"""Running one generate job for Discord: enqueue, show the queue position and the text as it arrives
(edits at least `bot_stream_interval` seconds apart), then the result with its buttons.

An `Output` is where the text goes: the deferred response of an interaction, a reply to a message, a new
message in a channel, or a message posted as the persona through a channel webhook (bot/webhooks.py chooses).
Each says where its message is, so that a restarted bot reopens it (bot/resume.py) and finishes the text.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import time
from collections.abc import Callable

import discord
from discord.utils import MISSING

import service.generation
from bot import replies
from bot.formatting import MESSAGE_LIMIT, Rendered, render_generation, truncate
from bot.jobs import GENERATE, JobError, JobTimeout, Unavailable
from bot.limits import Refusal
from core import metrics

log = logging.getLogger(__name__)
NO_MENTIONS = discord.AllowedMentions.none()
Buttons = Callable[[int, int | None], discord.ui.View]  # (generation id, requester) → the result's buttons
MIN_EDIT_INTERVAL = 1.0  # seconds between edits of one message, whatever the settings say


def _files(rendered: Rendered) -> list[discord.File]:
    if rendered.file is None:
        return []
    name, data = rendered.file
    return [discord.File(io.BytesIO(data), filename=name)]


class Output:
    shown = False  # whether text (not just "thinking…") is visible
    last = ""  # the content shown last
    # told the message id when the message is first created (and the channel webhook's id, when posted by one)
    on_posted: Callable[..., None] | None = None

    def where(self) -> dict:
        """Where the message is, as service.generation.remember_in_flight takes it (a restarted bot
        reopens it with `reopen`)."""
        raise NotImplementedError

    def stopped(self, message: str) -> str:
        """The text shown so far with why it stopped under it."""
        note = f"\n⚠️ {message}"
        return truncate(self.last.removesuffix(" ▌"), MESSAGE_LIMIT - len(note)) + note

    async def edit(self, rendered: Rendered, view: discord.ui.View | None = MISSING) -> int | None:
        raise NotImplementedError

    async def error(self, message: str) -> None:
        raise NotImplementedError


class InteractionOutput(Output):
    """The deferred response of a slash command or a button (for a button deferred as an update, the
    message the button is on)."""

    def __init__(self, interaction: discord.Interaction):
        self.interaction = interaction

    def where(self) -> dict:
        return {"channel_id": self.interaction.channel_id, "interaction_token": self.interaction.token}

    async def _edit_original(self, **fields) -> discord.Message:
        return await self.interaction.edit_original_response(**fields)

    async def edit(self, rendered: Rendered, view: discord.ui.View | None = MISSING) -> int | None:
        message = await self._edit_original(content=rendered.content, attachments=_files(rendered), view=view,
                                            allowed_mentions=NO_MENTIONS)
        self.shown, self.last = True, rendered.content
        return message.id

    async def error(self, message: str) -> None:
        if self.shown:  # the text so far stays, with why it stopped
            with contextlib.suppress(discord.HTTPException):
                await self._edit_original(content=self.stopped(message), view=None, allowed_mentions=NO_MENTIONS)
            return
        await replies.fail(self.interaction, message)


class ReplyOutput(Output):
    """A reply to a user's message (mention chat), created on the first edit."""

    def __init__(self, message: discord.Message | discord.PartialMessage, author_id: int | None = None):
        self.source = message
        self.reply: discord.Message | discord.PartialMessage | None = None
        self.author_id = author_id  # the bot's user id: `recall` looks for its reply when the id was never noted

    def where(self) -> dict:
        return {"channel_id": self.source.channel.id, "reply_to": self.source.id}

    async def recall(self) -> None:
        if self.reply is None and self.author_id is not None:
            # posted, perhaps, by a bot that stopped before it could note the message's id
            self.reply = await self._posted_reply()
        if self.reply is not None:
            self.reply = await self.reply.fetch()
            self.shown, self.last = True, self.reply.content

    async def _posted_reply(self, looking_at: int = 50) -> discord.Message | None:
        """The bot's reply to the source message among the messages that came just after it, if any."""
        async for message in self.source.channel.history(after=self.source, limit=looking_at, oldest_first=True):
            ref = message.reference
            if message.author.id == self.author_id and ref is not None and ref.message_id == self.source.id:
                return message
        return None

    async def edit(self, rendered: Rendered, view: discord.ui.View | None = MISSING) -> int | None:
        if self.reply is None:
            self.reply = await self.source.reply(rendered.content, files=_files(rendered), view=view,
                                                 allowed_mentions=NO_MENTIONS, mention_author=False)
            if self.on_posted is not None:
                self.on_posted(self.reply.id)
        else:
            self.reply = await self.reply.edit(content=rendered.content, attachments=_files(rendered), view=view,
                                               allowed_mentions=NO_MENTIONS)
        self.shown, self.last = True, rendered.content
        return self.reply.id

    async def error(self, message: str) -> None:
        with contextlib.suppress(discord.HTTPException):
            if self.reply is not None:
                await self.reply.edit(content=self.stopped(message), view=None, allowed_mentions=NO_MENTIONS)
            else:
                await self.source.reply(f"⚠️ {message}", allowed_mentions=NO_MENTIONS, mention_author=False)


class ChannelOutput(Output):
    """A new message of the bot in a channel (not a reply), created on the first edit. The persona's name leads
    it (render_generation's header), so a turn posted as the bot still says whose it is."""

    def __init__(self, channel: discord.abc.Messageable, channel_id: int):
        self.channel, self.channel_id = channel, channel_id
        self.message: discord.Message | discord.PartialMessage | None = None

    def where(self) -> dict:
        return {"channel_id": self.channel_id}  # and on_posted notes the message (a restarted bot reopens it)

    async def recall(self) -> None:
        if self.message is not None:
            self.message = await self.message.fetch()
            self.shown, self.last = True, self.message.content

    async def edit(self, rendered: Rendered, view: discord.ui.View | None = MISSING) -> int | None:
        if self.message is None:
            extra = {"view": view} if isinstance(view, discord.ui.View) else {}
            self.message = await self.channel.send(rendered.content, files=_files(rendered),
                                                   allowed_mentions=NO_MENTIONS, **extra)
            if self.on_posted is not None:
                self.on_posted(self.message.id)
        else:
            self.message = await self.message.edit(content=rendered.content, attachments=_files(rendered),
                                                   view=view, allowed_mentions=NO_MENTIONS)
        self.shown, self.last = True, rendered.content
        return self.message.id

    async def error(self, message: str) -> None:
        with contextlib.suppress(discord.HTTPException):
            if self.message is not None:
                await self.message.edit(content=self.stopped(message), view=None, allowed_mentions=NO_MENTIONS)
            else:
                await self.channel.send(f"⚠️ {message}", allowed_mentions=NO_MENTIONS)


class WebhookOutput(Output):
    """A message posted as a persona through a channel webhook (bot/webhooks.py), created on the first edit
    and edited through the webhook's own edit-message endpoint (the bot's token may not edit it).

    `fallback` is where the text goes when the webhook turns out to be gone at the first post (a member
    deleted it): the bot's own message, as without Manage Webhooks, and `gone` is told the webhook's id.
    `interaction`: the command that asked, whose "thinking…" response is removed once the persona's message
    is up. Before anything is posted, errors go to the fallback (the user alone sees them)."""

    def __init__(self, webhook: discord.Webhook, username: str, channel_id: int, fallback: Output, *,
                 interaction: discord.Interaction | None = None, gone: Callable[[int], None] | None = None):
        self.webhook, self.username, self.channel_id = webhook, username, channel_id
        self.fallback, self.interaction, self.gone = fallback, interaction, gone
        self.message: discord.WebhookMessage | None = None
        self.fell_back = False

    message_id: int | None = None  # the message a restarted bot reopens (bot.webhooks.reopen)

    def where(self) -> dict:
        # until the persona's message is posted, the fallback's message is the one a restarted bot reopens;
        # then on_posted notes the message and the webhook (whose token stays with the persona's webhooks)
        return self.fallback.where()

    async def recall(self) -> None:
        """What the persona's message (`message_id`) shows now, for a restarted bot to finish it."""
        self.message = await self.webhook.fetch_message(self.message_id)
        self.shown, self.last = True, self.message.content

    async def _post(self, rendered: Rendered, view: discord.ui.View | None) -> discord.WebhookMessage:
        extra = {"view": view} if isinstance(view, discord.ui.View) else {}
        return await self.webhook.send(rendered.content, username=self.username, files=_files(rendered),
                                       allowed_mentions=NO_MENTIONS, wait=True, **extra)

    async def _use_fallback(self) -> None:
        self.fell_back = True
        self.fallback.on_posted = self.on_posted
        if self.gone is not None:
            self.gone(self.webhook.id)

    async def edit(self, rendered: Rendered, view: discord.ui.View | None = MISSING) -> int | None:
        if self.fell_back:
            return await self.fallback.edit(rendered, view)
        if self.message is None:
            try:
                self.message = await self._post(rendered, view)
            except (discord.NotFound, discord.Forbidden) as e:
                log.warning("webhook %s refused a post (%s): posting as the bot", self.webhook.id, e.status)
                await self._use_fallback()
                return await self.fallback.edit(rendered, view)
            if self.on_posted is not None:
                self.on_posted(self.message.id, self.webhook.id)
            if self.interaction is not None:  # the persona's message replaces the bot's "thinking…"
                in_background(_delete_original(self.interaction))
        else:
            self.message = await self.webhook.edit_message(self.message.id, content=rendered.content,
                                                           attachments=_files(rendered), view=view,
                                                           allowed_mentions=NO_MENTIONS)
        self.shown, self.last = True, rendered.content
        return self.message.id

    async def add_files(self, files: list[discord.File]) -> None:
        """Attach more files to the posted message, keeping its attachments."""
        if self.fell_back or self.message is None:
            return
        self.message = await self.webhook.edit_message(self.message.id,
                                                       attachments=[*self.message.attachments, *files])

    async def error(self, message: str) -> None:
        if self.message is None:
            await self.fallback.error(message)
            return
        with contextlib.suppress(discord.HTTPException):
            await self.webhook.edit_message(self.message.id, content=self.stopped(message), view=None,
                                            allowed_mentions=NO_MENTIONS)


async def _delete_original(interaction: discord.Interaction) -> None:
    with contextlib.suppress(discord.HTTPException):
        await interaction.delete_original_response()


class Streamer:
    """Edits of one Output at least `interval` seconds apart; only the latest pending text is shown."""

    def __init__(self, output: Output, interval: float):
        self.output = output
        self.interval = max(interval, MIN_EDIT_INTERVAL)
        self._pending: Rendered | None = None
        self._last = -float("inf")
        self._task: asyncio.Task | None = None
        self._lock = asyncio.Lock()

    def update(self, rendered: Rendered) -> None:
        self._pending = rendered
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._flush())

    async def _flush(self) -> None:
        while self._pending is not None:
            delay = self._last + self.interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            async with self._lock:
                rendered, self._pending = self._pending, None
                if rendered is None:
                    return
                try:
                    await self.output.edit(rendered)
                except discord.HTTPException as e:
                    log.warning("streaming edit failed: %s", e)
                self._last = time.monotonic()

    async def stop(self) -> None:
        self._pending = None
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def finish(self, rendered: Rendered, view: discord.ui.View | None = MISSING) -> int | None:
        await self.stop()
        async with self._lock:
            delay = self._last + self.interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            message_id = await self.output.edit(rendered, view)
            self._last = time.monotonic()
            return message_id


def _unknown_note(result: dict, family: str) -> str:
    unknown = result.get("unknown") or []
    if not unknown:
        return ""
    what = "characters" if family == "char-rnn" else "words"
    # never the token's name: users should not see "<unk>", only that the model did not know the word
    fate = "dropped" if family == "char-rnn" else "read as an unknown word"
    shown = ", ".join(repr(u) for u in unknown[:10]) + ("…" if len(unknown) > 10 else "")
    return f"{what} this persona never saw were {fate}: {shown}"


def _joined(request: service.generation.PreparedGeneration, completion: str) -> str:
    """The shown prompt and the completion as the persona's tokenizer would join them (word models put a
    space between words that the completion does not start with)."""
    return service.generation.join_text(request.shown_prompt, completion, request.family)


async def run_generation(bot, output: Output, request: service.generation.PreparedGeneration, buttons: Buttons, *,
                         user_id: int | None, guild_id: int | None, source: str = "generate",
                         member_id: int | None = None, claim=None) -> int | None:
    """Enqueue, stream, show the result with `buttons(generation_id, user_id)` under it (bot.views); returns
    the generation id (None on failure). Every failure ends in a message: nothing is left 'thinking…'.
    `source` (generate, button:…, mention, reply) labels the metrics. The job counts by its cost against
    `member_id` (default: the requester; an ambient reply: the member who triggered it) and the server while
    it runs (bot.limits.Limits.admit; `claim`: admitted already by the caller)."""
    started = time.monotonic()
    gid = None
    try:
        claim = claim or await bot.limits.admit(request, member_id=user_id if member_id is None else member_id,
                                       guild_id=guild_id, cooldown=user_id is not None)
    except Refusal as e:
        if user_id is not None:
            bot.limits.refund(user_id, guild_id)
        await output.error(e.message)
        metrics.record_interaction(source, "refused", time.monotonic() - started, kind="generate")
        return None
    try:
        gid = await _run(bot, output, request, buttons, user_id=user_id, guild_id=guild_id, task_id=claim.id)
    finally:
        await bot.limits.release(claim)
    metrics.record_interaction(source, "ok" if gid is not None else "failed", time.monotonic() - started,
                               kind="generate")
    return gid


async def _run(bot, output: Output, request: service.generation.PreparedGeneration, buttons: Buttons, *,
               user_id: int | None, guild_id: int | None, task_id: str | None = None) -> int | None:
    # the job's task id is its claim's id, so a restarted bot that finishes it releases the claim too
    gid = None
    try:
        job = await bot.jobs.submit(GENERATE, request.payload, user_id=user_id, guild_id=guild_id,
                                    label=request.label, task_id=task_id)
    except JobError as e:
        if user_id is not None:
            bot.limits.refund(user_id, guild_id)
        await output.error(e.message)
    else:
        await _remember(output, job.id, request, user_id=user_id, guild_id=guild_id)
        gid = await follow_generation(bot, output, request, job, buttons, user_id=user_id, guild_id=guild_id,
                                      refund=user_id is not None)
    return gid


async def _remember(output: Output, task_id: str, request: service.generation.PreparedGeneration, **who) -> None:
    """Keep the job and its message in SQL until the outcome is shown (a bot that dies meanwhile finishes it
    when it starts again). Best effort: without the database the job still runs, it just cannot be resumed."""
    try:
        await asyncio.to_thread(service.generation.remember_in_flight, task_id, request, **output.where(), **who)
    except Exception as e:  # noqa: BLE001 - the database being away must not fail the generation
        log.warning("could not remember generate job %s for a restart: %s", task_id, e)
        return

    def posted(message_id: int, webhook_id: int | None = None) -> None:
        in_background(asyncio.to_thread(service.generation.placed_in_flight, task_id, message_id, webhook_id))

    output.on_posted = posted


_background: set[asyncio.Task] = set()


def in_background(coroutine) -> None:
    """Run `coroutine` as a task that is kept until done (fire and forget)."""
    task = asyncio.ensure_future(coroutine)
    _background.add(task)  # the event loop keeps only weak references to tasks
    task.add_done_callback(_background.discard)


async def follow_generation(bot, output: Output, request: service.generation.PreparedGeneration, job, buttons: Buttons,
                            *, user_id: int | None, guild_id: int | None, refund: bool, timeout: float | None = None,
                            lost: str | None = None) -> int | None:
    """Stream a submitted job into `output`, then show its outcome; forget the job's in-flight row once the
    outcome is shown (not when cancelled: a bot shutting down leaves it for the next start to finish).
    `lost`: what to say instead of a timeout (a resumed job whose outcome never came)."""
    gid = await _show(bot, output, request, job, buttons, user_id=user_id, guild_id=guild_id, refund=refund,
                      timeout=timeout, lost=lost)
    try:
        await asyncio.to_thread(service.generation.forget_in_flight, job.id)
    except Exception as e:  # noqa: BLE001 - a stale row is finished again (idempotently) at the next start
        log.warning("could not forget generate job %s: %s", job.id, e)
    return gid


async def _show(bot, output: Output, request: service.generation.PreparedGeneration, job, buttons: Buttons, *,
                user_id: int | None, guild_id: int | None, refund: bool, timeout: float | None,
                lost: str | None) -> int | None:
    streamer = Streamer(output, bot.settings.bot_stream_interval)
    shown_text = ""

    def partial(text: str, note: str = "") -> Rendered:
        return render_generation(request.display_name, request.shown_prompt, text, request.params, partial=True,
                                 note="\n".join(n for n in (request.note, note) if n), joined=_joined(request, text))

    async def on_progress(state: str, meta: dict) -> None:
        nonlocal shown_text
        if state == "PROGRESS" and meta.get("text"):
            shown_text = meta["text"]
            streamer.update(partial(shown_text))
        elif state == "STALLED":
            streamer.update(partial(shown_text, f"⏳ The generator went quiet {meta.get('silent', '?')} s ago; "
                                                f"waiting for another one to take over…"))
        elif state == "PENDING" and (meta.get("position") or 1) > 1:
            streamer.update(Rendered(f"⏳ Waiting for a generator: position {meta['position']} in the queue "
                                     f"(`/queue` to see or cancel)."))

    try:
        result = await bot.jobs.wait(job, on_progress, timeout=timeout)
    except JobError as e:
        await streamer.stop()
        if isinstance(e, Unavailable) and refund and user_id is not None:
            bot.limits.refund(user_id, guild_id)
        await output.error(lost if lost and isinstance(e, JobTimeout) else e.message)
        return None
    except Exception:
        await streamer.stop()
        log.exception("generate job %s", job.id)
        await output.error("Something went wrong while generating; it has been logged. Try again.")
        return None

    params = {**request.params, "seed": result.get("seed", request.params.get("seed"))}
    notes = [n for n in (request.note, _unknown_note(result, request.family)) if n]
    text = result.get("text", "")
    # The worker joins prompt and completion with the model's own detokenizer (full_text); a continued
    # text's shown prompt is only its tail, so the separator is taken from the join rule then.
    joined = result.get("full_text") if request.shown_prompt == request.payload["prompt"] else None
    rendered = render_generation(request.display_name, request.shown_prompt, text, params, note="\n".join(notes),
                                 joined=joined or _joined(request, text))
    generation_id = result.get("generation_id")
    view = buttons(generation_id, user_id) if generation_id else MISSING
    try:
        message_id = await streamer.finish(rendered, view)
    except discord.HTTPException as e:
        log.warning("could not show a result: %s", e)
        await output.error("The text was generated but could not be shown (Discord refused the message).")
        return None
    if generation_id and message_id:
        bot.remember_generation(message_id, generation_id)
        await asyncio.to_thread(service.generation.attach_message, generation_id, message_id)
    return generation_id
