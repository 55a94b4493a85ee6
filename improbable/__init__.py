"""Improbable: a Discord bot that talks in borrowed voices."""

__version__ = "0.1.0"
