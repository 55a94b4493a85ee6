"""Slash commands are synced to Discord once per deploy, not at every start: the bot hashes its command
tree, and syncs only when the digest differs from the one recorded at the last sync. The digests live in
storage (`deploy/commands/<scope>.sha256`, one scope per application and guild or global), which every bot
process and host shares, so a restart or a second process does not sync again.

Bot processes of several shards start together: one of them syncs while holding the scope's claim (a
cooldown mark in the shared SQL counters, service.quotas, so it lapses if that process dies mid-sync); the
others wait for the claim, find the new digest recorded, and do not sync."""

from __future__ import annotations

from db import open_storage
from service.quotas import Quotas

SYNC_CLAIM_SECONDS = 60.0  # longest a sync may hold its scope (a dead process's claim lapses after it)


def _key(scope: str) -> str:
    return f"deploy/commands/{scope}.sha256"


def sync_needed(scope: str, digest: str) -> bool:
    storage = open_storage()
    key = _key(scope)
    return not storage.exists(key) or storage.get(key).decode() != digest


def record_sync(scope: str, digest: str) -> None:
    open_storage().put(_key(scope), digest.encode())


def claim_sync(scope: str, seconds: float = SYNC_CLAIM_SECONDS, quotas: Quotas | None = None) -> bool:
    """Take the scope's sync claim for `seconds`: False while another process holds it."""
    return (quotas or Quotas()).hit(f"commands-sync:{scope}", seconds) == 0


def release_sync(scope: str, quotas: Quotas | None = None) -> None:
    (quotas or Quotas()).reset(f"commands-sync:{scope}")
