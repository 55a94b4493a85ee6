"""Which bot process serves which Discord server: the shard formula, defined once.

Discord splits a bot's servers over `shard_count` gateway sessions: a server's events (messages, interactions,
reactions) reach only the session of shard `(guild_id >> 22) % shard_count`, and DMs reach shard 0. A bot
process runs some of the shards (IMPROBABLE_SHARD_IDS, all of them when unset), so whatever a process does on
its own for a server after a restart (resuming its in-flight texts, watching its training runs) it does only for
the servers on its shards; the processes of the other shards do theirs. discord.py applies the same formula to
route its own requests (AutoShardedClient._get_websocket, Guild.shard_id).
"""

from __future__ import annotations

from dataclasses import dataclass


def shard_of(guild_id: int | None, shard_count: int) -> int:
    """The shard that receives a server's events (None: a DM, which Discord sends to shard 0)."""
    if guild_id is None:
        return 0
    return (guild_id >> 22) % shard_count


@dataclass(frozen=True)
class Shards:
    """The shards one bot process runs: `ids` of `count`; `ids` None means all of them (the count Discord
    recommends when `count` is None too), so that process serves every server."""

    count: int | None = None
    ids: tuple[int, ...] | None = None

    def owns(self, guild_id: int | None) -> bool:
        """Whether a server's (or, for None, the DMs') events reach this process."""
        if self.ids is None:
            return True
        return shard_of(guild_id, self.count or 1) in self.ids

    def describe(self) -> str:
        if self.ids is None:
            return "all shards" + (f" of {self.count}" if self.count else " (the count Discord recommends)")
        return f"shard(s) {', '.join(map(str, self.ids))} of {self.count}"
