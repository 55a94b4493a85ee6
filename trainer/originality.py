"""Originality of generated text: lives in core.text (torch-free, shared with the service); re-exported
here so trainer code and scripts keep their import."""

from __future__ import annotations

from core.text import originality

__all__ = ["originality"]
