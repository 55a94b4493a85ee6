"""The buttons under every generated text, persistent across restarts.

Each button is a `DynamicItem`: its custom_id carries the generation id (and the requester's user id for
the buttons that change the message), and the classes are registered at start-up
(`Client.add_dynamic_items`), so a click on a message posted before a restart still works.

    improbable:regen:<generation_id>:<user_id>   Regenerate: same parameters, new seed (edits the message)
    improbable:more:<generation_id>:<user_id>    More improbable: lower target probability (edits it)
    improbable:cont:<generation_id>              Continue: a new message continuing the text (anyone)
"""

from __future__ import annotations

import re

import discord


class RegenerateButton(discord.ui.DynamicItem[discord.ui.Button],
                       template=r"improbable:regen:(?P<gid>[0-9]+):(?P<uid>[0-9]+)"):
    def __init__(self, generation_id: int, user_id: int):
        super().__init__(discord.ui.Button(label="Regenerate", emoji="🎲", style=discord.ButtonStyle.secondary,
                                           custom_id=f"improbable:regen:{generation_id}:{user_id}"))
        self.generation_id, self.user_id = generation_id, user_id

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button, match: re.Match[str]):
        return cls(int(match["gid"]), int(match["uid"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        from bot.generate import follow_up

        await follow_up(interaction, self.generation_id, "regenerate", owner_id=self.user_id)


class MoreImprobableButton(discord.ui.DynamicItem[discord.ui.Button],
                           template=r"improbable:more:(?P<gid>[0-9]+):(?P<uid>[0-9]+)"):
    def __init__(self, generation_id: int, user_id: int):
        super().__init__(discord.ui.Button(label="More improbable", emoji="🌀", style=discord.ButtonStyle.secondary,
                                           custom_id=f"improbable:more:{generation_id}:{user_id}"))
        self.generation_id, self.user_id = generation_id, user_id

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button, match: re.Match[str]):
        return cls(int(match["gid"]), int(match["uid"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        from bot.generate import follow_up

        await follow_up(interaction, self.generation_id, "improbable", owner_id=self.user_id)


class ContinueButton(discord.ui.DynamicItem[discord.ui.Button], template=r"improbable:cont:(?P<gid>[0-9]+)"):
    def __init__(self, generation_id: int):
        super().__init__(discord.ui.Button(label="Continue", emoji="➡️", style=discord.ButtonStyle.primary,
                                           custom_id=f"improbable:cont:{generation_id}"))
        self.generation_id = generation_id

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button, match: re.Match[str]):
        return cls(int(match["gid"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        from bot.generate import follow_up

        await follow_up(interaction, self.generation_id, "continue", owner_id=None)


DYNAMIC_ITEMS = (RegenerateButton, MoreImprobableButton, ContinueButton)


def result_view(generation_id: int, user_id: int | None) -> discord.ui.View:
    """The buttons for one result (user_id 0: anybody may change it)."""
    view = discord.ui.View(timeout=None)
    view.add_item(RegenerateButton(generation_id, user_id or 0))
    view.add_item(ContinueButton(generation_id))
    view.add_item(MoreImprobableButton(generation_id, user_id or 0))
    return view
