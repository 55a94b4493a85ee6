"""Slash commands are synced to Discord once per deploy, not at every start: the bot hashes its command
tree, and syncs only when the digest differs from the one recorded at the last sync. The digests live in
storage (`deploy/commands/<scope>.sha256`, one scope per application and guild or global), which every bot
process and host shares, so a restart or a second process does not sync again."""

from __future__ import annotations

from db import open_storage


def _key(scope: str) -> str:
    return f"deploy/commands/{scope}.sha256"


def sync_needed(scope: str, digest: str) -> bool:
    storage = open_storage()
    key = _key(scope)
    return not storage.exists(key) or storage.get(key).decode() != digest


def record_sync(scope: str, digest: str) -> None:
    open_storage().put(_key(scope), digest.encode())
