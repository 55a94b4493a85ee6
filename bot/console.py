"""`improbable chat`: the Discord bot's commands in a terminal, on the embedded defaults.

Without any configuration it uses a SQLite file in the data dir, runs jobs in-process (Celery's eager
mode: no broker, no worker) and the bundled or locally trained checkpoints, so a newcomer can try
everything without a Discord token. With IMPROBABLE_BROKER_URL set, the same commands go to the workers.

The commands are the bot's (the service/ package does the work for both); type /help. A line without a
slash is a chat message: `trump: make the wall`, or just text for the default persona. The sampling
options take their type, bounds and help from core.contracts.SamplingParams, like Discord's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shlex
import signal
import sys
import threading
from collections.abc import Iterable
from pathlib import Path

from rich.console import Console
from rich.markup import escape as rich_escape

import service.generation
import service.operator
import service.personas
import service.policy
import service.training
from bot.formatting import describe_params, progress_line, separator
from bot.jobs import GENERATE, TRAIN, JobError, Jobs
from bot.terminal import enable_line_editing, plain_text, start_reader
from core.contracts import SamplingParams, bounds, help_of
from core.settings import get_settings

HELP = """\
[bold]Chat[/]
  trump: make the wall              a persona's voice continues your text (just text: the default persona)
  /generate PERSONA [PROMPT] [--length N] [--temperature T] [--top-k K] [--top-p P]
            [--improbability P] [--tolerance T] [--seed S]
  /regenerate · /continue [TEXT] · /more     the last result again (new seed), continued, more improbable
[bold]Personas[/]
  /personas                         the voices and whether they have a model
  /persona info NAME                corpus, model quality, loss curve, a sample
  /persona create NAME FILE.txt [--family char-rnn|word-gru|word-mlp] [--description D] [--minutes M]
  /persona retrain NAME [FILE.txt] [--minutes M]
  /persona delete NAME
[bold]Jobs[/]
  /train status · /train cancel [RUN] · /queue
[bold]Operator[/]                        (the console is the deployment's operator)
  /operator servers · /operator reports [--all]
  /operator disable-persona NAME [--server ID] · /operator enable-persona NAME [--server ID]
  /operator block-server ID · /operator unblock-server ID
  /help · /quit          (Ctrl-C stops a running job; at the prompt it quits)"""

PROMPT = "improbable> "


class ChatError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise ChatError(f"{message} (usage: {self.format_usage().strip().removeprefix('usage: ')})")

    def exit(self, status: int = 0, message: str | None = None):
        raise ChatError(message or self.format_usage())


def _parser(name: str, *positional: tuple[str, dict], **options: dict) -> _Parser:
    p = _Parser(prog=name, add_help=False)
    for arg, kwargs in positional:
        p.add_argument(arg, **kwargs)
    for opt, kwargs in options.items():
        p.add_argument(f"--{opt.replace('_', '-')}", dest=opt, **kwargs)
    return p


# console option → SamplingParams field (the same names as the Discord options of /generate)
SAMPLING_OPTIONS = {"length": "max_tokens", "temperature": "temperature", "top_k": "top_k", "top_p": "top_p",
                    "improbability": "improbability", "tolerance": "tolerance", "seed": "seed"}


def _sampling_option(field: str) -> dict:
    low, high = bounds(field)
    kind = float if SamplingParams.model_fields[field].annotation is float else int  # seed: int | None
    return {"type": kind, "help": f"{help_of(field)} [{low:g} to {high:g}]"}


GENERATE_PARSER = _parser("/generate", ("persona", {}), ("prompt", {"nargs": "*"}),
                          **{option: _sampling_option(field) for option, field in SAMPLING_OPTIONS.items()})
CREATE_PARSER = _parser("/persona create", ("name", {}), ("file", {}), family={"default": "char-rnn"},
                        description={"default": ""}, minutes={"type": float})
PERSONA_SWITCH_PARSER = _parser("/operator disable-persona|enable-persona", ("name", {}), server={"type": int})
SERVER_PARSER = _parser("/operator block-server|unblock-server", ("server", {"type": int}))
REPORTS_PARSER = _parser("/operator reports", all={"action": "store_true"})
RETRAIN_PARSER = _parser("/persona retrain", ("name", {}), ("file", {"nargs": "?"}), minutes={"type": float})


class Chat:
    """One console session. `handle(line)` runs a line; it returns False when the user wants to quit."""

    def __init__(self, console: Console | None = None, jobs: Jobs | None = None):
        self.console = console or Console(highlight=False)
        self.jobs = jobs or Jobs()
        self.actor = service.policy.Actor(user_id=None, can_manage=True, operator=True)
        self.last_generation: int | None = None
        self.failed = False  # a command ended in an error: `improbable chat -c ...` exits 1

    def say(self, text: str, style: str = "") -> None:
        text = rich_escape(text)
        self.console.print(f"[{style}]{text}[/]" if style else text, soft_wrap=True)

    def error(self, text: str) -> None:
        self.failed = True
        self.console.print(f"[bold red]![/] {rich_escape(text)}", soft_wrap=True)

    # -- dispatch ------------------------------------------------------------------------------------------

    async def handle(self, line: str) -> bool:
        line = line.strip()
        if not line:
            return True
        try:
            if not line.startswith("/"):
                await self.chat(line)
                return True
            words = shlex.split(line)
            command, args = words[0].lower(), words[1:]
            if command in ("/quit", "/exit", "/q"):
                return False
            if command in ("/persona", "/train", "/schedule", "/operator") and args:
                command, args = f"{command} {args[0].lower()}", args[1:]
            handler = COMMANDS.get(command)
            if handler is None:
                raise ChatError(f"unknown command {words[0]}; type /help")
            await handler(self, args)
        except service.policy.UserError as e:
            self.error(e.message)  # the plain rendering of the refusal's fields (service.errors)
        except (ChatError, JobError) as e:
            self.error(getattr(e, "message", None) or str(e))
        except ValueError as e:  # shlex: unbalanced quotes
            self.error(str(e))
        return True

    # -- generation ----------------------------------------------------------------------------------------

    async def chat(self, text: str) -> None:
        slug, prompt = await asyncio.to_thread(service.generation.parse_chat, text, None)
        request = await asyncio.to_thread(service.generation.prepare_generation, slug, prompt, self.actor)
        await self.generate_request(request)

    async def cmd_generate(self, args: list[str]) -> None:
        a = GENERATE_PARSER.parse_intermixed_args(args)
        overrides = {field: getattr(a, option) for option, field in SAMPLING_OPTIONS.items()}
        request = await asyncio.to_thread(service.generation.prepare_generation, a.persona, " ".join(a.prompt),
                                          self.actor, overrides)
        await self.generate_request(request)

    async def _follow_up(self, mode: str, text: str = "") -> None:
        if self.last_generation is None:
            raise ChatError("nothing to go on yet: generate something first")
        request = await asyncio.to_thread(service.generation.follow_up, self.last_generation, mode, self.actor, text)
        await self.generate_request(request)

    async def cmd_regenerate(self, args: list[str]) -> None:
        await self._follow_up("regenerate")

    async def cmd_continue(self, args: list[str]) -> None:
        await self._follow_up("continue", " ".join(args))

    async def cmd_more(self, args: list[str]) -> None:
        await self._follow_up("improbable")

    async def generate_request(self, request: service.generation.PreparedGeneration) -> None:
        shown = {"n": 0}
        head = f"{request.display_name} · {describe_params(request.params)}"
        self.say(head + (request.note and f"\n{request.note}"), "dim")  # the note: e.g. the target used
        prompt = request.shown_prompt.strip()
        if prompt:
            self.console.print(f"[bold]{rich_escape(prompt)}[/]", end="", soft_wrap=True)

        def gap(text: str, joined: str | None = None) -> str:  # between prompt and completion, as the model joins
            return separator(prompt, text, joined or service.generation.join_text(prompt, text, request.family))
        async def on_progress(state: str, meta: dict) -> None:
            text = meta.get("text") or ""
            if state == "PROGRESS" and len(text) > shown["n"] and text.startswith(text[:shown["n"]]):
                self.console.file.write((gap(text) if not shown["n"] else "") + text[shown["n"]:])
                self.console.file.flush()
                shown["n"] = len(text)

        job = await self.jobs.submit(GENERATE, request.payload, label=request.payload["persona"])
        try:
            result = await self.jobs.wait(job, on_progress)
        except (KeyboardInterrupt, asyncio.CancelledError):
            await self.jobs.cancel(job)
            self.error("cancelled")
            return
        text = result.get("text", "")
        if shown["n"] and not text.startswith(text[:shown["n"]]):
            self.console.print()
            shown["n"] = 0
        if not shown["n"]:  # nothing streamed: the worker's join of prompt and completion decides the gap
            self.console.file.write(gap(text, result.get("full_text") if prompt == request.payload["prompt"] else ""))
        self.console.print(rich_escape(text[shown["n"]:]), soft_wrap=True, highlight=False)
        facts = [f"seed {result.get('seed')}", f"{result.get('tokens', 0)} tokens",
                 f"stopped: {result.get('finish_reason')}", f"{result.get('latency_ms', 0)} ms"]
        if result.get("unknown"):
            facts.append("not in the vocabulary: " + " ".join(map(repr, result["unknown"][:10])))
        self.say(" · ".join(facts), "dim")
        self.last_generation = result.get("generation_id") or self.last_generation

    # -- personas ------------------------------------------------------------------------------------------

    async def cmd_personas(self, args: list[str]) -> None:
        for p in await asyncio.to_thread(service.personas.list_personas, None):
            status = "training" if p.training else "ready" if p.ready else "no model yet"
            style = "green" if p.ready else "yellow"
            self.console.print(f"[bold]{p.slug:<16}[/] {rich_escape(p.display_name):<16} {p.family:<9} "
                               f"[{style}]{status}[/]", soft_wrap=True)

    async def cmd_persona_info(self, args: list[str]) -> None:
        if len(args) != 1:
            raise ChatError("usage: /persona info NAME")
        info = await asyncio.to_thread(service.personas.persona_info, args[0], None)
        self.say(f"{info.display_name} ({info.slug}, {info.scope}) · {info.family}", "bold")
        if info.description:
            self.say(plain_text(info.description))  # written for Discord (the built-ins' are)
        for c in info.corpora:
            self.say(f"corpus {c['filename']}: {c['n_chars']:,} characters, {c['n_words']:,} words, "
                     f"{c['n_unique_chars']:,} distinct characters")
        if info.checkpoint_id is None:
            self.say(f"no model yet: train it with /persona retrain {info.slug}", "yellow")
            return
        loss = f"{info.val_loss:.3f} nats/token" if info.val_loss is not None else "n/a"
        self.say(f"checkpoint {info.checkpoint_id}: validation loss {loss}")
        if info.originality is not None:
            self.say(f"originality: {info.originality:.0%} of the sample's 20-character windows are new")
        if info.loss_png:
            from core.settings import get_settings

            path = get_settings().data_dir / "plots" / f"{info.slug}-loss.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(info.loss_png)
            self.say(f"loss curve: {path}")
        if info.sample:
            self.say("sample:", "dim")
            self.say(info.sample.strip())

    async def cmd_persona_create(self, args: list[str]) -> None:
        a = CREATE_PARSER.parse_args(args)
        path = Path(a.file).expanduser()
        if not path.is_file():
            raise ChatError(f"no such file: {path}")
        new = await asyncio.to_thread(service.personas.create_persona, self.actor, a.name, path.read_bytes(), path.name,
                                      a.family, a.description, a.minutes)
        await self.train(new)

    async def cmd_persona_retrain(self, args: list[str]) -> None:
        a = RETRAIN_PARSER.parse_args(args)
        data = name = None
        if a.file:
            path = Path(a.file).expanduser()
            if not path.is_file():
                raise ChatError(f"no such file: {path}")
            data, name = path.read_bytes(), path.name
        new = await asyncio.to_thread(service.personas.retrain, self.actor, a.name, data, name, a.minutes)
        await self.train(new)

    async def cmd_persona_delete(self, args: list[str]) -> None:
        if len(args) != 1:
            raise ChatError("usage: /persona delete NAME")
        name = await asyncio.to_thread(service.personas.delete_persona, self.actor, args[0])
        self.say(f"deleted {name}")

    # -- training ------------------------------------------------------------------------------------------

    async def train(self, new: service.training.NewRun) -> None:
        """Enqueue the run (in-process without a broker) and show its progress until it ends."""
        for warning in new.warnings:
            self.say(f"note: {warning}", "yellow")
        try:
            await self.jobs.submit(TRAIN, new.run_id, label=f"train {new.persona_slug}", track=False)
        except JobError:
            await asyncio.to_thread(service.training.abandon_run, new.run_id, delete_persona=new.created_persona)
            raise
        self.say(f"training {new.persona_slug} (run {new.run_id}); Ctrl-C cancels", "bold")
        last, view = "", None
        try:
            while True:
                view = await asyncio.to_thread(service.training.run_status, new.run_id)
                if view is None or view.finished:
                    break
                line = progress_line(view.status, view.progress, view.position)
                if line != last:
                    self.say(line, "dim")
                    last = line
                await asyncio.sleep(1.0)
        except (KeyboardInterrupt, asyncio.CancelledError):
            await asyncio.to_thread(service.training.cancel_training, self.actor, new.run_id)
            self.error("cancelling…")
            return
        if view is None:
            self.error("the run was deleted")
        elif view.status == "succeeded":
            self.say(f"done: {service.training.describe_run_result(view)}", "green")
            sample = view.metrics.get("sample")
            if sample:
                self.say("sample:", "dim")
                self.say(sample.strip())
        else:
            self.error(f"run {view.id} {view.status}" + (f": {view.error}" if view.error else ""))

    async def cmd_train_status(self, args: list[str]) -> None:
        runs = await asyncio.to_thread(service.training.training_runs, self.actor)
        if not runs:
            self.say("nothing is training")
        for view in runs:
            self.say(f"run {view.id} {view.persona_slug}: {progress_line(view.status, view.progress, view.position)}")

    async def cmd_train_cancel(self, args: list[str]) -> None:
        run_id = int(args[0]) if args and args[0].isdigit() else None
        view = await asyncio.to_thread(service.training.cancel_training, self.actor, run_id)
        self.say(f"run {view.id} ({view.persona_slug}): {view.status}")

    async def cmd_queue(self, args: list[str]) -> None:
        await self.cmd_train_status(args)

    async def cmd_schedule(self, args: list[str]) -> None:
        raise ChatError("scheduled posts go into Discord channels: use /schedule in the Discord bot")

    # -- the operator's tools (service/operator.py) ------------------------------------------------------------

    async def cmd_operator_servers(self, args: list[str]) -> None:
        views = await asyncio.to_thread(service.operator.servers, self.actor)
        if not views:
            self.say("no servers")
        for v in views:
            state = " BLOCKED" if v.blocked else (" (left)" if v.left_at else "")
            self.say(f"{v.guild_id} {v.name or '?'}{state}: personas {', '.join(v.personas) or 'none'}; "
                     f"{v.uploads} uploads, {v.jobs} texts, {v.stored_bytes:,} bytes, {v.open_reports} open reports")

    async def cmd_operator_reports(self, args: list[str]) -> None:
        a = REPORTS_PARSER.parse_args(args)
        found = await asyncio.to_thread(service.operator.reports, self.actor, include_closed=a.all)
        if not found:
            self.say("no reports" if a.all else "no open reports")
        for r in found:
            where = f"server {r.guild_id}" if r.guild_id else "no server"
            self.say(f"#{r.id} {r.created_at:%Y-%m-%d %H:%M} {r.status}, {where}, by {r.reporter_id or 'the console'}, "
                     f"persona {r.persona}, text {r.generation_id}: {r.reason[:300]}", "bold")
            self.say("  " + " ".join(r.text.split())[:500])

    async def _switch_persona(self, args: list[str], disabled: bool) -> None:
        a = PERSONA_SWITCH_PARSER.parse_args(args)
        slug = await asyncio.to_thread(service.operator.set_persona_disabled, self.actor, a.name, a.server, disabled)
        self.say(f"{slug} is {'disabled' if disabled else 'enabled again'}")

    async def cmd_operator_disable_persona(self, args: list[str]) -> None:
        await self._switch_persona(args, True)

    async def cmd_operator_enable_persona(self, args: list[str]) -> None:
        await self._switch_persona(args, False)

    async def cmd_operator_block_server(self, args: list[str]) -> None:
        from worker.app import forget_results  # the results of the server's jobs, where a broker keeps them

        server = SERVER_PARSER.parse_args(args).server
        purged = await asyncio.to_thread(service.operator.block_server, self.actor, server)
        await asyncio.to_thread(forget_results, purged.task_ids)
        self.say(f"server {server} is blocked: {purged.personas} personas and {purged.generations} texts purged. "
                 "The Discord bot leaves it when it is added there again (`/operator block-server` in Discord "
                 "leaves at once).")

    async def cmd_operator_unblock_server(self, args: list[str]) -> None:
        server = SERVER_PARSER.parse_args(args).server
        done = await asyncio.to_thread(service.operator.unblock_server, self.actor, server)
        self.say(f"server {server} is " + ("unblocked" if done else "not blocked"))

    async def cmd_help(self, args: list[str]) -> None:
        self.console.print(HELP)

    # -- the loop ------------------------------------------------------------------------------------------

    async def repl(self, lines: Iterable[str] | None = None) -> None:
        """Run `lines`, else read commands from the terminal until /quit or end of input. Ctrl-C stops the
        running command (a job is cancelled); at the prompt it quits."""
        if lines is not None:
            for line in lines:
                if not await self.handle(line):
                    return
            return
        interactive = sys.stdin.isatty()
        if interactive:
            self.console.print("[bold]Improbable[/] · type /help, or `alice: Once upon a time`")
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[str | None] = asyncio.Queue()
        wanted = threading.Semaphore(0)

        history = get_settings().data_dir / "chat_history"  # line editing and history at a terminal only
        start_reader(loop, queue, wanted, PROMPT if interactive else "", history if interactive
                     and enable_line_editing(history) else None)
        running: list[asyncio.Task] = []

        def interrupt() -> None:  # Ctrl-C: stop the running command, or quit at the prompt
            if running and not running[0].done():
                running[0].cancel()
            else:
                queue.put_nowait(None)

        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGINT, interrupt)
        try:
            while True:
                wanted.release()
                line = await queue.get()
                if line is None:
                    return
                running[:] = [asyncio.create_task(self.handle(line))]
                try:
                    if not await running[0]:
                        return
                except asyncio.CancelledError:
                    self.console.print()
        finally:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(signal.SIGINT)


COMMANDS = {
    "/generate": Chat.cmd_generate, "/regenerate": Chat.cmd_regenerate, "/continue": Chat.cmd_continue,
    "/more": Chat.cmd_more, "/personas": Chat.cmd_personas, "/persona info": Chat.cmd_persona_info,
    "/persona create": Chat.cmd_persona_create, "/persona retrain": Chat.cmd_persona_retrain,
    "/persona delete": Chat.cmd_persona_delete, "/train status": Chat.cmd_train_status,
    "/train cancel": Chat.cmd_train_cancel, "/queue": Chat.cmd_queue, "/schedule": Chat.cmd_schedule,
    "/schedule add": Chat.cmd_schedule, "/schedule list": Chat.cmd_schedule,
    "/schedule remove": Chat.cmd_schedule, "/help": Chat.cmd_help,
    "/operator servers": Chat.cmd_operator_servers, "/operator reports": Chat.cmd_operator_reports,
    "/operator disable-persona": Chat.cmd_operator_disable_persona,
    "/operator enable-persona": Chat.cmd_operator_enable_persona,
    "/operator block-server": Chat.cmd_operator_block_server,
    "/operator unblock-server": Chat.cmd_operator_unblock_server,
}


def main(commands: list[str] | None = None) -> int:
    """Prepare the database (migrate SQLite, install bundled checkpoints), then run the commands given,
    or read them from the terminal."""
    console = Console(highlight=False)
    installed = service.personas.prepare_database()
    if installed:
        console.print(f"[dim]installed bundled models: {', '.join(installed)}[/]")
    chat = Chat(console)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(chat.repl(commands or None))
    return 1 if commands and chat.failed else 0  # scripts see a failed -c command
