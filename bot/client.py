"""The Discord client: intents, commands, persistent buttons, the error handler, and `main()`.

`main()` reads the settings (DISCORD_TOKEN, optional DISCORD_API_BASE / DISCORD_GATEWAY_URL for a local fake
Discord, DISCORD_SYNC_GUILD to sync commands to one guild instantly), points discord.py at the configured
API and gateway, migrates an embedded SQLite database, installs bundled checkpoints, and runs the bot.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import json
import logging
import socket
import sys
from collections import OrderedDict

import discord
import yarl
from discord import app_commands

import service.commands
import service.operator
import service.personas
import service.policy
from bot import (
    ambient,
    board,
    chat,
    dialogue,
    generate,
    guild,
    operator,
    personas,
    privacy,
    queue,
    replies,
    report,
    resume,
    schedules,
    training,
    voice,
)
from bot.formatting import user_error
from bot.jobs import Jobs
from bot.limits import Limits, Refusal, cooldown_message
from bot.rest import budget_trace
from bot.views import DYNAMIC_ITEMS, result_view
from core import logs, metrics
from core.settings import Settings, get_settings

log = logging.getLogger("bot")
COMMAND_MODULES = (generate, personas, training, schedules, queue, guild, ambient, privacy, report, operator,
                   board, dialogue, voice)
SYNC_POLL_SECONDS = 0.5  # how often a process waiting for another's command sync looks again
GATEWAY_PROBE_SECONDS = 5.0  # a configured gateway that accepts no connection within this stops the start


def intents() -> discord.Intents:
    value = discord.Intents.default()
    value.message_content = True  # mention chat reads the text (enable it in the developer portal)
    value.guild_reactions = True  # votes on the bot's texts (bot/board.py); a default intent, named here
    return value


class StartupProblem(RuntimeError):
    """A start-up failure whose message is the whole line to show (bot/startup.py shows it as it is)."""


def gateway_url(url: str, timeout: float = GATEWAY_PROBE_SECONDS) -> yarl.URL:
    """DISCORD_GATEWAY_URL, checked: a ws:// or wss:// URL with a host, where something accepts a connection.
    Else StartupProblem: discord.py would retry the gateway every 5 s for ever, a traceback each time."""
    fix = "use wss://host/ (ws://host:port/ for a local one), or leave it empty for Discord's own"
    try:
        parsed = yarl.URL(url)
    except ValueError as e:
        raise StartupProblem(f"DISCORD_GATEWAY_URL {url!r} is not a URL ({e}): {fix}") from None
    if parsed.scheme not in ("ws", "wss") or not parsed.host:
        raise StartupProblem(f"DISCORD_GATEWAY_URL {url!r} is not a gateway URL: {fix}")
    try:
        socket.create_connection((parsed.host, parsed.port), timeout=timeout).close()
    except OSError as e:
        raise StartupProblem(f"cannot reach the Discord gateway at {url} ({e or type(e).__name__}): check the "
                             "network, or DISCORD_GATEWAY_URL (empty: Discord's own)") from None
    return parsed


def point_discord_at(settings: Settings) -> None:
    """Send REST calls and the gateway connection where the settings say (a local fake Discord in tests).
    discord.py has no setting for either: these two class attributes are what it reads."""
    base = settings.discord_api_base.rstrip("/")
    if base:
        discord.http.Route.BASE = base
    if settings.discord_gateway_url:
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = gateway_url(settings.discord_gateway_url)


class Tree(app_commands.CommandTree):
    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        """A server the operator blocked gets a refusal (the bot has left it; this covers the moments after)."""
        if interaction.guild_id is not None and interaction.guild_id in interaction.client.blocked_guilds:
            await replies.fail(interaction, "The bot's operator has blocked this server.")
            return False
        return True

    async def on_error(self, interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
        command = interaction.command.qualified_name if interaction.command else "unknown"
        invoked = isinstance(error, app_commands.CommandInvokeError)
        refused = invoked and isinstance(error.original, service.policy.UserError)
        failed = invoked and not refused
        metrics.record_interaction(command, "error" if failed else "refused")
        if isinstance(error, app_commands.CheckFailure) and interaction.response.is_done():
            return  # the command's own error handler has answered (e.g. /operator for a non-operator)
        if isinstance(error, app_commands.CommandOnCooldown):
            message = cooldown_message(error)
        elif isinstance(error, Refusal):
            message = error.message
        elif isinstance(error, app_commands.NoPrivateMessage):
            message = "Use this command in a server."
        elif isinstance(error, app_commands.CheckFailure):
            message = "You cannot use this command here."
        elif isinstance(error, app_commands.TransformerError):
            message = f"`{error.value}` is not a valid value there."
        elif refused:  # commands let the service's refusals reach here rather than catching each one
            message = user_error(error.original)
        else:
            log.error("command %s failed", interaction.command and interaction.command.qualified_name,
                      exc_info=error)
            message = "Something went wrong on our side (it has been logged). Try again."
        await replies.fail(interaction, message)


class ImprobableBot(discord.AutoShardedClient):
    """The bot, sharded by discord.py: it runs IMPROBABLE_SHARD_IDS of IMPROBABLE_SHARD_COUNT shards (by default
    all the shards Discord recommends), one gateway session each, in this process (core/shards.py)."""

    def __init__(self, settings: Settings | None = None, jobs: Jobs | None = None, **options):
        settings = settings or get_settings()
        options.setdefault("intents", intents())
        options.setdefault("shard_count", settings.shard_count)
        options.setdefault("shard_ids", settings.shard_ids)
        options.setdefault("http_trace", budget_trace(settings, application_id=lambda: self.application_id))
        super().__init__(allowed_mentions=discord.AllowedMentions.none(), **options)
        self.settings = settings
        # guild installs only, used in servers only: no user installs, no DMs or group DMs
        self.tree = Tree(self, allowed_installs=app_commands.AppInstallationType(guild=True, user=False),
                         allowed_contexts=app_commands.AppCommandContext(guild=True, dm_channel=False,
                                                                         private_channel=False))
        self.jobs = jobs or Jobs(self.settings)
        self.limits = Limits()
        self.training = training.TrainingWatcher(self)
        self.generation_messages: OrderedDict[int, int] = OrderedDict()  # message id -> generation id
        self.blocked_guilds: set[int] = set()  # servers the operator blocked (bot/operator.py)
        self.vote_emoji = board.VoteEmoji()  # each server's vote emoji (bot/board.py)
        for module in COMMAND_MODULES:
            for command in module.COMMANDS:
                self.tree.add_command(command)

    async def setup_hook(self) -> None:
        log.info("this process runs %s", self.settings.shards.describe())
        self.add_dynamic_items(*DYNAMIC_ITEMS)
        self.blocked_guilds = await asyncio.to_thread(service.operator.blocked_guilds)
        self._sweeper = asyncio.create_task(operator.sweep_loop(self))  # embedded: no beat sweeps for us
        self._lag_watch = asyncio.create_task(metrics.watch_event_loop())  # /metrics: the loop's lag
        guild_id = self.settings.discord_sync_guild
        guild = discord.Object(id=guild_id) if guild_id else None
        if guild is not None:
            self.tree.copy_global_to(guild=guild)
        await self.sync_commands(guild)
        await self.training.resume()
        await resume.resume_generations(self, result_view)  # each followed in the background

    async def sync_commands(self, guild: discord.Object | None) -> None:
        """Sync the slash commands where they changed since the last sync (service.commands: a digest of the
        tree shared by every process), or always with IMPROBABLE_DISCORD_SYNC_ALWAYS. One process at a time
        syncs a scope (its claim in the shared counters): the processes of other shards starting with it wait,
        then find the digest recorded and leave it."""
        where = f" to guild {guild.id}" if guild is not None else " globally"
        tree = [command.to_dict(self.tree) for command in self.tree.get_commands(guild=guild)]
        digest = hashlib.sha256(json.dumps(tree, sort_keys=True, default=str).encode()).hexdigest()
        scope = f"{self.application_id}-{guild.id if guild is not None else 'global'}"

        async def unchanged() -> bool:
            return not self.settings.discord_sync_always and \
                not await asyncio.to_thread(service.commands.sync_needed, scope, digest)

        while not await unchanged():
            if await asyncio.to_thread(service.commands.claim_sync, scope):
                try:
                    if await unchanged():  # synced by another process between the look and the claim
                        break
                    synced = await self.tree.sync(guild=guild)
                    await asyncio.to_thread(service.commands.record_sync, scope, digest)
                finally:
                    await asyncio.to_thread(service.commands.release_sync, scope)
                log.info("synced %d commands%s", len(synced), where)
                return
            await asyncio.sleep(SYNC_POLL_SECONDS)  # another process is syncing this scope
        log.info("commands unchanged since their last sync%s (%s): not synced again", where, digest[:12])

    def remember_generation(self, message_id: int, generation_id: int) -> None:
        """Recent results by message id (replies to them continue the text; the database has them too)."""
        self.generation_messages[message_id] = generation_id
        while len(self.generation_messages) > 1000:
            self.generation_messages.popitem(last=False)

    async def on_ready(self) -> None:
        gc.freeze()  # the servers' cache lives as long as the process: full collections no longer walk it
        metrics.set_ready("discord", True)
        metrics.BOT_GUILDS.set(len(self.guilds))
        log.info("ready as %s in %d guild(s) on %s", self.user, len(self.guilds), self.shards_described())

    async def on_shard_ready(self, shard_id: int) -> None:
        log.info("shard %d of %s ready", shard_id, self.shard_count)

    def shards_described(self) -> str:
        """The shards this process runs, as discord.py launched them (the count is Discord's when not set)."""
        return f"shard(s) {', '.join(map(str, sorted(self.shards)))} of {self.shard_count}"

    async def on_socket_event_type(self, event: str) -> None:  # every gateway event, counted by type
        metrics.BOT_GATEWAY_EVENTS.labels(event).inc()

    async def on_resumed(self) -> None:
        metrics.set_ready("discord", True)

    async def on_disconnect(self) -> None:
        metrics.set_ready("discord", False)

    async def on_guild_join(self, guild: discord.Guild) -> None:
        metrics.BOT_GUILDS.set(len(self.guilds))
        await operator.guild_joined(guild)

    async def on_guild_remove(self, guild: discord.Guild) -> None:
        """Removed from the server (an outage is on_guild_unavailable): its data waits for the grace period."""
        metrics.BOT_GUILDS.set(len(self.guilds))
        await operator.guild_removed(guild)

    async def on_app_command_completion(self, interaction: discord.Interaction, command) -> None:
        if command.qualified_name != "generate":  # generations are counted with their outcome when done
            metrics.record_interaction(command.qualified_name, "ok")

    async def on_message(self, message: discord.Message) -> None:
        try:
            await chat.on_message(self, message)
        except Exception:
            log.exception("handling message %s", message.id)

    async def on_raw_reaction_add(self, payload: discord.RawReactionActionEvent) -> None:
        try:
            await board.on_reaction(self, payload)
        except Exception:
            log.exception("recording a reaction on message %s", payload.message_id)

    async def on_raw_reaction_remove(self, payload: discord.RawReactionActionEvent) -> None:
        try:
            await board.on_reaction(self, payload)
        except Exception:
            log.exception("removing a reaction on message %s", payload.message_id)

    async def on_raw_reaction_clear(self, payload: discord.RawReactionClearEvent) -> None:
        try:
            await board.on_reactions_cleared(self, payload)
        except Exception:
            log.exception("clearing the reactions of message %s", payload.message_id)

    async def on_raw_reaction_clear_emoji(self, payload: discord.RawReactionClearEmojiEvent) -> None:
        try:
            await board.on_reactions_cleared(self, payload)
        except Exception:
            log.exception("clearing an emoji's reactions of message %s", payload.message_id)

    async def close(self) -> None:
        await self.training.close()
        await super().close()


def cluster_collectors(settings: Settings) -> list:
    """The gauges no single worker knows, served by the bot alone: training runs, and the broker's queues
    (none without a broker: jobs then run in-process)."""
    from service.training import TrainingCollector
    from worker.app import QueueDepthCollector

    return [TrainingCollector()] + ([QueueDepthCollector()] if settings.broker_url else [])


NO_TOKEN = ("DISCORD_TOKEN is not set: the bot waits, not connected to Discord (everything else runs). Put the "
            "bot's token in .env (DISCORD_TOKEN=...) or a secret file, then `docker compose up -d bot`.")


def wait_for_a_token() -> int:
    """One line, /readyz answering 503 "not ready: DISCORD_TOKEN (not set)", then nothing until stopped."""
    import signal
    import threading

    metrics.set_ready("DISCORD_TOKEN (not set)", False)
    log.error(NO_TOKEN)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # `docker stop`: as Ctrl-C, a clean exit
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    return 0


def main(argv: list[str] | None = None, *, wait_without_token: bool = False) -> int:
    """Run the bot. Without a token: with `wait_without_token` (the service, `python -m bot`) say so once and
    wait, so that a deployment's first start is not a restart loop; otherwise (a terminal) exit 2."""
    settings = get_settings()
    logs.setup_logging(settings, service="bot")  # text or JSON lines (IMPROBABLE_LOG_FORMAT)
    metrics.set_ready("discord", False)  # /readyz answers 200 once the gateway session is ready
    try:
        metrics.start_metrics_server(settings=settings, collectors=cluster_collectors(settings))  # 0 = off
    except OSError as e:  # the port is taken: the bot still works, without metrics
        log.error("metrics server not started: %s", e)
    if not settings.discord_token:
        if wait_without_token:
            return wait_for_a_token()
        print("DISCORD_TOKEN is not set. Set it to run the Discord bot, or try everything in a terminal with "
              "`improbable chat`.", file=sys.stderr)
        return 2
    point_discord_at(settings)
    installed = service.personas.prepare_database(settings)
    if installed:
        log.info("installed bundled checkpoints: %s", ", ".join(installed))
    client = ImprobableBot(settings)
    client.run(settings.discord_token, log_handler=None)
    return 0
