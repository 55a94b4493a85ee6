"""A member's own Discord data package (the export Discord gives every user on request), read with the standard
library only: the messages the member wrote, cleaned into text a voice can be trained on.

The package's `messages/` folder has one folder per channel, `c<channel_id>/` (older packages: `<channel_id>/`),
holding `messages.json` (newer packages: a JSON list of {"ID", "Timestamp", "Contents", "Attachments"}) or
`messages.csv` (older: the columns ID, Timestamp, Contents, Attachments), and `channel.json` ({"id", "type",
"guild": {"id", "name"}}; no "guild" for a DM); `messages/index.json` maps channel ids to names. A member uploads
the package as a .zip, or one messages.json / messages.csv file on its own (no channel.json: its server is
unknown).

Cleaning, the same for a package and for channel history (`clean_message`): mentions of members, roles and
channels, @everyone/@here, links, custom emoji and Discord timestamps are removed, whitespace is collapsed, and a
message left empty (an attachment alone, a link alone) is dropped.
"""

from __future__ import annotations

import csv
import io
import json
import re
import zipfile
from dataclasses import dataclass, field

MENTION = re.compile(r"<(?:@[!&]?|#)\d+>|@(?:everyone|here)\b")
CUSTOM_EMOJI = re.compile(r"<a?:\w{1,64}:\d+>")
TIMESTAMP = re.compile(r"<t:-?\d+(?::[tTdDfFR])?>")
LINK = re.compile(r"(?:https?://|www\.|discord\.gg/)\S+", re.IGNORECASE)
SPACES = re.compile(r"[ \t\u00a0]+")
CHANNEL_FILE = re.compile(r"(?:^|/)messages/c?(\d+)/(messages\.json|messages\.csv|channel\.json)$")
INDEX_FILE = re.compile(r"(?:^|/)messages/index\.json$")
COMMAND_PREFIXES = ("/", "!")  # slash commands typed as text, and the prefix bots of the "!help" kind


class PackageError(ValueError):
    """A file that is not (a part of) a Discord data package; the message says what to upload instead."""


@dataclass(frozen=True)
class PackageMessage:
    id: int
    timestamp: str
    contents: str
    channel_id: int | None = None


@dataclass(frozen=True)
class PackageChannel:
    id: int
    name: str | None = None
    guild_id: int | None = None  # None: a DM or a group DM (channel.json has no guild), or unknown
    known: bool = False  # a channel.json was read for it


@dataclass
class Package:
    messages: list[PackageMessage] = field(default_factory=list)
    channels: dict[int, PackageChannel] = field(default_factory=dict)

    @property
    def has_channel_info(self) -> bool:
        return any(c.known for c in self.channels.values())


def clean_message(text: str) -> str:
    """A message's text without mentions, links, custom emoji or timestamps, on one line; "" if nothing is left."""
    text = TIMESTAMP.sub(" ", CUSTOM_EMOJI.sub(" ", LINK.sub(" ", MENTION.sub(" ", text or ""))))
    lines = (SPACES.sub(" ", line).strip() for line in text.replace("\r", "\n").split("\n"))
    return " ".join(line for line in lines if line)


def is_command(text: str) -> bool:
    return (text or "").lstrip().startswith(COMMAND_PREFIXES)


def _int(value) -> int | None:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return None


def _rows(rows, channel_id: int | None) -> list[PackageMessage]:
    out = []
    for row in rows:
        if not isinstance(row, dict):
            raise PackageError("messages.json should be a list of messages with ID, Timestamp and Contents.")
        out.append(PackageMessage(_int(row.get("ID")) or 0, str(row.get("Timestamp") or ""),
                                  str(row.get("Contents") or ""), channel_id))
    return out


def parse_messages_json(data: bytes, channel_id: int | None = None) -> list[PackageMessage]:
    """A newer package's messages.json: a list of {"ID", "Timestamp", "Contents", "Attachments"}."""
    try:
        rows = json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise PackageError("That messages.json is not valid JSON.") from None
    if not isinstance(rows, list):
        raise PackageError("messages.json should be a list of messages with ID, Timestamp and Contents.")
    return _rows(rows, channel_id)


def parse_messages_csv(data: bytes, channel_id: int | None = None) -> list[PackageMessage]:
    """An older package's messages.csv: a header row ID,Timestamp,Contents,Attachments, one message a row (a
    message's newlines are inside its quoted field)."""
    try:
        reader = csv.DictReader(io.StringIO(data.decode("utf-8-sig"), newline=""))
        if not reader.fieldnames or "Contents" not in reader.fieldnames:
            raise PackageError("messages.csv should have the columns ID, Timestamp, Contents, Attachments.")
        return _rows(list(reader), channel_id)
    except (UnicodeDecodeError, csv.Error):
        raise PackageError("That messages.csv could not be read as UTF-8 CSV.") from None


def parse_channel_json(data: bytes) -> PackageChannel:
    """channel.json: {"id", "type", "guild": {"id", "name"}} (no "guild" outside a server)."""
    try:
        info = json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise PackageError("A channel.json in the package is not valid JSON.") from None
    if not isinstance(info, dict) or _int(info.get("id")) is None:
        raise PackageError("A channel.json in the package has no channel id.")
    guild = info.get("guild") if isinstance(info.get("guild"), dict) else {}
    return PackageChannel(_int(info["id"]), info.get("name"), _int(guild.get("id")), known=True)


def parse_index(data: bytes) -> dict[int, str]:
    """messages/index.json: channel id → its name ("Unknown channel" and DMs' names included as given)."""
    try:
        index = json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise PackageError("messages/index.json is not valid JSON.") from None
    if not isinstance(index, dict):
        return {}
    return {cid: str(name) for key, name in index.items() if (cid := _int(key)) is not None and name is not None}


def parse_zip(data: bytes, max_bytes: int) -> Package:
    """The messages of a package .zip (the whole package, or its messages folder). Only the messages files,
    channel.json and index.json are read, and together they may unpack to at most `max_bytes`."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise PackageError("That .zip file could not be opened.") from None
    with archive:
        wanted = [(info, m) for info in archive.infolist() if (m := CHANNEL_FILE.search(info.filename))
                  or INDEX_FILE.search(info.filename)]
        if sum(info.file_size for info, _ in wanted) > max_bytes:
            raise PackageError(f"The package's messages unpack to more than {max_bytes / 1e6:.0f} MB; upload the "
                               "messages file of one channel, or a .zip of fewer channels.")
        package, names = Package(), {}
        for info, match in wanted:
            raw = archive.read(info)
            if match is None:
                names = parse_index(raw)
                continue
            cid, kind = int(match.group(1)), match.group(2)
            if kind == "channel.json":
                channel = parse_channel_json(raw)
                package.channels[cid] = PackageChannel(cid, channel.name, channel.guild_id, True)
            else:
                parse = parse_messages_json if kind == "messages.json" else parse_messages_csv
                package.messages += parse(raw, cid)
    if not any(CHANNEL_FILE.search(i.filename) for i, _ in wanted):
        raise PackageError("That .zip has no messages/c<id>/messages.json (or .csv): upload the package Discord "
                           "sent you, or its messages folder.")
    for cid in {m.channel_id for m in package.messages} | set(names):
        old = package.channels.get(cid) or PackageChannel(cid)
        package.channels[cid] = PackageChannel(cid, old.name or names.get(cid), old.guild_id, old.known)
    return package


def parse_package(data: bytes, filename: str, max_bytes: int) -> Package:
    """A package .zip, or one messages.json / messages.csv file; PackageError for anything else."""
    name = (filename or "").lower()
    if name.endswith(".zip") or data[:4] == b"PK\x03\x04":
        return parse_zip(data, max_bytes)
    if name.endswith(".json"):
        return Package(parse_messages_json(data))
    if name.endswith(".csv"):
        return Package(parse_messages_csv(data))
    raise PackageError("Upload your Discord data package (.zip), or a messages.json or messages.csv from it.")


def package_text(package: Package, guild_id: int | None = None) -> tuple[str, int, int]:
    """(text, messages kept, messages read): the cleaned messages oldest first, one a line; with `guild_id`,
    only those of channels whose channel.json names that server."""
    keep = package.messages
    if guild_id is not None:
        keep = [m for m in keep if (c := package.channels.get(m.channel_id)) is not None and c.guild_id == guild_id]
    lines = [text for m in sorted(keep, key=lambda m: (m.timestamp, m.id)) if (text := clean_message(m.contents))]
    return "\n".join(lines), len(lines), len(package.messages)
