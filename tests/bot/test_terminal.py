"""The console chat's terminal (bot/terminal.py): persona descriptions written in Discord markdown shown as
plain text, and a line-editing history kept in a file."""

from __future__ import annotations

import pytest

from bot.terminal import enable_line_editing, plain_text, remember


@pytest.mark.parametrize("markdown, plain", [
    ("Attach it to `/persona retrain harry-potter`.", "Attach it to /persona retrain harry-potter."),
    ("**Bold** words, *italics*, _too_, __underlined__, ***both***", "Bold words, italics, too, underlined, both"),
    ("code stays verbatim: `a **b** _c_`", "code stays verbatim: a **b** _c_"),
    ("```\nprint(*args)\n```", "print(*args)\n"),
    ("snake_case_name and 2*3*4 are not styles", "snake_case_name and 2*3*4 are not styles"),
    ("an escaped \\*star\\*", "an escaped *star*"),
])
def test_descriptions_read_plainly(markdown, plain):
    assert plain_text(markdown) == plain


def test_the_built_in_descriptions_read_plainly():
    """The built-in personas' descriptions are written for Discord; the console shows them without markup."""
    from db.personas import DEFAULT_PERSONAS

    for spec in DEFAULT_PERSONAS:
        shown = plain_text(spec.description)
        assert "`" not in shown and "**" not in shown, shown


def test_history_is_kept_in_a_file(tmp_path):
    readline = pytest.importorskip("readline")
    history = tmp_path / "data" / "chat_history"
    readline.clear_history()
    assert enable_line_editing(history)
    readline.add_history("/personas")
    remember(history)
    readline.add_history("alice: Down the hole")
    remember(history)
    assert history.read_text().split("\n")[-3:-1] == ["/personas", "alice: Down the hole"]
    readline.clear_history()
    enable_line_editing(history)  # the next session starts with the last one's lines
    assert [readline.get_history_item(i) for i in (1, 2)] == ["/personas", "alice: Down the hole"]
    readline.clear_history()


@pytest.mark.slow
def test_the_up_arrow_repeats_a_command_in_improbable_chat(tmp_path):
    """In a real terminal (a pty): the up arrow brings back the last command instead of printing ^[[A, and
    the commands are in the data dir's history file afterwards."""
    import contextlib
    import os
    import pty
    import select
    import sys
    import time
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if not k.startswith(("IMPROBABLE_", "DISCORD_"))}
    env.update(IMPROBABLE_DATA_DIR=str(tmp_path / "data"), TERM="xterm", COLUMNS="200")
    pid, fd = pty.fork()
    if pid == 0:  # the child: the command as a user starts it
        os.execve(str(Path(sys.executable).with_name("improbable")), ["improbable", "chat"], env)
    out = b""

    def wait_for_prompts(n: int, timeout: float = 120) -> None:
        nonlocal out
        end = time.monotonic() + timeout
        while out.count(b"improbable> ") < n and time.monotonic() < end:
            if select.select([fd], [], [], 0.5)[0]:
                out += os.read(fd, 65536)
        assert out.count(b"improbable> ") >= n, out.decode(errors="replace")

    try:
        wait_for_prompts(1)
        os.write(fd, b"/personas\r")
        wait_for_prompts(2)
        os.write(fd, b"\x1b[A\r")  # up arrow, enter
        wait_for_prompts(3)
        os.write(fd, b"/quit\r")
        os.waitpid(pid, 0)
    finally:
        with contextlib.suppress(OSError):  # already gone after /quit; if not (a failure above), now
            os.kill(pid, 9)
            os.waitpid(pid, 0)
    text = out.decode(errors="replace")
    assert text.count("harry-potter") == 2 and "^[[A" not in text
    assert (tmp_path / "data" / "chat_history").read_text().splitlines() == ["/personas", "/quit"]
