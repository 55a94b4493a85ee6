"""`improbable operator …`: the deployment operator's tools from the command line (service/operator.py):
servers, reports, disable-persona, enable-persona, block-server, unblock-server, sweep. Blocking a server
purges its data here; the bot leaves it when it next starts or is added there (a blocked server is left at
once), or at once with `/operator block-server`."""

from __future__ import annotations

import typer

import service.operator
from service.policy import Actor, UserError

operator_app = typer.Typer(help="The operator's tools: servers, reports, disabled personas, blocked servers.",
                           no_args_is_help=True)
CLI = Actor(None, None, None, can_manage=True, operator=True)


def _refused(e: UserError) -> typer.Exit:
    typer.echo(e.message, err=True)
    return typer.Exit(1)


@operator_app.command("servers")
def servers() -> None:
    """Servers with their personas, uploads, jobs, stored bytes and open reports."""
    from bot.operator import server_lines  # (the CLI imports what a command needs when it runs)

    for line in server_lines(service.operator.servers(CLI), limit=10_000) or ["No servers."]:
        typer.echo(line)


@operator_app.command("reports")
def reports(all_: bool = typer.Option(False, "--all", help="Closed reports too.")) -> None:
    """Reports of generated texts (open ones unless --all)."""
    from bot.operator import report_lines

    found = service.operator.reports(CLI, include_closed=all_)
    for line in report_lines(found, limit=10_000) or ["No reports."]:
        typer.echo(line)


def _set(persona: str, server: int | None, disabled: bool) -> None:
    try:
        slug = service.operator.set_persona_disabled(CLI, persona, server, disabled)
    except UserError as e:
        raise _refused(e) from None
    typer.echo(f"{slug} is {'disabled' if disabled else 'enabled again'}.")


@operator_app.command("disable-persona")
def disable_persona(persona: str, server: int | None = typer.Option(None, help="A server's own persona")) -> None:
    """Refuse a persona in /generate, schedules and ambient replies (built-ins included)."""
    _set(persona, server, True)


@operator_app.command("enable-persona")
def enable_persona(persona: str, server: int | None = typer.Option(None, help="A server's own persona")) -> None:
    """Allow a disabled persona again."""
    _set(persona, server, False)


@operator_app.command("block-server")
def block_server(server: int) -> None:
    """Block a server: its data is purged now and the bot leaves it."""
    from worker.app import forget_results

    purged = service.operator.block_server(CLI, server)
    forget_results(purged.task_ids)
    typer.echo(f"Server {server} is blocked: {purged.personas} personas and {purged.generations} texts purged.")


@operator_app.command("unblock-server")
def unblock_server(server: int) -> None:
    """Let a blocked server add the bot again."""
    done = service.operator.unblock_server(CLI, server)
    typer.echo(f"Server {server} is " + ("unblocked." if done else "not blocked."))


@operator_app.command("sweep")
def sweep() -> None:
    """Run the retention sweep now (beat runs it every IMPROBABLE_SWEEP_SECONDS)."""
    from worker.app import forget_results

    result = service.operator.sweep()
    forget_results(result.task_ids)
    typer.echo(f"{result.generations} texts past the retention deleted; servers purged: {result.guilds or 'none'}.")
