"""The console chat's terminal: line editing with a history file, and persona descriptions as plain text.

The service's messages are data the console renders itself (service.errors: `UserError.message` is already
plain). What still arrives in Discord markdown is text people wrote for Discord, a persona's description
(`/persona retrain x`, **bold**): `plain_text` shows it as a terminal reader expects. Generated text is not
passed through it: it is shown exactly as the model wrote it.
"""

from __future__ import annotations

import re
from pathlib import Path

HISTORY_LINES = 1000

_CODE = re.compile(r"(?<!\\)```(?:[\w+-]*\n)?(.*?)```|(?<!\\)`([^`\n]*[^`\n\\])`", re.DOTALL)  # not \`
_STYLES = [  # outermost first: ***x*** before **x** before *x*
    re.compile(r"\*\*\*(?=\S)(.+?)(?<=\S)\*\*\*", re.DOTALL),
    re.compile(r"\*\*(?=\S)(.+?)(?<=\S)\*\*", re.DOTALL),
    re.compile(r"__(?=\S)(.+?)(?<=\S)__", re.DOTALL),
    re.compile(r"(?<![\w*\\])\*(?=\S)(.+?)(?<=[^\s\\])\*(?![\w*])", re.DOTALL),
    re.compile(r"(?<![\w\\])_(?=\S)(.+?)(?<=[^\s\\])_(?!\w)", re.DOTALL),
]
_ESCAPED = re.compile(r"\\([\\*_`~|>#\-<@.\[\]()])")


def plain_text(markdown: str) -> str:
    """Text written in Discord markdown as a terminal shows it: styles stripped, code shown verbatim."""
    code: list[str] = []

    def hold(match: re.Match) -> str:  # code is verbatim: set it aside while styles are stripped around it
        code.append(match.group(1) if match.group(1) is not None else match.group(2))
        return f"\ue000{len(code) - 1}\ue001"

    text = _CODE.sub(hold, markdown)
    for style in _STYLES:
        previous = None
        while previous != text:  # nested styles (**bold _and italic_**) unwrap one level per pass
            previous, text = text, style.sub(r"\1", text)
    text = _ESCAPED.sub(r"\1", text)
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
