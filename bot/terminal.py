"""The console chat's terminal: line editing with a history file, and Discord markdown as plain text.

The service/ messages are written for Discord (`**bold**`, `` `code` ``, <@123> mentions, <t:…:R> times,
escaped characters); `plain_text` shows them as a terminal reader expects. Generated text is not passed
through it: it is shown exactly as the model wrote it.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from pathlib import Path

HISTORY_LINES = 1000

_CODE = re.compile(r"(?<!\\)```(?:[\w+-]*\n)?(.*?)```|(?<!\\)`([^`\n]*[^`\n\\])`", re.DOTALL)  # not \`
_STYLES = [  # outermost first: ***x*** before **x** before *x*
    re.compile(r"\*\*\*(?=\S)(.+?)(?<=\S)\*\*\*", re.DOTALL),
    re.compile(r"\*\*(?=\S)(.+?)(?<=\S)\*\*", re.DOTALL),
    re.compile(r"__(?=\S)(.+?)(?<=\S)__", re.DOTALL),
    re.compile(r"~~(?=\S)(.+?)(?<=\S)~~", re.DOTALL),
    re.compile(r"\|\|(.+?)\|\|", re.DOTALL),
    re.compile(r"(?<![\w*\\])\*(?=\S)(.+?)(?<=[^\s\\])\*(?![\w*])", re.DOTALL),
    re.compile(r"(?<![\w\\])_(?=\S)(.+?)(?<=[^\s\\])_(?!\w)", re.DOTALL),
]
_HEADING = re.compile(r"^(?:#{1,3}|-#) +", re.MULTILINE)
_LINK = re.compile(r"\[([^\]\n]+)\]\(<?(https?://[^)>\s]+)>?\)")
_ESCAPED = re.compile(r"\\([\\*_`~|>#\-<@.\[\]()])")
_MENTIONS = [
    (re.compile(r"<@!?(\d+)>"), r"@user-\1"),
    (re.compile(r"<@&(\d+)>"), r"@role-\1"),
    (re.compile(r"<#(\d+)>"), r"#channel-\1"),
    (re.compile(r"<a?(:\w+:)\d+>"), r"\1"),
    (re.compile(r"</([\w -]+):\d+>"), r"/\1"),
]
_TIMESTAMP = re.compile(r"<t:(-?\d+)(?::([tTdDfFR]))?>")


def _when(match: re.Match, now: float | None = None) -> str:
    seconds, style = int(match.group(1)), match.group(2) or "f"
    if style == "R":
        delta = seconds - (time.time() if now is None else now)
        amount = abs(delta)
        unit = (f"{amount:.0f} s" if amount < 90 else f"{amount / 60:.0f} min" if amount < 5400
                else f"{amount / 3600:.0f} h" if amount < 129600 else f"{amount / 86400:.0f} days")
        return f"in {unit}" if delta >= 0 else f"{unit} ago"
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _plain_prose(text: str) -> str:
    text = _LINK.sub(r"\1 (\2)", text)
    for pattern, replacement in _MENTIONS:
        text = pattern.sub(replacement, text)
    text = _TIMESTAMP.sub(_when, text)
    text = _HEADING.sub("", text)
    for style in _STYLES:
        previous = None
        while previous != text:  # nested styles (**bold _and italic_**) unwrap one level per pass
            previous, text = text, style.sub(r"\1", text)
    text = _ESCAPED.sub(r"\1", text)
    return text.replace("@\u200b", "@")  # formatting.escape's guard against pings


def plain_text(markdown: str) -> str:
    """Discord markdown as a terminal shows it: styles stripped, code shown verbatim, mentions readable."""
    code: list[str] = []

    def hold(match: re.Match) -> str:  # code is verbatim: set it aside while styles are stripped around it
        code.append(match.group(1) if match.group(1) is not None else match.group(2))
        return f"\ue000{len(code) - 1}\ue001"

    text = _plain_prose(_CODE.sub(hold, markdown))
    return re.sub("\ue000(\\d+)\ue001", lambda m: code[int(m.group(1))], text)


def enable_line_editing(history_file: Path) -> bool:
    """Arrow keys, Ctrl-R search and a history kept in `history_file` across sessions, for input().
    False where readline is unavailable (Windows without pyreadline): plain input() still works."""
    try:
        import readline
    except ImportError:
        return False
    readline.set_history_length(HISTORY_LINES)
    try:
        history_file.parent.mkdir(parents=True, exist_ok=True)
        if history_file.is_file():
            readline.read_history_file(history_file)
    except OSError:
        pass  # an unreadable history is no reason to refuse line editing
    readline.parse_and_bind("tab: complete")
    return True


def remember(history_file: Path) -> None:
    """Save the history with the line just read (at once, so a killed session keeps it; at most
    HISTORY_LINES lines, the oldest dropped)."""
    try:
        import readline

        readline.write_history_file(history_file)
    except (ImportError, OSError):
        pass  # no readline, or a read-only data dir: the session goes on without saving


def start_reader(loop, queue, wanted, prompt: str, history_file: Path | None) -> None:
    """Read lines with input() in a daemon thread (so a pending input() never blocks the exit), one each
    time `wanted` is released, onto the asyncio `queue` (None at end of input); each line read is saved to
    `history_file` when there is one."""
    import threading

    def read() -> None:
        while True:
            wanted.acquire()
            try:
                line = input(prompt)
            except (EOFError, OSError):
                line = None
            if line and line.strip() and history_file is not None:
                remember(history_file)
            loop.call_soon_threadsafe(queue.put_nowait, line)
            if line is None:
                return

    threading.Thread(target=read, name="chat-input", daemon=True).start()
