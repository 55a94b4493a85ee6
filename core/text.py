"""Torch-free text helpers shared by the trainer, the database layer and the service.

- `originality`: how much of a generated text is new rather than copied from the corpus.
"""

from __future__ import annotations


def originality(generated: str, corpus: str, window: int = 20) -> float | None:
    """Share of the generated text's `window`-character windows that do NOT occur verbatim in the
    corpus (1.0 = nothing copied). None when the text is shorter than one window or there is no corpus."""
    windows = [generated[i:i + window] for i in range(0, len(generated) - window + 1)]
    if not windows or not corpus:
        return None
    return 1.0 - sum(1 for w in windows if w in corpus) / len(windows)
