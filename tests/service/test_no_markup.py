"""service/ returns data, never Discord markup: the bot (bot/formatting.py) and the console render it.

Every string literal in service/ that is not a docstring is read (f-strings' literal parts included); mentions
(`<@…>`, `<#…>`, `<t:…>`), bold and underline (`**x**`, `__x__`) and inline code (`` `x` ``) fail the test.
Comments and docstrings may quote commands in backticks: nobody is shown them."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SERVICE = Path(__file__).resolve().parents[2] / "service"
MARKUP = {
    "a mention": re.compile(r"<[@#]|<t:"),
    "bold": re.compile(r"\*\*\S"),
    "underline": re.compile(r"(?<!\w)__\w.*?\w__(?!\w)"),  # __x__, not a dunder name like __init__
    "inline code": re.compile(r"`[^`\n]+`"),
}


def _docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def markup_in(source: str) -> list[tuple[int, str, str]]:
    """(line, kind, text) of every string literal in `source` that holds Discord markup."""
    tree = ast.parse(source)
    skip = _docstrings(tree)
    texts = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):  # an f-string: its literal parts, each {…} read as a word
            texts.append((node.lineno, "".join(v.value if isinstance(v, ast.Constant) else "x" for v in node.values)))
            skip.update(id(v) for v in node.values)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            if not (node.value.startswith("__") and node.value.endswith("__")):  # not a dunder name
                texts.append((node.lineno, node.value))
    return [(line, kind, text) for line, text in texts for kind, pattern in MARKUP.items() if pattern.search(text)]


@pytest.mark.parametrize("path", sorted(SERVICE.glob("*.py")), ids=lambda p: p.name)
def test_service_strings_carry_no_discord_markup(path):
    hits = markup_in(path.read_text(encoding="utf-8"))
    assert not hits, "\n".join(f"service/{path.name}:{line}: {kind} in {text!r}" for line, kind, text in hits)


@pytest.mark.parametrize("snippet", [
    'raise UserError(f"Only <@{user}> may")',
    'raise UserError(f"I cannot post in <#{channel}>")',
    'x = "the **Manage Server** permission"',
    'x = f"`{slug}` has no model"',
    'x = "__really__ not"',
    'x = f"ready <t:{when}:R>"',
])
def test_the_check_finds_markup(snippet):
    assert markup_in(snippet)


def test_the_check_leaves_docstrings_and_plain_text_alone():
    source = '"""`/persona retrain` in a docstring."""\ndef f():\n    """**fine** here."""\n    return "plain {name}"\n'
    assert markup_in(source) == []
