"""`improbable persona ...`: personas from the command line (registered on the main app in improbable/cli.py).

    improbable persona attach harry-potter runs/hp/best.safetensors

attaches a checkpoint trained with `improbable train` (e.g. on your own copy of a book that cannot be
shipped) to a persona: validated, stored, and made the persona's active model, so the bot and the console
answer with it at once.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

persona_app = typer.Typer(help="Personas: attach a checkpoint trained on the command line.", no_args_is_help=True)
console = Console()


@persona_app.callback()
def _personas() -> None:
    """Personas: attach a checkpoint trained on the command line."""  # (a group even with one command)


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


@persona_app.command("attach")
def attach(
    persona: str = typer.Argument(..., help="The persona's name, e.g. harry-potter."),
    checkpoint: Path = typer.Argument(..., help="A checkpoint from `improbable train` (runs/<name>/best.safetensors)."),
) -> None:
    """Make a checkpoint trained with `improbable train` the persona's active model (its family must match)."""
    import service.personas
    import service.policy
    from core.checkpoints import CheckpointError, read_meta

    if not checkpoint.is_file():
        _fail(f"no such file: {checkpoint}")
    try:
        # the full header check (format, shapes against the model config, file size) before anything is stored
        read_meta(checkpoint)
    except CheckpointError as e:
        _fail(str(e))
    service.personas.prepare_database()
    try:
        attached = service.personas.attach_checkpoint(persona, checkpoint.read_bytes(), checkpoint.name)
    except service.policy.UserError as e:
        _fail(e.message)
    loss = f", validation loss {attached.val_loss:.3f} nats/token" if attached.val_loss is not None else ""
    console.print(f"[green]attached[/] {checkpoint} to [bold]{attached.slug}[/] ({attached.family}{loss}): "
                  f"checkpoint {attached.checkpoint_id} is now its active model", highlight=False, soft_wrap=True)
