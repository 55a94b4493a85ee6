"""Tokenizers: characters or words, one interface.

Both map text to integer ids and back, serialise to a JSON-able dict for checkpoints, and state what
happens to text the vocabulary has never seen:

- characters: unseen characters in a prompt are dropped (a character model has no <unk> to feed);
- words: unseen words become `<unk>` (id 0), which the word models were trained on, so the model
  reads "some word it does not know" there. The user's prompt is still *shown* as typed:
  `continue_text(prompt, completion)` joins the original prompt text to the completion, and the
  sampler never generates `<unk>` (trainer/sample.py), so `<unk>` never appears in any output.

`unknown(text)` lists what the policy will drop or replace, so callers can tell the user.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter

UNK = "<unk>"

# A word is letters/digits with inner apostrophes or hyphens (don't, well-known); every other
# non-space character is a token of its own; newlines are kept as tokens (paragraphs, documents).
_WORD_RE = re.compile(r"\n|\w+(?:['’\-]\w+)*|[^\w\s]")

# Detokenizer spacing rules.
_NO_SPACE_BEFORE = set(",.!?;:%)]}…") | {"'s", "n't", "'re", "'ve", "'ll", "'d", "'m"}
_NO_SPACE_AFTER = set("([{$#")
_QUOTES = {'"', "“", "”"}
_SENTENCE_END = (".", "!", "?", "…")


class CharTokenizer:
    kind = "char"
    unknown_policy = "drop"

    def __init__(self, vocab: list[str]):
        self.vocab = list(vocab)
        self.index = {ch: i for i, ch in enumerate(self.vocab)}

    @classmethod
    def build(cls, text: str) -> CharTokenizer:
        return cls(sorted(set(unicodedata.normalize("NFC", text))))

    def __len__(self) -> int:
        return len(self.vocab)

    def tokenize(self, text: str) -> list[str]:
        return list(unicodedata.normalize("NFC", text))

    def encode(self, text: str) -> list[int]:
        return [self.index[ch] for ch in self.tokenize(text) if ch in self.index]

    def unknown(self, text: str) -> list[str]:
        return sorted({ch for ch in self.tokenize(text) if ch not in self.index})

    def decode(self, ids: list[int]) -> str:
        return "".join(self.vocab[i] for i in ids)

    def continue_text(self, prompt: str, completion: str) -> str:
        return prompt + completion

    def default_prime(self) -> str:
        return "\n" if "\n" in self.index else self.vocab[0]

    def ends_sentence(self, token_id: int) -> bool:
        return self.vocab[token_id] in _SENTENCE_END

    def to_dict(self) -> dict:
        return {"kind": self.kind, "vocab": self.vocab}


class WordTokenizer:
    kind = "word"
    unknown_policy = "unk"

    def __init__(self, vocab: list[str], lowercase: bool = False):
        if not vocab or vocab[0] != UNK:
            raise ValueError(f"a word vocabulary must start with {UNK!r}")
        self.vocab = list(vocab)
        self.lowercase = lowercase
        self.index = {w: i for i, w in enumerate(self.vocab)}

    @classmethod
    def build(cls, text: str, max_vocab: int = 15_000, lowercase: bool = False) -> WordTokenizer:
        """Most frequent words first (adaptive softmax relies on that order); ties alphabetical."""
        counts = Counter(cls._split(text, lowercase))
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        return cls([UNK] + [w for w, _ in ranked if w != UNK][: max_vocab - 1], lowercase)

    @staticmethod
    def _split(text: str, lowercase: bool) -> list[str]:
        text = unicodedata.normalize("NFC", text)
        return _WORD_RE.findall(text.lower() if lowercase else text)

    def __len__(self) -> int:
        return len(self.vocab)

    def tokenize(self, text: str) -> list[str]:
        return self._split(text, self.lowercase)

    def encode(self, text: str) -> list[int]:
        return [self.index.get(w, 0) for w in self.tokenize(text)]

    def unknown(self, text: str) -> list[str]:
        return sorted({w for w in self.tokenize(text) if w not in self.index})

    def decode(self, ids: list[int]) -> str:
        return detokenize([self.vocab[i] for i in ids])

    def continue_text(self, prompt: str, completion: str) -> str:
        """The prompt as typed, then the completion, with the space between them that the detokenizer
        would put there: "this movie was" + "so bad" → "this movie was so bad", but "Hello" + ", world",
        "don" + "'t", "(" + "yes" and an open quote + "hi" are glued."""
        prompt = prompt.rstrip(" ")
        if not prompt or not completion or prompt.endswith("\n") or completion[0].isspace() \
                or completion[0] in "'’":  # an apostrophe continues the word before it (don + 't)
            return prompt + completion
        first = _WORD_RE.findall(completion)
        context = _WORD_RE.findall(prompt.rsplit("\n", 1)[-1])  # quote state resets at a newline
        if not first or not context:
            return prompt + completion
        joined = detokenize(context + first[:1])
        return prompt + (" " if joined[-len(first[0]) - 1] == " " else "") + completion

    def default_prime(self) -> str:
        return "\n" if "\n" in self.index else "."

    def ends_sentence(self, token_id: int) -> bool:
        return self.vocab[token_id] in _SENTENCE_END

    def to_dict(self) -> dict:
        return {"kind": self.kind, "vocab": self.vocab, "lowercase": self.lowercase}


def detokenize(tokens: list[str]) -> str:
    """Join word tokens with natural spacing: `Hello , world . " Yes , " he said .` →
    `Hello, world. "Yes," he said.` Straight double quotes alternate between opening and closing."""
    out: list[str] = []
    quote_open = False
    glue_next = True  # no space before the first token, after a newline or an opening bracket/quote
    for tok in tokens:
        if tok == "\n":
            while out and out[-1] == " ":
                out.pop()
            out.append("\n")
            glue_next, quote_open = True, False
            continue
        closing_quote = tok in _QUOTES and (tok == "”" or (tok == '"' and quote_open))
        if not glue_next and tok not in _NO_SPACE_BEFORE and not closing_quote:
            out.append(" ")
        out.append(tok)
        if tok in _QUOTES:
            quote_open = not closing_quote
            glue_next = not closing_quote
        else:
            glue_next = tok in _NO_SPACE_AFTER
    return "".join(out)


def tokenizer_from_dict(data: dict) -> CharTokenizer | WordTokenizer:
    if data.get("kind") == "char":
        return CharTokenizer(data["vocab"])
    if data.get("kind") == "word":
        return WordTokenizer(data["vocab"], lowercase=bool(data.get("lowercase", False)))
    raise ValueError(f"unknown tokenizer kind {data.get('kind')!r}")
