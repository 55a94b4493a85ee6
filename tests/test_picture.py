"""The probability picture: pieces from a stream (worker/probability.py, core.contracts.Piece), and the PNG the
bot draws from them (bot/pictures.py).

The rendering tests draw a known text with known probabilities and read the image back: the shade
inside a low-probability word's box must differ from a high-probability word's, picks must carry
the underline, and the file must be a small PNG."""

from __future__ import annotations

import io
import math
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from bot.pictures import (
    MAX_LINES,
    MAX_PICTURE_CHARS,
    PICK_COLOUR,
    colour_of,
    describe_sampling,
    render_picture,
    scale_floor,
)
from core.contracts import Piece, pieces_from_json, pieces_to_json
from trainer.tokenizer import CharTokenizer, WordTokenizer
from worker.probability import char_pieces, pieces_from_stream, token_pieces

REPO = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def pixels(image: Image.Image, box: tuple[int, int, int, int]) -> list[tuple[int, int, int]]:
    raw = image.crop(box).convert("RGB").tobytes()
    return [tuple(raw[i:i + 3]) for i in range(0, len(raw), 3)]


def background(image: Image.Image, box: tuple[int, int, int, int]) -> tuple[int, int, int]:
    """The most common colour inside a box: its shading (the glyphs cover far fewer pixels)."""
    return Counter(pixels(image, box)).most_common(1)[0][0]


def known_pieces() -> list[Piece]:
    words = [("The", 0.9, False), ("cat", 0.8, False), ("sat", 0.5, False), ("on", 0.95, False),
             ("the", 0.9, False), ("zyzzyva", 1e-6, True), ("mat", 0.3, False)]
    pieces = [Piece("Once", None), Piece(" ", None)]
    for text, p, picked in words:
        pieces += [Piece(text, p, picked), Piece(" ", 0.99)]
    return pieces[:-1] + [Piece(".", 0.7)]


def index_of(pieces: list[Piece], text: str) -> int:
    return next(i for i, p in enumerate(pieces) if p.text == text)


# --- rendering ---------------------------------------------------------------------------------------------

def test_known_text_renders_low_probability_words_darker_and_marks_picks():
    pieces = known_pieces()
    picture = render_picture(pieces, "trump", "temperature 1 · seed 1")
    assert picture.png.startswith(PNG_SIGNATURE)
    assert 1_000 < len(picture.png) < 100_000
    image = Image.open(io.BytesIO(picture.png))
    assert image.size == (picture.width, picture.height)
    boxes = dict(picture.boxes)
    assert {pieces[i].text for i in boxes} == {"Once", "The", "cat", "sat", "on", "the", "zyzzyva", "mat", "."}

    rare, common = boxes[index_of(pieces, "zyzzyva")], boxes[index_of(pieces, "cat")]
    rare_shade, common_shade = background(image, rare), background(image, common)
    assert rare_shade != common_shade
    assert sum(rare_shade) < sum(common_shade) - 200  # the unlikely word is much darker: it stands out
    assert sum(common_shade) > 600  # a likely word stays near white

    # Shades follow probability: 0.95 ("on") is lighter than 0.3 ("mat"), which is lighter than 1e-6.
    on, mat = background(image, boxes[index_of(pieces, "on")]), background(image, boxes[index_of(pieces, "mat")])
    assert sum(on) > sum(mat) > sum(rare_shade)

    # The pick is underlined in the pick colour along the bottom of its box; a non-pick is not.
    def has_pick_line(box):
        left, top, right, bottom = box
        strip = pixels(image, (left, bottom - 3, right, bottom))
        return sum(1 for c in strip if sum(abs(a - b) for a, b in zip(c, PICK_COLOUR)) < 40)

    assert has_pick_line(rare) > (rare[2] - rare[0])  # the whole width, several rows
    assert has_pick_line(common) == 0

    # The prompt is not shaded: white behind it.
    assert background(image, boxes[index_of(pieces, "Once")]) == (255, 255, 255)


def test_a_thousand_characters_make_a_small_png():
    text = (REPO.parent / "shared" / "corpora" / "trump" / "speeches.txt")
    source = text.read_text(encoding="utf-8")[10_000:11_000] if text.is_file() else ("lorem ipsum dolor " * 60)[:1000]
    probabilities = [0.9 if ch == " " else (0.02 if i % 7 == 0 else 0.6) for i, ch in enumerate(source)]
    pieces = char_pieces(source, probabilities, prompt="Thank you. ")
    picture = render_picture(pieces, *describe_sampling("trump", {"temperature": 0.8, "improbability": 0.01}, 7))
    assert picture.png.startswith(PNG_SIGNATURE)
    assert 5_000 < len(picture.png) < 300_000
    assert 200 < picture.height < 1_500  # wrapped into lines, not one long row
    assert all(box[2] <= picture.width - 10 for _, box in picture.boxes)  # nothing runs off the right edge


def test_long_texts_are_cut_and_a_word_wider_than_a_line_is_broken():
    long_word = Piece("x" * 300, 0.5)
    pieces = [long_word, Piece(" ", 1.0)] + [Piece("word", 0.5), Piece(" ", 1.0)] * (MAX_PICTURE_CHARS // 4)
    picture = render_picture(pieces, "t")
    assert len(picture.png) < 1_000_000
    assert sum(len(p.text) for i, p in enumerate(pieces) if i in dict(picture.boxes)) <= MAX_PICTURE_CHARS + 300
    fragments = [box for i, box in picture.boxes if i == 0]
    assert len(fragments) >= 2 and all(box[2] <= picture.width for box in fragments)


def test_colour_scale_is_monotonic_and_floored():
    floor = 1e-6
    shades = [sum(colour_of(10.0 ** -k, floor)) for k in range(0, 7)]
    assert shades == sorted(shades, reverse=True) and len(set(shades)) == len(shades)
    assert colour_of(1.0, floor) == (255, 255, 255)
    assert colour_of(1e-12, floor) == colour_of(floor, floor)
    assert scale_floor([Piece("a", 0.3), Piece(" ", 1e-20)]) == 1e-2  # spaces don't set the scale
    assert scale_floor([Piece("a", 3e-5)]) == 1e-5
    assert scale_floor([Piece("a", 1e-30)]) == 1e-8


def test_empty_and_prompt_only_texts_still_render():
    for pieces in ([], [Piece("Hello", None)]):
        picture = render_picture(pieces, "trump")
        assert picture.png.startswith(PNG_SIGNATURE)


# --- pieces ------------------------------------------------------------------------------------------------

def test_char_pieces_group_words_and_multiply_their_characters():
    text = "Hi, it's me."
    probabilities = [0.5, 0.4, 0.9, 0.8, 0.5, 0.5, 0.5, 0.5, 0.7, 0.2, 0.25, 0.6]
    pieces = char_pieces(text, probabilities)
    assert [p.text for p in pieces] == ["Hi", ",", " ", "it's", " ", "me", "."]
    assert "".join(p.text for p in pieces) == text
    assert pieces[0].probability == pytest.approx(0.5 * 0.4)
    assert pieces[3].probability == pytest.approx(0.5 ** 4)
    assert pieces[5].probability == pytest.approx(0.2 * 0.25)
    assert not any(p.picked for p in pieces)


def test_char_pieces_place_picks_on_the_words_the_drive_chose():
    # The drive chooses words that start with a letter after a non-letter and run on through letters and
    # apostrophes, in order, one pick per word.
    text = "Hi, it's me, me."
    probabilities = [0.5] * len(text)
    pieces = char_pieces(text, probabilities, picks=[("Hi", 0.01), ("me", 0.02)])
    assert [p.text for p in pieces if p.picked] == ["Hi", "me"]  # the first "me" only: matched in order, once each
    pieces = char_pieces(text, probabilities, picks=[("Hi", 0.01), ("it's", 0.01), ("me", 0.01), ("me", 0.01)])
    assert [p.text for p in pieces if p.picked] == ["Hi", "it's", "me", "me"]
    # A pick that never reached the text (cut by a stop sequence) does not hide the picks after it.
    pieces = char_pieces(text, probabilities, picks=[("Hi", 0.01), ("lost", 0.01), ("it's", 0.01), ("me", 0.01)])
    assert [p.text for p in pieces if p.picked] == ["Hi", "it's", "me"]
    cut = char_pieces("so wond", [0.5] * 7, picks=[("so", 0.1), ("wonderful", 0.01)])  # cut off by max_tokens
    assert [p.text for p in cut if p.picked] == ["so", "wond"]


def test_char_pieces_show_the_prompt_unshaded_even_mid_word():
    pieces = char_pieces("ica is", [0.5, 0.5, 0.5, 0.9, 0.1, 0.2], prompt="Make Amer")
    assert [(p.text, p.probability is None) for p in pieces] == [
        ("Make", True), (" ", True), ("Amer", True), ("ica", False), (" ", False), ("is", False)]
    assert pieces[3].probability == pytest.approx(0.125)
    with pytest.raises(ValueError, match="probabilities"):
        char_pieces("abc", [0.5])


def test_token_pieces_keep_the_detokenized_spacing():
    tokens = ["hello", ",", "world", "!", "again"]
    pieces = token_pieces(tokens, [0.5, 0.9, 0.01, 0.8, 0.3], "hello, world!", picked=5, prompt_text="so ")
    assert "".join(p.text for p in pieces) == "so hello, world!"
    assert [p.text for p in pieces if p.probability is not None] == ["hello", ",", "world", "!"]
    assert all(p.picked for p in pieces if p.probability is not None)
    assert all(p.probability is None for p in pieces if p.is_space)


def test_pieces_from_a_stream_of_either_kind():
    chars = CharTokenizer(list(" .Hadeiklno"))
    stream = SimpleNamespace(prompt="Hi", text=" like a done.", tokens=[], probabilities=[0.5] * 13,
                             picks=[("like", 0.01), ("a", 0.02), ("done", 0.03)])
    pieces = pieces_from_stream(stream, chars)
    assert "".join(p.text for p in pieces) == "Hi like a done."
    assert pieces[0] == Piece("Hi", None)
    assert [p.text for p in pieces if p.picked] == ["like", "a", "done"]
    assert "".join(p.text for p in pieces_from_stream(stream, chars, include_prompt=False)) == " like a done."

    words = WordTokenizer(["<unk>", "this", "movie", "was", "great", "."])
    ids = [words.index[w] for w in ("great", ".")]
    stream = SimpleNamespace(prompt="this movie was", text=words.decode(ids), tokens=ids, probabilities=[0.1, 0.7],
                             picks=[])
    pieces = pieces_from_stream(stream, words)
    assert "".join(p.text for p in pieces) == "this movie was great."
    assert [(p.text, p.probability) for p in pieces if p.probability is not None] == [("great", 0.1), (".", 0.7)]


def test_pieces_round_trip_through_json():
    pieces = known_pieces()
    assert pieces_from_json(pieces_to_json(pieces)) == pieces


def test_a_text_drawn_again_under_the_same_title_is_not_drawn_twice():
    from bot.pictures import _png_of

    _png_of.cache_clear()
    stored = pieces_to_json(known_pieces())
    first = _png_of(stored, "alice", "temperature 1")
    assert _png_of(stored, "alice", "temperature 1") is first  # a second member's click on the same text
    assert _png_of(stored, "alice", "temperature 0.8") != first  # another title is another picture
    assert _png_of.cache_info().hits == 1 and first == render_picture(known_pieces(), "alice", "temperature 1").png


def test_describe_sampling_names_what_is_not_default():
    title, subtitle = describe_sampling("trump:0.7+shakespeare:0.3", {"temperature": 0.8, "top_k": 40, "top_p": 1.0,
                                                                    "improbability": 0.01, "tolerance": 0.0}, 42)
    assert title == "trump:0.7+shakespeare:0.3"
    assert subtitle == "temperature 0.8 · top-k 40 · improbability 0.01 (band ×2) · seed 42"
    assert describe_sampling("x", {"temperature": 0})[1] == "greedy"


def test_the_drawing_does_not_import_torch_and_the_pieces_do_not_import_pillow():
    code = ("import sys, bot.pictures; assert 'torch' not in sys.modules and 'matplotlib' not in sys.modules; "
            "assert 'worker.probability' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=120)
    code = "import sys, worker.probability; assert 'PIL' not in sys.modules and 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=120)


@pytest.mark.slow
@pytest.mark.usefixtures("single_thread")
def test_a_real_generation_with_the_drive_renders():
    """A bundled char checkpoint, the improbability drive on: every pick lands on a word of the text."""
    torch = pytest.importorskip("torch")
    from core.contracts import SamplingParams
    from trainer.checkpoint import load
    from trainer.sample import generate

    torch.manual_seed(0)
    checkpoint = load(REPO / "db" / "bundled" / "shakespeare.safetensors")
    params = SamplingParams(max_tokens=60, improbability=0.01, seed=3)
    stream = generate(checkpoint.model, checkpoint.tokenizer, ["ROMEO:"], params)[0]
    pieces = pieces_from_stream(stream, checkpoint.tokenizer)
    assert "".join(p.text for p in pieces) == "ROMEO:" + stream.text
    picked = [p for p in pieces if p.picked]
    assert len(stream.picks) > 0 and len(picked) >= len(stream.picks) - 1  # the last may be cut by max_tokens
    # A word's probability is the product of its characters' (the drive's P(word) is conditioned differently).
    written = [p for p in pieces if p.probability is not None]
    assert sum(math.log(p.probability) for p in written) == pytest.approx(
        sum(math.log(p) for p in stream.probabilities[:len(stream.text)]), rel=1e-6)
    picture = render_picture(pieces, *describe_sampling("shakespeare", params.model_dump(mode="json"), stream.seed))
    assert picture.png.startswith(PNG_SIGNATURE) and len(picture.png) < 300_000


def test_runs_of_blank_lines_are_drawn_as_one():
    def height(text: str) -> int:
        return render_picture(char_pieces(text, [0.5] * len(text)), "t").height

    assert height("one\n\n\n\n\ntwo") == height("one\n\ntwo") > height("one\ntwo") > height("one two")


def test_a_word_of_3500_characters_is_drawn_across_lines():
    """One huge word (a model stuck on one letter): broken where each line ends, every character drawn once,
    nothing past the right edge, in order, line after line."""
    word = ("abcdefghij" * 350)[:3500]
    pieces = [Piece("Once", None), Piece(" ", None), Piece(word, 1e-3, True), Piece(" ", 0.9), Piece("end", 0.5)]
    picture = render_picture(pieces, "stuck", "temperature 2")
    assert picture.png.startswith(PNG_SIGNATURE)
    image = Image.open(io.BytesIO(picture.png))
    assert image.size == (picture.width, picture.height)
    fragments = [box for i, box in picture.boxes if i == 2]
    assert 25 <= len(fragments) <= 60  # about 40 lines of 1,000 px
    assert all(box[2] <= picture.width - 10 for _, box in picture.boxes)
    tops = [box[1] for box in fragments]
    assert tops == sorted(tops) and len(set(tops)) == len(tops)  # one fragment a line, downwards
    assert sum(box[2] - box[0] for box in fragments[1:-1]) > 0.9 * (len(fragments) - 2) * (picture.width - 48)
    end = dict(picture.boxes)[4]
    assert end[1] >= tops[-1]  # "end" follows the word
    assert sum(background(image, fragments[len(fragments) // 2])) < 600  # shaded as an unlikely word


def test_the_layout_places_every_character_of_a_long_word_once():
    from bot.pictures import _font, _layout

    word = "x" * 3500
    placements, _ = _layout([Piece(word, 0.5)], _font(20), 24, 976, 0)
    assert "".join(text for _, text, _, _, _ in placements) == word
    assert all(x + w <= 976 + 1 for _, _, x, _, w in placements)


def test_the_picture_stops_at_max_lines():
    pieces = char_pieces("a\n" * 1500, [0.5] * 3000)
    picture = render_picture(pieces, "lines")
    assert picture.height < (MAX_LINES + 10) * 30 + 200
    assert len(picture.boxes) <= MAX_LINES
