"""Training from Discord: enqueueing a run, its live progress message, `/train status` and `/train cancel`.

The progress message is edited at most every `bot_progress_interval` seconds (and only when its text
changes) from the run's row in the database, which the trainer updates every few seconds: a progress bar,
step, loss, validation loss, tokens/s and the ETA as a Discord relative timestamp, or the queue position
while it waits. When the run ends, the message shows the outcome and a follow-up brings the loss curve and
a sample. The run row remembers the message, so a restarted bot resumes editing it; after the
interaction's 15-minute token has expired, edits go through the channel instead.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from datetime import timedelta

import discord
from discord import app_commands

import service.policy
import service.training
from bot import replies
from bot.autocomplete import forget_names, run_autocomplete
from bot.formatting import escape, progress_bar, split_message, training_progress, truncate, user_error
from bot.jobs import TRAIN, JobError

log = logging.getLogger(__name__)
NO_MENTIONS = discord.AllowedMentions.none()
POLL_SECONDS = 1.0
TRAINER_CHECK_AFTER = 5.0  # seconds queued before the message says why the run waits
TRAINER_RECHECK = 30.0
DB_RETRY_SECONDS = 5.0


class ProgressMessage:
    """The message showing a run's progress: through the interaction while its token is valid, else
    through the channel."""

    def __init__(self, bot, channel_id: int, message_id: int, interaction: discord.Interaction | None = None):
        self.bot, self.channel_id, self.message_id, self.interaction = bot, channel_id, message_id, interaction
        self.last_edit = 0.0  # time.monotonic() of the last edit
        self.shown: str | None = None
        self.shown_without_eta: str | None = None  # the shown progress less its ETA (see TrainingWatcher._watch)

    def _token_valid(self) -> bool:
        return self.interaction is not None and \
            discord.utils.utcnow() - self.interaction.created_at < \
            timedelta(seconds=self.bot.settings.liveness.token_lifetime)

    def _partial(self) -> discord.PartialMessage:
        return self.bot.get_partial_messageable(self.channel_id).get_partial_message(self.message_id)

    async def edit(self, content: str) -> None:
        if self._token_valid():
            await self.interaction.edit_original_response(content=content, allowed_mentions=NO_MENTIONS)
        else:
            await self._partial().edit(content=content, allowed_mentions=NO_MENTIONS)
        self.last_edit, self.shown = time.monotonic(), content

    async def post(self, content: str, file: discord.File | None = None) -> None:
        kwargs = {"allowed_mentions": NO_MENTIONS}
        if file is not None:
            kwargs["file"] = file
        if self._token_valid():
            await self.interaction.followup.send(content, **kwargs)
        else:
            await self.bot.get_partial_messageable(self.channel_id).send(content, reference=self._partial(),
                                                                         mention_author=False, **kwargs)


class TrainingWatcher:
    """One task per run with a progress message."""

    def __init__(self, bot):
        self.bot = bot
        self.tasks: dict[int, asyncio.Task] = {}

    def watch(self, run_id: int, message: ProgressMessage) -> None:
        if run_id in self.tasks and not self.tasks[run_id].done():
            return
        self.tasks[run_id] = asyncio.create_task(self._watch(run_id, message), name=f"watch-run-{run_id}")

    async def resume(self) -> None:
        """Pick up the progress messages of runs that were active when the bot stopped, in the servers on this
        process's shards (the process of another shard watches its own)."""
        try:
            runs = await asyncio.to_thread(service.training.runs_to_watch, self.bot.settings.shards)
        except Exception:  # noqa: BLE001 - a broken database must not stop the bot from starting
            log.exception("could not list active training runs")
            return
        for run in runs:
            self.watch(run.id, ProgressMessage(self.bot, run.channel_id, run.message_id))

    async def close(self) -> None:
        for task in self.tasks.values():
            task.cancel()

    async def _watch(self, run_id: int, message: ProgressMessage) -> None:
        interval = self.bot.settings.bot_progress_interval
        check_at = time.monotonic() + TRAINER_CHECK_AFTER
        queue_note = ""
        try:
            while True:
                try:
                    view = await asyncio.to_thread(service.training.run_status, run_id)
                except Exception as e:  # noqa: BLE001 - the database hiccuped: keep watching
                    log.warning("run %s: cannot read its progress: %s", run_id, e)
                    await asyncio.sleep(DB_RETRY_SECONDS)
                    continue
                if view is None:
                    await message.edit("This training run was deleted.")
                    return
                if view.finished:
                    break
                if view.status != "queued":
                    queue_note = ""  # the note says why it waits: gone once it trains
                elif time.monotonic() >= check_at:
                    check_at = time.monotonic() + TRAINER_RECHECK
                    queue_note = await self._queue_note()
                content, without_eta = (_progress(view, queue_note, eta=eta) for eta in (True, False))
                # an ETA that moved is no news (each reader's client counts it down by itself)
                if without_eta != message.shown_without_eta and time.monotonic() - message.last_edit >= interval:
                    try:
                        await message.edit(content)
                        message.shown_without_eta = without_eta
                    except discord.HTTPException as e:
                        log.warning("run %s: progress edit failed: %s", run_id, e)
                await asyncio.sleep(POLL_SECONDS)
            await self._finish(view, message, interval)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("watching run %s", run_id)
        finally:
            self.tasks.pop(run_id, None)

    async def _queue_note(self) -> str:
        """Why a queued run waits: runs a trainer is training (a trainer busy with one cannot answer the
        broker, so this is asked of the runs' heartbeats first), or no trainer online at all."""
        try:
            training = await asyncio.to_thread(service.training.runs_training)
        except Exception as e:  # noqa: BLE001 - the database hiccuped: say nothing rather than guess
            log.warning("cannot count the runs training: %s", e)
            return ""
        if training:
            runs = "1 run is" if training == 1 else f"{training} runs are"
            return f"\n-# {runs} training ahead; this one starts when a trainer is free."
        if not await self.bot.jobs.workers_listening("train"):
            return "\n-# No trainer is online right now; the run starts when one is."
        return ""

    async def _finish(self, view: service.training.RunView, message: ProgressMessage, interval: float) -> None:
        delay = message.last_edit + interval - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        name = view.display_name
        if view.status == "succeeded":
            await message.edit(f"**Trained `{view.persona_slug}`** · done\n{progress_bar(1.0)}\n"
                               f"{service.training.describe_run_result(view)}")
            png = await asyncio.to_thread(service.training.loss_curve, view)
            sample = view.metrics.get("sample") or ""
            if view.metrics.get("promoted", True):
                text = f"✅ **{escape(name)}** is ready: `/generate persona:{view.persona_slug}`"
                heading = "A sample"
            else:  # refused by the quality gate: say why, with the number, and what to do
                reason = view.metrics.get("gate") or "it is not better than the active model"
                text = f"⚠️ **{escape(name)}** is not good enough yet: {escape(reason)}."
                heading = "What it writes so far"
            if sample.strip():
                text += f"\n{heading}:\n" + _quote(escape(truncate(sample.strip(), 1500)))
            file = discord.File(io.BytesIO(png), filename="loss.png") if png else None
            await message.post(truncate(text, 2000), file)
        elif view.status == "cancelled":
            await message.edit(f"**Training `{view.persona_slug}`** · cancelled at step "
                               f"{view.progress.step or 0}.")
        else:
            error = truncate(view.error or "unknown error", 1500)
            await message.edit(f"**Training `{view.persona_slug}`** · failed\n{escape(error)}")


def _progress(view: service.training.RunView, queue_note: str, *, eta: bool) -> str:
    content = training_progress(view.display_name, view.status, view.progress, now=time.time(),
                                queue_position=view.position, eta=eta) + queue_note
    return content + "\n-# Cancelling…" if view.cancel_requested else content


def _quote(text: str) -> str:
    return "\n".join("> " + line for line in text.splitlines())


async def start_run(interaction: discord.Interaction, new: service.training.NewRun) -> None:
    """Enqueue a created run and show its progress message (the deferred response)."""
    bot = interaction.client
    try:
        await bot.jobs.submit(TRAIN, new.run_id, user_id=interaction.user.id, guild_id=interaction.guild_id,
                              label=f"train {new.persona_slug}", track=False)
    except JobError as e:
        await asyncio.to_thread(service.training.abandon_run, new.run_id, delete_persona=new.created_persona)
        forget_names(interaction.guild_id)
        await replies.fail(interaction, e.message)
        return
    view = await asyncio.to_thread(service.training.run_status, new.run_id)
    notes = "".join(f"\n-# {escape(w)}" for w in new.warnings)
    content = training_progress(new.display_name, view.status if view else "queued", {}, now=time.time(),
                                queue_position=view.position if view else None) + notes
    sent = await replies.send(interaction, content)
    await asyncio.to_thread(service.training.set_run_message, new.run_id, interaction.channel_id, sent.id)
    message = ProgressMessage(bot, interaction.channel_id, sent.id, interaction)
    message.last_edit, message.shown, message.shown_without_eta = time.monotonic(), content, content
    bot.training.watch(new.run_id, message)


train_group = app_commands.Group(name="train", description="Training runs: progress and cancelling.",
                                 guild_only=True)


@train_group.command(name="status", description="Training runs queued or running in this server.")
async def status(interaction: discord.Interaction) -> None:
    await replies.defer(interaction, ephemeral=True)
    actor = service.policy.Actor(interaction.user.id, interaction.guild_id)
    runs = await asyncio.to_thread(service.training.training_runs, actor)
    if not runs:
        await replies.send(interaction, "Nothing is training here right now.")
        return
    now = time.time()
    blocks = [f"Run **{r.id}** (requested by <@{r.requested_by}>)\n"
              + training_progress(r.display_name, r.status, r.progress, now=now, queue_position=r.position)
              for r in runs]
    chunks = split_message("\n\n".join(blocks))
    await replies.send(interaction, chunks[0])
    for chunk in chunks[1:]:
        await replies.followup(interaction, chunk, ephemeral=True)


@train_group.command(name="cancel", description="Cancel a training run (default: your latest).")
@app_commands.describe(run="The run's number (see /train status)")
@app_commands.autocomplete(run=run_autocomplete)
async def cancel(interaction: discord.Interaction, run: int | None = None) -> None:
    await replies.defer(interaction, ephemeral=True)
    from bot.limits import actor_of

    try:
        view = await asyncio.to_thread(service.training.cancel_training, actor_of(interaction), run)
    except service.policy.UserError as e:
        await replies.fail(interaction, user_error(e))
        return
    state = "cancelled" if view.status == "cancelled" else "stopping (it keeps its last checkpoint)"
    await replies.send(interaction, f"Run {view.id} (`{view.persona_slug}`): {state}.")


COMMANDS = (train_group,)
