"""End to end, the per-message controls under a result (Info, Delete): the real bot process, a real worker
and Redis, against the fake Discord (fixtures in conftest.py)."""

from __future__ import annotations

import re

import pytest

from .conftest import messages_handled, wait_handled
from .fake_discord import EPHEMERAL, custom_ids, opt
from .test_e2e import TIMEOUT, ephemeral_reply, final_text

pytestmark = pytest.mark.slow


def _control(msg: dict, action: str) -> str:
    return next(c for c in custom_ids(msg) if c.startswith(f"improbable:{action}:"))


def _deleted_at(database_url: str, generation_id: int):
    import db

    engine = db.make_engine(database_url)
    try:
        with db.session_scope(engine) as session:
            return session.get(db.Generation, generation_id).deleted_at
    finally:
        engine.dispose()


def test_info_shows_parameters_and_probabilities(e2e):
    fake = e2e.fake
    ix = fake.slash("generate", [opt("persona", "alice"), opt("prompt", "The Hatter"), opt("length", 60),
                                 opt("improbability", 0.1), opt("seed", 3)], user=fake.bob)
    msg = final_text(fake, ix)
    gid = custom_ids(msg)[0].split(":")[2]
    assert custom_ids(msg)[3:] == [f"improbable:info:{gid}", f"improbable:del:{gid}", f"improbable:report:{gid}"]

    click = fake.click(msg, _control(msg, "info"), user=fake.carol)  # anyone may look
    info = ephemeral_reply(fake, click)["content"]
    assert info and info == fake.message(click.original_id)["content"]
    assert "`alice`" in info and f"checkpoint {e2e.checkpoint_id}" in info
    for param in ("max_tokens `60`", "temperature", "top_k", "top_p", "improbability `0.1`", "tolerance"):
        assert param in info, param
    assert "Seed `3`" in info and re.search(r"tokens \d+", info) and re.search(r"latency \d+ ms", info)
    mean, low = map(float, re.search(r"mean ([0-9.e-]+), minimum ([0-9.e-]+)", info).groups())
    assert 0 < low <= mean <= 1
    assert "Improbability target 0.1, realised: `" in info  # the drive's picks against the target
    assert fake.message(int(msg["id"])) is not None  # Info changes nothing


def test_delete_by_owner_and_refused_for_others(e2e):
    fake = e2e.fake
    ix = fake.slash("generate", [opt("persona", "alice"), opt("prompt", "Down the"), opt("length", 30)],
                    user=fake.bob)
    msg = final_text(fake, ix)
    gid = int(custom_ids(msg)[0].split(":")[2])
    delete = _control(msg, "del")

    other = fake.click(msg, delete, user=fake.carol)
    refusal = ephemeral_reply(fake, other)
    assert refusal["flags"] & EPHEMERAL and "Only" in refusal["content"] and "Manage Server" in refusal["content"]
    assert fake.message(int(msg["id"])) is not None and _deleted_at(e2e.database_url, gid) is None

    fake.click(msg, delete, user=fake.bob)
    fake.wait_for(lambda: fake.message(int(msg["id"])) is None, TIMEOUT, "the message to be deleted")
    assert _deleted_at(e2e.database_url, gid) is not None


def test_delete_by_a_manager(e2e):
    fake = e2e.fake
    ix = fake.slash("generate", [opt("persona", "alice"), opt("prompt", "Curious"), opt("length", 20)],
                    user=fake.alice)
    msg = final_text(fake, ix)
    fake.click(msg, _control(msg, "del"), user=fake.owner)  # Manage Server
    fake.wait_for(lambda: fake.message(int(msg["id"])) is None, TIMEOUT, "the manager's delete")


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_show_probabilities_attaches_a_picture_and_info_offers_it(e2e):
    fake = e2e.fake
    ix = fake.slash("generate", [opt("persona", "alice"), opt("prompt", "Alice said"), opt("length", 80),
                                 opt("improbability", 0.05), opt("show", "probabilities")], user=fake.alice)
    msg = final_text(fake, ix)
    mid = int(msg["id"])
    files = fake.wait_for(lambda: [f for f in fake.files.get(mid, []) if f[0].endswith(".png")], TIMEOUT,
                          "the probability picture")
    name, png = files[0]
    width, height = _png_size(png)
    assert name.startswith("probabilities-") and 200 <= width <= 2000 and 100 <= height <= 2000
    assert 3000 < len(png) < 8_000_000  # a real picture (text, shading, legend), small enough for Discord
    assert custom_ids(fake.message(mid))  # the buttons stayed

    plain = final_text(fake, fake.slash("generate", [opt("persona", "alice"), opt("prompt", "Alice said"),
                                                     opt("length", 20)], user=fake.alice))
    assert not fake.files.get(int(plain["id"]))  # no picture unless asked for

    click = fake.click(plain, _control(plain, "info"), user=fake.alice)
    info = ephemeral_reply(fake, click)
    offered = fake.files.get(int(info["id"]), [])
    assert offered and offered[0][0].endswith(".png") and _png_size(offered[0][1])[0] >= 200


def test_blended_voices(e2e, tiny_model):
    from .conftest import install_checkpoint

    fake = e2e.fake
    install_checkpoint(e2e.database_url, e2e.storage_dir, tiny_model, slug="shakespeare")
    ix = fake.slash("generate", [opt("persona", "alice:0.7+shakespeare"), opt("prompt", "Alice and"),
                                 opt("length", 60), opt("seed", 5)], user=fake.carol)
    msg = final_text(fake, ix)
    assert "**Alice and**" in msg["content"] and "70%" in msg["content"] and "30%" in msg["content"]
    assert len(msg["content"].split("**Alice and**", 1)[1].strip()) > 20  # the blend wrote text

    word = fake.slash("generate", [opt("persona", "alice+movie-reviews"), opt("prompt", "x")], user=fake.carol)
    assert "only character models" in ephemeral_reply(fake, word)["content"]
    bad = fake.slash("generate", [opt("persona", "alice:2+shakespeare")], user=fake.carol)
    assert "weights sum to 2" in ephemeral_reply(fake, bad)["content"]


def _replies_to(fake, msg: dict) -> list[dict]:
    with fake.cond:
        return [m for m in fake.messages.values()
                if (m.get("message_reference") or {}).get("message_id") == msg["id"]]


def test_ambient_replies_only_in_opted_in_channels(e2e):
    fake = e2e.fake
    ambient = fake.other_channel_id
    refused = fake.slash("ambient on", [opt("persona", "alice"), opt("chance", 1.0)], user=fake.bob,
                         channel_id=ambient)
    assert "Manage Server" in ephemeral_reply(fake, refused)["content"]
    on = fake.slash("ambient on", [opt("persona", "alice"), opt("chance", 1.0), opt("cooldown", "1h")],
                    user=fake.owner, channel_id=ambient)
    assert "Ambient replies on" in ephemeral_reply(fake, on)["content"]
    try:
        handled = messages_handled(e2e.bot)
        elsewhere = fake.say("Alice went down the hole <@" + str(fake.carol.id) + ">", user=fake.carol)
        heard = fake.say("The Queen shouted at <@" + str(fake.carol.id) + "> and @everyone", user=fake.carol,
                         channel_id=ambient)
        reply = fake.wait_for(lambda: _replies_to(fake, heard) and custom_ids(_replies_to(fake, heard)[0])
                              and _replies_to(fake, heard)[0], TIMEOUT, "an ambient reply")
        assert int(reply["channel_id"]) == ambient and "The Queen shouted at" in reply["content"]
        assert str(fake.carol.id) not in reply["content"] and "@everyone" not in reply["content"]
        again = fake.say("And then what?", user=fake.carol, channel_id=ambient)  # within the cooldown
        wait_handled(e2e.bot, handled + 3, "the three messages handled")  # any answer to them is posted by now
        assert not _replies_to(fake, elsewhere) and not _replies_to(fake, again)
    finally:
        off = fake.slash("ambient off", [], user=fake.owner, channel_id=ambient)
        assert "off" in ephemeral_reply(fake, off)["content"]
