"""Pretrained checkpoints that ship with the trainer: `base`, the character model every character persona
starts from (trained by the `base` recipe on ../shared/corpora/base, 42 public-domain books; its model card
is pretrained/base.md). A fine-tune names it as `init: "base"`; a path to any char checkpoint works too.
"""

from __future__ import annotations

from pathlib import Path

PRETRAINED_DIR = Path(__file__).parent / "pretrained"
DEFAULT_BASE = "base"


def pretrained_names() -> list[str]:
    return sorted(p.stem for p in PRETRAINED_DIR.glob("*.safetensors"))


def resolve_init(name_or_path: str | Path) -> Path:
    """The checkpoint file a run starts from: a shipped pretrained model by name, or a path."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    shipped = PRETRAINED_DIR / f"{name_or_path}.safetensors"
    if shipped.is_file():
        return shipped
    names = ", ".join(pretrained_names()) or "none are installed"
    raise ValueError(f"cannot start from {str(name_or_path)!r}: it is neither a checkpoint file nor a pretrained "
                     f"model (shipped: {names})")
