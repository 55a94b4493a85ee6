"""What the service tells a user it cannot do: refusals as exceptions with fields, never as Discord text.

A refusal is a plain-language template with named fields. The kind of a field says what it is, and each front
end decides how it looks: the Discord bot (bot/formatting.py) shows a `Code` as code, a `UserRef` as a
mention, a datetime as a timestamp each reader sees in their own time zone; the console and the CLI show
plain words (`UserError.message`). The classes below keep their facts as attributes too (which persona,
which limit, the numbers), so a caller or a test can read them without parsing the text.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any


class Code(str):
    """A name, command or value as the user would type it (a persona's slug, `/train status`, `30m`)."""


class Strong(str):
    """Words the reader must not miss (the name of a permission)."""


class UserRef(int):
    """A user, by id."""


class ChannelRef(int):
    """A channel, by id."""


def in_minutes(when: datetime) -> str:
    seconds = max(0.0, (when - datetime.now(UTC)).total_seconds())
    return f"in {seconds:.0f} s" if seconds < 90 else f"in {seconds / 60:.0f} min"


def plain(value: Any) -> str:
    """A field as plain words (the console, the CLI, logs)."""
    if isinstance(value, datetime):
        return in_minutes(value)
    if isinstance(value, UserRef):
        return f"@user-{int(value)}"
    if isinstance(value, ChannelRef):
        return f"#channel-{int(value)}"
    return str(value)


class UserError(Exception):
    """A request the user has to change; the text says how. `template` names its fields in braces;
    `render(show)` fills them with `show(value)`, `message` is the plain rendering."""

    def __init__(self, template: str, /, **fields: Any):
        self.template, self.fields = template, fields
        self.message = self.render(plain)
        super().__init__(self.message)

    def render(self, show: Callable[[Any], str]) -> str:
        if not self.fields:  # a template without fields is shown as it is (it may hold braces)
            return self.template
        return self.template.format_map({name: show(value) for name, value in self.fields.items()})


class NotAllowed(UserError):
    """The actor lacks a permission."""


def _either(names: Sequence[str], prefix: str) -> tuple[str, dict[str, Code]]:
    """'{s0} or {s1}' and its fields, for a list of names."""
    fields = {f"{prefix}{i}": Code(name) for i, name in enumerate(names)}
    return " or ".join(f"{{{key}}}" for key in fields), fields


class UnknownPersona(UserError):
    def __init__(self, name: str, suggestions: Sequence[str] = ()):
        self.name, self.suggestions = name, tuple(suggestions)
        either, fields = _either(self.suggestions, "s")
        hint = f" Did you mean {either}?" if self.suggestions else ""
        super().__init__("There is no persona called {name}." + hint, name=Code(name), **fields)


class PersonaDisabled(UserError):
    """The deployment's operator turned the persona off (service/operator.py)."""

    def __init__(self, persona: str):
        self.persona = persona
        super().__init__("{persona} has been disabled by the bot's operator and cannot be used.",
                         persona=Code(persona))


class NoModelYet(UserError):
    """A persona without an active checkpoint. `own_copy`: its text does not ship (the operator uploads it)."""

    def __init__(self, persona: str, recipe: str | None = None, own_copy: bool = False):
        self.persona, self.recipe, self.own_copy = persona, recipe, own_copy
        if own_copy:
            hint = " Upload your own copy of the text with {retrain}."
        elif recipe:
            hint = " Train it with {retrain} (or {cli} on the command line)."
        else:
            hint = ""
        super().__init__("{persona} has no trained model yet." + hint, persona=Code(persona),
                         retrain=Code("/persona retrain" if own_copy else f"/persona retrain {persona}"),
                         cli=Code(f"improbable train --recipe {recipe}"))


class StillTraining(UserError):
    def __init__(self, persona: str, run_id: int | None = None, status: str | None = None):
        self.persona, self.run_id, self.status = persona, run_id, status
        if run_id is None:
            super().__init__("{persona} is already training; see {status_command}.", persona=Code(persona),
                             status_command=Code("/train status"))
            return
        super().__init__("{persona} is still training (run {run}, {status}); try again when it is done "
                         "({status_command}).", persona=Code(persona), run=run_id, status=status,
                         status_command=Code("/train status"))


class NeedsOwnCopy(UserError):
    """A built-in persona whose text cannot ship with Improbable (copyright): training needs an upload."""

    def __init__(self, display_name: str):
        self.display_name = display_name
        super().__init__("{name} is copyrighted, so no text ships with Improbable: attach your own copy (a .txt "
                         "file) to {retrain}.", name=display_name, retrain=Code("/persona retrain"))


class TooManyRuns(UserError):
    def __init__(self, count: int, limit: int):
        self.count, self.limit = count, limit
        super().__init__("You already have {count} training run(s) queued or running (the limit here is "
                         "{limit}); wait for it or cancel it with {cancel}.", count=count, limit=limit,
                         cancel=Code("/train cancel"))


class ServerTrainingQueueFull(UserError):
    def __init__(self, count: int, limit: int):
        self.count, self.limit = count, limit
        super().__init__("This server already has {count} training run(s) waiting for a trainer (the limit is "
                         "{limit} per server, so that every server gets its turn); try again when one has "
                         "started, see {status}.", count=count, limit=limit, status=Code("/train status"))


class TrainCooldown(UserError):
    def __init__(self, ready_at: datetime):
        self.ready_at = ready_at
        super().__init__("You can start another training run {when}.", when=ready_at)


class UploadTooLarge(UserError):
    def __init__(self, size_bytes: int, limit_bytes: int, files: int = 1):
        self.size_bytes, self.limit_bytes, self.files = size_bytes, limit_bytes, files
        what = "The file is" if files == 1 else f"The {files} files are together"
        super().__init__(what + " {size} MB; the limit here is {limit} MB.", size=f"{size_bytes / 1e6:.1f}",
                         limit=f"{limit_bytes / 1e6:.1f}")


class TextGone(UserError):
    def __init__(self, generation_id: int):
        self.generation_id = generation_id
        super().__init__("That text is no longer in the database (its persona may have been deleted).")


class NotOwner(NotAllowed):
    """Only the requester of a text (`owner_id`, None when unknown) or a manager may delete it."""

    def __init__(self, owner_id: int | None):
        self.owner_id = owner_id
        if owner_id:
            super().__init__("Only {owner}, who asked for it, or someone with Manage Server can delete this text.",
                             owner=UserRef(owner_id))
        else:
            super().__init__("Only a server manager or someone with Manage Server can delete this text.")


class NeedsPermission(NotAllowed):
    """The actor needs a server permission (`permission`), or the trainer role where `role` says so."""

    def __init__(self, permission: str, action: str, role: bool = False):
        self.permission, self.action, self.role = permission, action, role
        either = " or this server's trainer role" if role else ""
        super().__init__("You need the {permission} permission" + either + " to " + action + ".",
                         permission=Strong(permission))


class CannotPost(UserError):
    """The bot may not post where it was asked to (it needs `permissions` there)."""

    permissions = ("View Channel", "Send Messages")

    def __init__(self, channel_id: int, then: str = "add the schedule again"):
        self.channel_id = channel_id
        super().__init__("I cannot post in {channel}: give me the {view} and {send} permissions there, then "
                         f"{then}.", channel=ChannelRef(channel_id), view=Strong(self.permissions[0]),
                         send=Strong(self.permissions[1]))


class NotAValue(UserError):
    """Text that is not a value of the kind asked for (an interval, a cooldown, a cron expression, a family,
    a persona name); `examples` are what to write instead."""

    def __init__(self, text: str, kind: str, examples: Sequence[str] = (), reason: str = ""):
        self.text, self.kind, self.examples = text, kind, tuple(examples)
        either, fields = _either(self.examples, "e")
        tail = ": {reason}" if reason else ""
        if self.examples:
            tail += f"; write something like {either}" if reason else f": write something like {either}"
        super().__init__("{text} is not " + kind + tail + ".", text=Code(text), reason=reason, **fields)


class OverQuota(UserError):
    """A deployment or server limit counted in shared counters (service/quotas.py): `what` is used, `limit` the
    most allowed; the text says what to do."""

    def __init__(self, template: str, /, *, used: float, limit: float, **fields: Any):
        self.used, self.limit = used, limit
        super().__init__(template, used=f"{used:g}", limit=f"{limit:g}", **fields)


class TooManyJobs(OverQuota):
    """A member's (or, with `server=True`, the whole server's) jobs in flight, in units (core.cost)."""

    def __init__(self, used: float, limit: float, cost: float, server: bool = False):
        self.cost, self.server = cost, server
        if server:
            super().__init__("This server already has {used} job units running (the limit is {limit}; this one "
                             "costs {cost}). Try again in a moment.", used=used, limit=limit, cost=f"{cost:g}")
        else:
            super().__init__("You already have {used} job units waiting (the limit here is {limit}; this one costs "
                             "{cost}). Wait for them to finish, or cancel one with {queue}.", used=used, limit=limit,
                             cost=f"{cost:g}", queue=Code("/queue"))


class StorageFull(OverQuota):
    def __init__(self, used: int, adding: int, limit: int):
        self.adding = adding
        super().__init__("This server keeps {used_mb} MB of texts and models; {adding_mb} MB more would pass its "
                         "{limit_mb} MB. Delete a persona first ({delete}).", used=used, limit=limit,
                         used_mb=f"{used / 1e6:.1f}", adding_mb=f"{adding / 1e6:.1f}", limit_mb=f"{limit / 1e6:.0f}",
                         delete=Code("/persona delete"))


class TrainingBudget(OverQuota):
    def __init__(self, used: float, asked: float, limit: float):
        self.asked = asked
        super().__init__("This server has started {used} training minutes in the last 24 hours; {asked} more would "
                         "pass its {limit} a day. Try later, or ask for fewer minutes.", used=round(used, 1),
                         limit=limit, asked=f"{asked:g}")


class TooManySchedules(OverQuota):
    def __init__(self, used: int, limit: int):
        super().__init__("This server already has {used} schedules (the most it may have is {limit}); remove one "
                         "with {remove}.", used=used, limit=limit, remove=Code("/schedule remove"))


class TooOften(UserError):
    """A schedule more frequent than the deployment allows."""

    def __init__(self, seconds: float, least_seconds: int):
        self.seconds, self.least_seconds = seconds, least_seconds
        super().__init__("Schedules may post at most once every {least}; this one would post every {every}.",
                         least=Code(_duration(least_seconds)), every=_duration(seconds))


def _duration(seconds: float) -> str:
    """600 → '10m', 5400 → '1h30m', 45 → '45s'."""
    seconds = int(seconds)
    parts = [(seconds // 86400, "d"), (seconds % 86400 // 3600, "h"), (seconds % 3600 // 60, "m"), (seconds % 60, "s")]
    return "".join(f"{n}{u}" for n, u in parts if n) or "0s"
