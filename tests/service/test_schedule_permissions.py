"""Schedules into channels the bot cannot post in (issue 12): refused when added if the bot knows, and
paused (shown with the reason by /schedule list) at the first post Discord refuses with 403 or 404, instead
of failing silently every minute forever. Discord is a real local HTTP server that answers like Discord."""

from __future__ import annotations

import json
import os
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import db
import service.schedules
from core.settings import get_settings
from db.schedules import claim_slot
from service.errors import CannotPost

from .test_service import GUILD, MANAGER, _activate, env  # noqa: F401 - pytest fixtures used by name


def test_a_channel_the_bot_cannot_post_in_is_refused_when_added(env):  # noqa: F811
    with pytest.raises(CannotPost, match="cannot post in #channel-42.*Send Messages") as refused:
        service.schedules.add_schedule(MANAGER, "alice", 42, every="1h", bot_can_post=False)
    assert refused.value.channel_id == 42
    assert service.schedules.list_schedules(GUILD) == []
    assert service.schedules.add_schedule(MANAGER, "alice", 42, every="1h", bot_can_post=True).enabled
    assert service.schedules.add_schedule(MANAGER, "alice", 43, every="1h").enabled  # unknown: the worker judges


class _Discord(BaseHTTPRequestHandler):
    status = 403
    posts: list[str] = []

    def do_POST(self):  # noqa: N802 - http.server's naming
        self.posts.append(self.path)
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        ok = self.status == 200
        body = json.dumps({"id": "123"} if ok else {"message": "Missing Access", "code": 50001}).encode()
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def discord(env, monkeypatch):  # noqa: F811
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Discord)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setitem(os.environ, "IMPROBABLE_DISCORD_TOKEN", "test-token")
    monkeypatch.setitem(os.environ, "IMPROBABLE_DISCORD_API_BASE", f"http://127.0.0.1:{server.server_port}")
    get_settings.cache_clear()
    _Discord.posts = []
    yield _Discord
    server.shutdown()
    get_settings.cache_clear()


@pytest.mark.parametrize("status, paused", [(403, True), (404, True), (400, False)])
def test_a_refused_post_pauses_the_schedule_and_list_says_why(discord, monkeypatch, status, paused):
    import worker.schedules
    from core.contracts import GenerateResult

    class GivenText:  # generation is not under test here: the text is given, Discord's answer is real HTTP
        def serve(self, request, maybe_done=False):
            return GenerateResult(text="Curiouser", full_text="Curiouser")

    discord.status = status
    _activate()
    sched = service.schedules.add_schedule(MANAGER, "alice", 42, every="1h")
    slot = datetime(2026, 1, 1, 9, tzinfo=UTC)
    with db.session_scope() as session:
        assert claim_slot(session, sched.id, slot)
    result = worker.schedules.post(sched.id, slot.isoformat(), GivenText())
    assert result["status"] == "failed" and result["paused"] is paused
    told = ["/users/@me/channels"] if paused else []  # a pause is told to the schedule's creator
    assert discord.posts == ["/channels/42/webhooks", "/channels/42/messages", *told]  # as the persona, else the bot
    [shown] = service.schedules.list_schedules(GUILD)
    assert shown.enabled is not paused
    assert (f"Discord answered {status}" in shown.problem) if paused else shown.problem == ""
