"""The Discord data package parsers (core/datapackage.py): messages.json, messages.csv, a package .zip with
index.json and channel.json, keeping one server's messages, and the cleaning of mentions, links and emoji."""

from __future__ import annotations

import io
import json
import zipfile

import pytest

from core.datapackage import (
    PackageError,
    clean_message,
    is_command,
    package_text,
    parse_channel_json,
    parse_index,
    parse_messages_csv,
    parse_messages_json,
    parse_package,
)

GUILD, OTHER = 111, 222


def _json(rows: list[tuple[int, str, str]]) -> bytes:
    rows = [{"ID": i, "Timestamp": ts, "Contents": text, "Attachments": ""} for i, ts, text in rows]
    return json.dumps(rows).encode()


def _zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(name, data)
    return buf.getvalue()


def package() -> bytes:
    """Three channels: one of this server (json), one of another server (csv, the older format), and a DM."""
    csv_rows = ("ID,Timestamp,Contents,Attachments\r\n"
                '5,2021-01-02 10:00:00,"elsewhere, with a comma\nand a newline",\r\n'
                "6,2021-01-02 10:01:00,,https://cdn.discordapp.com/x.png\r\n")
    return _zip({
        "package/messages/index.json": json.dumps({"10": "general in Here", "20": "lobby in There",
                                                   "30": "Direct Message with bob#0001"}).encode(),
        "package/messages/c10/channel.json": json.dumps({"id": "10", "type": 0, "name": "general",
                                                         "guild": {"id": str(GUILD), "name": "Here"}}).encode(),
        "package/messages/c10/messages.json": _json([(2, "2021-01-01 10:01:00", "second here <@123>"),
                                                     (1, "2021-01-01 10:00:00", "first here https://x.y/z")]),
        "package/messages/c20/channel.json": json.dumps({"id": "20", "type": 0,
                                                         "guild": {"id": str(OTHER), "name": "There"}}).encode(),
        "package/messages/c20/messages.csv": csv_rows.encode(),
        "package/messages/c30/channel.json": json.dumps({"id": "30", "type": 1, "recipients": ["1", "2"]}).encode(),
        "package/messages/c30/messages.json": _json([(7, "2021-01-03 10:00:00", "a DM <:wave:999>")]),
        "package/account/user.json": b"{}",
    })


def test_messages_json_and_csv():
    rows = parse_messages_json(_json([(1, "2021-01-01", "hello")]), 10)
    assert [(m.id, m.contents, m.channel_id) for m in rows] == [(1, "hello", 10)]
    csv_rows = parse_messages_csv(b'ID,Timestamp,Contents,Attachments\n3,2021,"a ""quoted"" line\nnext",\n')
    assert [(m.id, m.contents) for m in csv_rows] == [(3, 'a "quoted" line\nnext')]
    with pytest.raises(PackageError):
        parse_messages_json(b'{"not": "a list"}')
    with pytest.raises(PackageError):
        parse_messages_csv(b"a,b\n1,2\n")


def test_index_and_channel_json():
    assert parse_index(b'{"10": "general in Here", "x": "bad"}') == {10: "general in Here"}
    channel = parse_channel_json(b'{"id": "10", "type": 0, "guild": {"id": "111", "name": "Here"}}')
    assert (channel.id, channel.guild_id, channel.known) == (10, GUILD, True)
    assert parse_channel_json(b'{"id": "30", "type": 1}').guild_id is None


def test_zip_keeps_one_servers_messages_oldest_first():
    pkg = parse_package(package(), "package.zip", 10_000_000)
    assert pkg.has_channel_info and pkg.channels[10].name == "general" and pkg.channels[20].name == "lobby in There"
    text, kept, read = package_text(pkg, GUILD)
    assert text == "first here\nsecond here" and (kept, read) == (2, 5)
    everything, kept, _ = package_text(pkg)
    assert everything.splitlines() == ["first here", "second here", "elsewhere, with a comma and a newline", "a DM"]
    assert kept == 4  # the attachment-only message is dropped


def test_single_files_and_refusals():
    assert not parse_package(_json([(1, "t", "x")]), "messages.json", 1000).has_channel_info
    csv = b"ID,Timestamp,Contents,Attachments\n1,t,hi,\n"
    assert parse_package(csv, "messages.csv", 1000).messages[0].contents == "hi"
    with pytest.raises(PackageError, match="unpack"):
        parse_package(package(), "package.zip", 100)  # a zip that unpacks past the cap is refused unread
    with pytest.raises(PackageError, match="no messages"):
        parse_package(_zip({"account/user.json": b"{}"}), "p.zip", 1000)
    with pytest.raises(PackageError):
        parse_package(b"not a zip", "p.zip", 1000)
    with pytest.raises(PackageError):
        parse_package(b"whatever", "notes.pdf", 1000)


def test_cleaning():
    assert clean_message("hi <@123> and <@!45> in <#6> to <@&7> @everyone") == "hi and in to"
    assert clean_message("see https://example.com/a?b=c and www.x.org or discord.gg/abc") == "see and or"
    assert clean_message("nice <:pog:123456> <a:dance:9> at <t:1700000000:R>") == "nice at"
    assert clean_message("two\n\nlines  ") == "two lines"
    assert clean_message("https://only.a/link") == "" and clean_message("") == ""
    assert is_command("/generate x") and is_command("  !help") and not is_command("hello /there")
