"""Message text: escaping generated text, the 2,000-character limit, progress bars and timestamps.

Pure functions (no discord.py objects), shared by the Discord bot and the console chat.

Generated text is untrusted: it may contain markdown that would swallow the rest of the message
(``` fences, ||spoilers||, headers) and mentions (@everyone, <@&role>). `escape` (core.markdown, shared with
the worker's scheduled posts) neutralises both, and every send also carries AllowedMentions.none(), so even
text that slips through can never ping anybody.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from core.contracts import RunProgress
from core.markdown import ELLIPSIS, cut_point, escape, truncate
from service.errors import ChannelRef, Code, Strong, UserError, UserRef

MESSAGE_LIMIT = 2000


def split_message(text: str, limit: int = MESSAGE_LIMIT) -> list[str]:
    """Chunks of at most `limit` characters, cut at sentence ends where possible (then spaces)."""
    chunks: list[str] = []
    rest = text
    while len(rest) > limit:
        cut = cut_point(rest, limit)
        chunk = rest[:cut].rstrip()
        chunks.append(chunk if chunk else rest[:cut])
        rest = rest[cut:].lstrip("\n ")
    if rest or not chunks:
        chunks.append(rest)
    return chunks


@dataclass(frozen=True)
class Rendered:
    """One message: content that fits, and the full text as a .txt attachment when it did not."""

    content: str
    file: tuple[str, bytes] | None = None


def fit(header: str, body: str, *, full_text: str | None = None, filename: str = "generated.txt",
        limit: int = MESSAGE_LIMIT) -> Rendered:
    """`header` + `body` in one message; when too long, the body is cut at a sentence boundary and the full
    (unescaped) text is attached as a .txt file."""
    content = f"{header}\n{body}" if header else body
    if len(content) <= limit:
        return Rendered(content)
    note = "\n*(cut here: the whole text is attached)*"
    room = limit - len(header) - 1 - len(note) if header else limit - len(note)
    shown = truncate(body, max(room, 1))
    attached = (full_text if full_text is not None else body).encode("utf-8")
    return Rendered(f"{header}\n{shown}{note}" if header else f"{shown}{note}", (filename, attached))


# -- generated text ----------------------------------------------------------------------------------------

def describe_params(params: dict) -> str:
    """The sampling settings worth showing, e.g. 'temperature 0.8 · improbability 0.05 · seed 7'."""
    parts = []
    if params.get("improbability"):
        parts.append(f"improbability {params['improbability']:g}")
    elif params.get("temperature") is not None:
        parts.append(f"temperature {params['temperature']:g}")
    if params.get("top_k"):
        parts.append(f"top-k {params['top_k']}")
    if params.get("top_p") not in (None, 1, 1.0):
        parts.append(f"top-p {params['top_p']:g}")
    if params.get("seed") is not None:
        parts.append(f"seed {params['seed']}")
    return " · ".join(parts)


def separator(prompt: str, completion: str, joined: str | None) -> str:
    """The whitespace to show between the (stripped, bold) prompt and the completion. From `joined`, the two
    as the model's tokenizer joins them ("this movie was" + "so bad" → "this movie was so bad"; a char
    model's completion carries its own spaces), when `joined` is that join; else a space unless the
    completion starts with a space or punctuation."""
    if not prompt.strip() or not completion:
        return ""
    head = joined[:len(joined) - len(completion)] if joined is not None and joined.endswith(completion) else None
    if head is not None and head.rstrip() and head.strip() == prompt.strip():
        return head[len(head.rstrip()):]
    return "" if completion[0] in " \n,.!?;:" else " "


SHOWN_PROMPT_CHARS = 120  # a longer prompt (a continued text's: its whole text so far) shows only its tail
_BLANK_RUN = re.compile(r"\n[ \t\r]*(?:\n[ \t\r]*){2,}")
CURSOR = " ▌"


def prompt_tail(prompt: str, limit: int = SHOWN_PROMPT_CHARS) -> str:
    """The prompt as shown in bold: whole when short, else '…' and its last `limit` characters (from a word's
    start where one is near)."""
    if len(prompt) <= limit + len(ELLIPSIS):
        return prompt
    tail = prompt[-limit:]
    space = tail.find(" ")
    if 0 <= space < limit // 3:
        tail = tail[space + 1:]
    return ELLIPSIS + tail.lstrip()


def collapse_blank_lines(text: str) -> str:
    """At most one blank line in a row (a low improbability target can pick line break after line break)."""
    return _BLANK_RUN.sub("\n\n", text)


def render_generation(persona: str, prompt: str, completion: str, params: dict, *, partial: bool = False,
                      note: str = "", limit: int = MESSAGE_LIMIT, joined: str | None = None) -> Rendered:
    """A result message: '**persona** · settings', then the prompt in bold (its tail when long) and the
    completion, escaped, without runs of blank lines. `joined`: prompt and completion as the persona's
    tokenizer joins them (the worker's full_text), which decides the space between them; markdown needs it
    outside the bold ("**was** so", never "**was**so"). A `partial` text past the limit is a preview cut to
    fit, with no attachment: the whole text is attached once, to the result."""
    header = f"**{escape(persona)}** · {describe_params(params)}" if params else f"**{escape(persona)}**"
    for line in note.splitlines():
        header += f"\n-# {escape(line)}"
    shown_prompt = f"**{escape(prompt_tail(prompt.strip()))}**" if prompt.strip() else ""
    sep = separator(prompt, completion, joined)
    body = f"{shown_prompt}{sep}{escape(completion)}" if completion else (shown_prompt or "")
    body = collapse_blank_lines(body)
    if partial:
        return _preview(header, body, len(prompt.strip()) + len(sep) + len(completion), limit)
    if not body.strip():
        body = "*(the model produced no text; try another prompt or seed)*"
    full = f"{prompt.strip()}{sep}{completion}" if prompt.strip() else completion
    return fit(header, body, full_text=full, limit=limit)


def _preview(header: str, body: str, length: int, limit: int) -> Rendered:
    """A text still being written: whole when it fits, else its start and how long it is so far (no file:
    uploading it at every edit would stall the stream)."""
    content = f"{header}\n{body}{CURSOR}"
    if len(content) <= limit:
        return Rendered(content)
    note = f"\n*({length:,} characters so far; the whole text comes as a file when it is done)*{CURSOR}"
    return Rendered(f"{header}\n{truncate(body, max(limit - len(header) - 1 - len(note), 1))}{note}")


# -- progress ----------------------------------------------------------------------------------------------

def progress_bar(fraction: float | None, width: int = 20) -> str:
    """'█████░░░░░ 50%' (a text bar that renders the same everywhere)."""
    f = 0.0 if fraction is None or not math.isfinite(fraction) else min(max(fraction, 0.0), 1.0)
    full = int(round(f * width))
    return f"`{'█' * full}{'░' * (width - full)}` {f:.0%}"


def relative_time(epoch_seconds: float) -> str:
    """A Discord timestamp that each reader's client shows as 'in 5 minutes'."""
    return f"<t:{int(epoch_seconds)}:R>"


def _num(value, fmt: str = ".3f") -> str | None:
    return format(value, fmt) if isinstance(value, int | float) and math.isfinite(value) else None


def training_progress(name: str, status: str, progress: RunProgress | dict, *, now: float,
                      queue_position: int | None = None, error: str | None = None, eta: bool = True) -> str:
    """The live progress message of a training run: bar, step, loss, ETA as a relative timestamp (left out
    with `eta=False`: the bot compares the rest to decide whether an edit is worth it)."""
    p = progress if isinstance(progress, RunProgress) else RunProgress.model_validate(progress)
    title = f"**Training `{name}`**"
    if status == "queued":
        where = f"position {queue_position} in the queue" if queue_position else "queued"
        return f"{title} · waiting ({where})\n{progress_bar(0)}"
    lines = [f"{title} · {status}"]
    lines.append(progress_bar(p.fraction))
    facts = []
    if p.step is not None:
        facts.append(f"step {p.step}" + (f"/{p.total}" if p.total else ""))
    if (loss := _num(p.loss)) is not None:
        facts.append(f"loss {loss}")
    if (val := _num(p.val_loss)) is not None:
        facts.append(f"validation {val}")
    if (tps := _num(p.tokens_per_s, ",.0f")) is not None:
        facts.append(f"{tps} tokens/s")
    if eta and status == "running" and p.eta is not None:
        facts.append(f"done {relative_time(now + p.eta)}")
    if facts:
        lines.append(" · ".join(facts))
    if error:
        lines.append(f"Error: {escape(truncate(error, 1500))}")
    return "\n".join(lines)


def progress_line(status: str, progress: RunProgress, queue_position: int | None = None) -> str:
    """A run's progress on one plain line (the console): bar, step, losses, seconds left."""
    if status == "queued":
        return f"queued (position {queue_position})"
    f = progress.done_fraction() or 0.0
    bar = "█" * int(f * 20) + "░" * (20 - int(f * 20))
    parts = [f"{bar} {f:.0%}"]
    if progress.step is not None:
        parts.append(f"step {progress.step}" + (f"/{progress.total}" if progress.total else ""))
    if progress.loss is not None:
        parts.append(f"loss {progress.loss:.3f}")
    if progress.val_loss is not None:
        parts.append(f"val {progress.val_loss:.3f}")
    if progress.eta is not None:
        parts.append(f"{progress.eta:.0f} s left")
    return " · ".join(parts)


# -- the service's refusals and reports, as Discord text ------------------------------------------------------

def code(text: str) -> str:
    """`text` as inline code (doubled backticks around text that holds one)."""
    text = str(text)
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def discord_value(value: Any) -> str:
    """A field of a service message (service.errors) as Discord shows it."""
    if isinstance(value, Code):
        return code(value)
    if isinstance(value, Strong):
        return f"**{escape(value)}**"
    if isinstance(value, UserRef):
        return f"<@{int(value)}>"
    if isinstance(value, ChannelRef):
        return f"<#{int(value)}>"
    if isinstance(value, datetime):
        return relative_time(value.timestamp())
    return str(value)


def user_error(error: UserError) -> str:
    """A refusal from the service (service.errors), with code, mentions and timestamps."""
    return error.render(discord_value)


def describe_every(interval_seconds: int | None, cron: str | None, *, markup: bool = True) -> str:
    """How often a schedule posts: 'every 2h', or 'cron `0 9 * * *` (UTC)'."""
    if cron:
        return f"cron {code(cron) if markup else cron} (UTC)"
    s = interval_seconds or 0
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if s and s % n == 0:
            return f"every {s // n}{unit}"
    return f"every {s}s"


def _p(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def generation_info(info) -> str:
    """The Info button's reply: how one text was made (service.controls.GenerationInfo)."""
    lines = [f"**{escape(info.display_name)}** ({code(info.slug)}), checkpoint {info.checkpoint_id or 'n/a'}",
             "Sampling: " + ", ".join(f"{k} {code(v)}" for k, v in info.params),
             f"Seed {code(info.seed)} · tokens {info.tokens if info.tokens is not None else 'n/a'} · "
             f"latency {info.latency_ms if info.latency_ms is not None else 'n/a'} ms",
             f"Token probability: mean {_p(info.mean_probability)}, minimum {_p(info.min_probability)}"]
    if info.target:
        if info.picks:
            listed = ", ".join(f"{code(w.strip() or repr(w))} {p:.3g}" for w, p in info.picks)
            more = f" (+{info.more_picks} more)" if info.more_picks else ""
            lines.append(f"Improbability target {info.target:g}, realised: {listed}{more}")
        else:
            lines.append(f"Improbability target {info.target:g}: no picks recorded for this text")
    if info.deleted:
        lines.append("(deleted)")
    return "\n".join(lines)
