"""Shared fixtures: where the real corpora live, and small slices of them for fast tests."""

from __future__ import annotations

from pathlib import Path

import pytest

CORPORA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "corpora"


@pytest.fixture(scope="session")
def corpora_dir() -> Path:
    if not CORPORA_DIR.is_dir():
        pytest.skip(f"shared corpora not found at {CORPORA_DIR}")
    return CORPORA_DIR


def _head(path: Path, n_chars: int) -> str:
    text = path.read_text(encoding="utf-8")[:n_chars]
    return text[: text.rfind("\n") + 1] or text  # end on a whole line


@pytest.fixture(scope="session")
def alice_text(corpora_dir: Path) -> str:
    """The first ~30 KB of Alice in Wonderland (real text, cut at a line end)."""
    return _head(corpora_dir / "alice" / "alice.txt", 30_000)


@pytest.fixture(scope="session")
def trump_text(corpora_dir: Path) -> str:
    """The first ~40 KB of the Trump speeches."""
    return _head(corpora_dir / "trump" / "speeches.txt", 40_000)


@pytest.fixture(scope="module")
def single_thread():
    """One intra-op thread: the test machine is small and shared, and tiny models gain nothing from
    more. Opt in with `pytestmark = pytest.mark.usefixtures("single_thread")`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
