"""Uploads that mix UTF-8 with a legacy encoding: decoding never turns valid UTF-8 into mojibake. A single
legacy decoding of such a file (the detector's best guess, e.g. Mac Icelandic) garbles every UTF-8 character,
so the file is refused with an error that says so; legacy texts that form valid UTF-8 only by chance still
decode in their own encoding."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.text import CorpusError, decode_corpus

# The opening of Alice in UTF-8 with every third paragraph pasted from a cp1252 editor (its curly quotes and
# dashes single bytes): detected as a whole, it was "Mac Icelandic" and stored as "a book,‚Äô thought Alice".
MIXED = Path(__file__).resolve().parent / "fixtures" / "mixed-utf8-cp1252.txt"

RUSSIAN = ("Он вошёл в комнату. «Здравствуйте», — сказал Иван Петрович. Вечер был тихий, и Ёжик сидел у окна… "
           "СССР» и ВЁЛ. ")
UKRAINIAN = "Він сказав: «Пішли додому». Її очі сяяли, і ми йшли вздовж річки. Вітер дув із півночі. "
CHINESE = "我们在这里生活了很多年，天气很好，人们都很友好。中国的历史非常悠久，文化博大精深。\n"


def test_the_mixed_file_really_mixes_utf8_and_cp1252():
    data = MIXED.read_bytes()
    with pytest.raises(UnicodeDecodeError):
        data.decode("utf-8")
    assert "’".encode() in data and b"\x92" in data and "“".encode() in data and b"\x93" in data


def test_a_mixed_utf8_and_cp1252_file_is_refused_not_stored_as_mojibake():
    with pytest.raises(CorpusError) as info:
        decode_corpus(MIXED.read_bytes())
    err = info.value
    first_bad = MIXED.read_bytes().index(b"\x93")  # the first cp1252 paragraph opens with a quote
    assert err.code == "encoding" and "different encodings" in err.message
    assert f"byte {first_bad:,}" in err.message and "save it as UTF-8" in err.message


def test_mostly_utf8_with_a_few_cp1252_quotes_per_line_is_refused():
    line = "‘Would you tell me,’ said Alice, a little timidly, ‘why you are painting those roses?’\n"
    data = line.encode() * 40 + "“What a book,” thought Alice\n".encode("cp1252") * 40
    with pytest.raises(CorpusError, match="different encodings"):
        decode_corpus(data)


@pytest.mark.parametrize("text, encoding", [(RUSSIAN * 60, "cp1251"), (UKRAINIAN * 60, "cp1251"),
                                            (CHINESE * 60, "gb18030")], ids=["russian", "ukrainian", "chinese"])
def test_legacy_text_with_valid_utf8_by_chance_still_decodes(text, encoding):
    data = text.encode(encoding)
    # an uppercase letter before "»" or "Ё" (cp1251 0xbb, 0xa8) makes a valid UTF-8 pair by chance
    assert len(data.decode("utf-8", "ignore").encode()) - len(data.decode("ascii", "ignore")) > 40
    corpus = decode_corpus(data)
    assert corpus.text == text


def test_utf8_and_cp1252_alone_are_unchanged():
    text = MIXED.read_bytes().decode("utf-8", "replace").replace("\ufffd", "")
    assert decode_corpus(text.encode()).text.startswith("Alice was beginning")
    western = "“Quoted,” she said — café naïve, très bien. " * 20
    assert (decode_corpus(western.encode("cp1252")).text, decode_corpus(western.encode()).text) == (western, western)
