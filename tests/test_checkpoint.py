"""Checkpoint format (trainer/checkpoint.py): safetensors + JSON metadata, never pickle; exact round trips;
every kind of bad file is a CheckpointError that says what is wrong."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import random
from pathlib import Path
from unittest import mock

import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from core.checkpoints import FORMAT, FORMAT_VERSION, CheckpointError, read_meta
from trainer import checkpoint as ckpt
from trainer.model import ModelConfig, build_model
from trainer.tokenizer import CharTokenizer, WordTokenizer
from trainer.train import TrainConfig, train

pytestmark = pytest.mark.usefixtures("single_thread")

META = {"corpus_sha256": "ab" * 32, "metrics": {"val_loss": 1.5, "val_bpc": 2.16}, "step": 7}


def char_model(hidden: int = 32, seed: int = 0):
    tok = CharTokenizer.build("The quick brown fox jumps over the lazy dog.\n")
    torch.manual_seed(seed)
    model = build_model(
        ModelConfig(
            family="char-rnn", vocab_size=len(tok), cell="lstm", n_layers=2, n_embd=16, n_hidden=hidden
        )
    ).eval()
    return model, tok


def word_mlp_model():
    tok = WordTokenizer.build("the cat sat on the mat . the dog ran !", lowercase=True)
    torch.manual_seed(1)
    model = build_model(
        ModelConfig(
            family="word-mlp",
            vocab_size=len(tok),
            n_embd=8,
            n_hidden=16,
            context=3,
            head="adaptive",
            adaptive_cutoffs=[4],
        )
    )
    model.train()
    with torch.no_grad():  # non-trivial batchnorm running statistics
        model(torch.randint(0, len(tok), (4, 10)))
    return model.eval(), tok


def logits_of(model, n_tokens: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, model.config.vocab_size, (2, 12), generator=g)
    with torch.no_grad():
        state = model.init_state(2)
        out = []
        for t in range(idx.size(1)):
            logits, state = model.step(idx[:, t], state)
            out.append(logits)
    return torch.stack(out, 1)


def header_of(data: bytes) -> dict:
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + n])


@pytest.fixture
def saved(tmp_path) -> tuple[Path, object, object]:
    model, tok = char_model()
    path = ckpt.save(tmp_path / "model.safetensors", model, tok, META)
    return path, model, tok


# -----------------------------------------------------------------------------
# round trips


@pytest.mark.parametrize("make", [char_model, word_mlp_model], ids=["char-lstm", "word-mlp-adaptive"])
def test_round_trip_gives_identical_logits_and_tokenizer(tmp_path, make):
    model, tok = make()
    path = ckpt.save(tmp_path / "m.safetensors", model, tok, META)
    loaded = ckpt.load(path)
    assert loaded.family == model.config.family
    assert loaded.model.config == model.config
    assert not loaded.model.training
    assert loaded.tokenizer.to_dict() == tok.to_dict()
    assert torch.equal(logits_of(loaded.model, len(tok)), logits_of(model, len(tok)))
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], value), name


def test_metadata_fields_are_present(saved):
    path, model, tok = saved
    meta = ckpt.load(path).meta
    assert meta["format"] == FORMAT and meta["format_version"] == FORMAT_VERSION
    assert meta["model"]["family"] == "char-rnn" and meta["model"] == model.config.to_dict()
    assert meta["tokenizer"] == {"kind": "char", "vocab": tok.vocab}
    assert meta["corpus_sha256"] == META["corpus_sha256"]
    assert meta["metrics"] == META["metrics"] and meta["step"] == 7
    assert meta["torch_version"] == torch.__version__
    assert meta["package_version"] and isinstance(meta["package_version"], str)
    assert len(meta["tensors_sha256"]) == 64
    assert read_meta(path) == meta


def test_file_is_safetensors_not_pickle(saved):
    """The whole file is a safetensors layout: an 8-byte little-endian header length, a JSON header,
    then raw tensor bytes exactly covered by the header's offsets. No room for a pickle anywhere."""
    path, model, _ = saved
    data = path.read_bytes()
    assert not data.startswith(b"PK")  # not a torch.save zip archive
    n = int.from_bytes(data[:8], "little")
    assert 8 + n <= len(data) and data[8:9] == b"{"
    header = header_of(data)  # valid JSON
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    assert set(tensors) == {f"model.{k}" for k in model.state_dict()}
    spans = sorted(tuple(v["data_offsets"]) for v in tensors.values())
    assert spans[0][0] == 0 and all(a[1] == b[0] for a, b in itertools.pairwise(spans))
    assert 8 + n + spans[-1][1] == len(data)  # the tensors end exactly at the end of the file
    assert b"torch._utils" not in data and b"collections\nOrderedDict" not in data  # torch.save pickle names
    assert header["model.head.proj.weight"]["dtype"] == "F32"
    assert json.loads(header["__metadata__"]["improbable"])["format"] == FORMAT
    # and it is readable by the plain safetensors loader
    assert set(st_load(data)) == set(tensors)


def test_save_is_atomic_and_leaves_no_temporary_files(tmp_path):
    model, tok = char_model()
    target = tmp_path / "deep" / "dir" / "best.safetensors"
    ckpt.save(target, model, tok, META)
    ckpt.save(target, model, tok, {**META, "step": 8})  # overwrite in place
    assert sorted(os.listdir(target.parent)) == ["best.safetensors"]
    assert read_meta(target)["step"] == 8


def test_extra_tensors_are_stored_and_returned(tmp_path):
    model, tok = char_model()
    extra = {"optim.0.exp_avg": torch.randn(3, 4), "state.rng": torch.get_rng_state()}
    loaded = ckpt.load(ckpt.save(tmp_path / "last.safetensors", model, tok, META, extra))
    assert torch.equal(loaded.tensors["optim.0.exp_avg"], extra["optim.0.exp_avg"])
    assert torch.equal(loaded.tensors["state.rng"], extra["state.rng"])


def test_half_precision_file_loads_as_float32_with_close_logits(tmp_path):
    model, tok = char_model()
    full = ckpt.save(tmp_path / "full.safetensors", model, tok, META)
    half = ckpt.save(tmp_path / "half.safetensors", model, tok, META, half=True)
    header = header_of(half.read_bytes())
    assert {v["dtype"] for k, v in header.items() if k != "__metadata__"} == {"F16"}
    assert half.stat().st_size < 0.6 * full.stat().st_size
    loaded = ckpt.load(half)
    assert all(p.dtype == torch.float32 for p in loaded.model.parameters())
    reference = logits_of(model, len(tok))
    got = logits_of(loaded.model, len(tok))
    assert not torch.equal(got, reference)  # really rounded
    torch.testing.assert_close(got, reference, atol=2e-2, rtol=1e-2)
    assert torch.equal(got.argmax(-1), reference.argmax(-1))


def test_bfloat16_serving_keeps_the_distribution_and_the_prefill(saved):
    path, model, tok = saved
    served = ckpt.load(path, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in served.model.parameters())
    assert served.model.init_state(3)[0].dtype == torch.bfloat16
    reference = torch.softmax(logits_of(model, len(tok)), -1)
    got = torch.softmax(logits_of(served.model, len(tok)).float(), -1)
    assert (got - reference).abs().max() < 0.02  # bf16 keeps ~3 significant digits
    from core.contracts import SamplingParams
    from trainer.sample import generate

    text = generate(served.model, served.tokenizer, ["abc abc"], SamplingParams(max_tokens=30, seed=3))[0].text
    assert len(text) == 30


def test_from_bytes_equals_load(saved):
    path, model, tok = saved
    loaded = ckpt.from_bytes(path.read_bytes(), "in-memory")
    assert torch.equal(logits_of(loaded.model, len(tok)), logits_of(model, len(tok)))


def test_without_model_reads_the_header_and_tokenizer_only(saved):
    """What a worker keeps when its engine runs in a process of its own: no model, no tensor."""
    path, _, tok = saved
    data = path.read_bytes()
    header = ckpt.without_model(data, "in-memory")
    assert header.model is None and header.tensors == {} and header.meta == ckpt.from_bytes(data).meta
    assert header.tokenizer.vocab == tok.vocab
    with pytest.raises(CheckpointError, match="not an Improbable checkpoint"):
        ckpt.without_model((100).to_bytes(8, "little") + random.Random(3).randbytes(300), "forged")


# -----------------------------------------------------------------------------
# bad files: each a CheckpointError with a specific message


def expect_error(path: Path, pattern: str) -> CheckpointError:
    with pytest.raises(CheckpointError, match=pattern) as info:
        ckpt.load(path)
    assert str(path) in str(info.value)  # says which file
    return info.value


def test_missing_file(tmp_path):
    expect_error(tmp_path / "nope.safetensors", "no such checkpoint file")
    expect_error(tmp_path, "no such checkpoint file")  # a directory is not a checkpoint


def test_empty_file(tmp_path):
    path = tmp_path / "empty.safetensors"
    path.write_bytes(b"")
    expect_error(path, r"not a checkpoint \(only 0 bytes\)")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_bytes(tmp_path, seed):
    path = tmp_path / "noise.safetensors"
    path.write_bytes(random.Random(seed).randbytes(4096))
    expect_error(path, "truncated or not a safetensors file|not an Improbable checkpoint")


def test_random_bytes_with_a_plausible_length_prefix(tmp_path):
    path = tmp_path / "noise.safetensors"
    path.write_bytes((100).to_bytes(8, "little") + random.Random(3).randbytes(300))
    expect_error(path, "not an Improbable checkpoint")


def test_text_file(tmp_path):
    path = tmp_path / "notes.safetensors"
    path.write_text("these are not the weights you are looking for\n" * 10)
    expect_error(path, "truncated or not a safetensors file")


@pytest.mark.parametrize("fraction", [0.5, 0.9, 0.999])
def test_truncated_file(saved, fraction):
    path, _, _ = saved
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    expect_error(path, "truncated|corrupt tensor data")


def test_truncated_inside_the_header(saved):
    path, _, _ = saved
    path.write_bytes(path.read_bytes()[:100])
    expect_error(path, "truncated or not a safetensors file")


@pytest.mark.parametrize("where", [0.1, 0.5, 0.99])
def test_one_flipped_byte_in_the_tensor_data_fails_the_checksum(saved, where):
    path, _, _ = saved
    data = bytearray(path.read_bytes())
    start = 8 + int.from_bytes(data[:8], "little")
    at = start + int((len(data) - start) * where)
    data[at] ^= 0x01
    path.write_bytes(bytes(data))
    expect_error(path, r"corrupt \(tensor checksum mismatch\)")


def test_one_flipped_byte_in_the_metadata_is_caught(saved):
    """The module promises a flipped byte *anywhere* is caught. A flip inside the tokenizer vocabulary
    keeps the JSON valid and the tensors intact, but silently changes what every id decodes to."""
    path, _, tok = saved
    data = bytearray(path.read_bytes())
    n = int.from_bytes(data[:8], "little")
    header = bytes(data[8 : 8 + n])
    vocab_at = header.index(b'\\"vocab\\": [')
    quote = header.index(
        b'\\"q\\"', vocab_at
    )  # the vocabulary entry "q" (an escaped JSON string inside JSON)
    data[8 + quote + 2] = ord("Q")  # "q" -> "Q": same length, still valid JSON, a different vocabulary
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError):
        loaded = ckpt.load(path)
        assert loaded.tokenizer.vocab == tok.vocab, (
            "the flipped byte went unnoticed and changed the vocabulary"
        )


def test_flipped_byte_in_the_tensor_offsets(saved):
    path, _, _ = saved
    data = bytearray(path.read_bytes())
    header = header_of(bytes(data))
    name = "model.head.proj.bias"
    begin, end = header[name]["data_offsets"]
    old = f'"data_offsets":[{begin},{end}]'.encode()
    at = bytes(data).find(old)
    assert at > 0
    new = f'"data_offsets":[{begin},{end + 1}]'.encode()
    if len(new) != len(old):  # keep the header length: pad is not possible inside the list, so pick another
        pytest.skip("offset digit count changed")
    data[at : at + len(old)] = new
    path.write_bytes(bytes(data))
    expect_error(path, "corrupt tensor data")


def save_misdescribed(tmp_path: Path, tokenizer=None, meta: dict | None = None, **config_changes) -> Path:
    """A checkpoint written by the normal save path (so every checksum is valid) whose metadata
    describes another model than its tensors: the config is changed after the weights were built."""
    model, tok = char_model()
    model.config = dataclasses.replace(model.config, **config_changes)
    with mock.patch.object(ckpt, "validate_header"):  # save refuses to write such a file; a forger's writer would not
        return ckpt.save(tmp_path / "misdescribed.safetensors", model, tokenizer or tok, {**META, **(meta or {})})


def test_safetensors_file_without_our_metadata(tmp_path):
    path = tmp_path / "plain.safetensors"
    path.write_bytes(st_save({"weight": torch.randn(4, 4)}))
    expect_error(path, r"not an Improbable checkpoint \(no readable metadata")
    path.write_bytes(st_save({"weight": torch.randn(4, 4)}, metadata={"format": "pt"}))
    expect_error(path, r"not an Improbable checkpoint \(no readable metadata")


def test_safetensors_file_with_foreign_metadata_json(tmp_path):
    path = tmp_path / "foreign.safetensors"
    path.write_bytes(st_save({"w": torch.zeros(2)}, metadata={"improbable": json.dumps({"format": "other"})}))
    expect_error(path, r"not an Improbable checkpoint \(format 'other'\)")


@pytest.mark.parametrize("payload", ["42", "[1, 2]"])
def test_metadata_json_that_is_not_an_object(tmp_path, payload):
    path = tmp_path / "odd.safetensors"
    path.write_bytes(st_save({"w": torch.zeros(2)}, metadata={"improbable": payload}))
    expect_error(path, "not an Improbable checkpoint")


def test_newer_format_version_asks_for_an_upgrade(tmp_path):
    path = save_misdescribed(tmp_path, meta={"format_version": FORMAT_VERSION + 1})
    expect_error(path, "newer version.*upgrade")


def test_metadata_describing_a_different_shape(tmp_path):
    path = save_misdescribed(tmp_path, n_hidden=48)
    err = expect_error(path, "weights do not match the model its metadata describes")
    assert "size mismatch" in str(err)


def test_metadata_describing_a_different_architecture(tmp_path):
    path = save_misdescribed(tmp_path, cell="gru")
    expect_error(path, "weights do not match the model its metadata describes")


def test_metadata_describing_fewer_layers(tmp_path):
    path = save_misdescribed(tmp_path, n_layers=1)  # the second layer's tensors are unexpected
    expect_error(path, "weights do not match the model its metadata describes")


def test_metadata_with_an_unknown_family(tmp_path):
    path = save_misdescribed(tmp_path, family="transformer")
    expect_error(path, r"invalid model metadata \(unknown model family 'transformer'")


def test_tokenizer_size_that_does_not_match_the_model(tmp_path):
    _, tok = char_model()
    path = save_misdescribed(tmp_path, tokenizer=CharTokenizer(tok.vocab[:-1]))
    expect_error(path, f"tokenizer has {len(tok) - 1} tokens, model expects {len(tok)}")


# -----------------------------------------------------------------------------
# read_meta: the CLI's `info` and the worker's cache read it without loading weights


def test_read_meta_reads_only_the_header(saved):
    path, _, _ = saved
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    path.write_bytes(data[: 8 + n] + b"\xff" * (len(data) - 8 - n))  # tensor data all NaN: never read
    assert read_meta(path)["step"] == 7
    expect_error(path, r"corrupt \(tensor checksum mismatch\)")


def test_read_meta_refuses_a_truncated_file(saved):
    """`improbable info` prints read_meta's metadata: it must not vouch for a file whose tensors are cut off."""
    path, _, _ = saved
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    for size in (8 + n, len(data) - 1):
        path.write_bytes(data[:size])
        with pytest.raises(CheckpointError, match=r"truncated \(the header describes [\d,]+ bytes of tensor data"):
            read_meta(path)


@pytest.mark.parametrize("case", ["missing", "directory", "empty", "random"])
def test_read_meta_bad_files_raise_checkpoint_error(tmp_path, case):
    path = tmp_path / "x.safetensors"
    if case == "directory":
        path.mkdir()
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "random":
        path.write_bytes(random.Random(0).randbytes(1000))
    with pytest.raises(CheckpointError, match=str(path)):
        read_meta(path)


# -----------------------------------------------------------------------------
# checkpoints written by training


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, alice_text, single_thread):
    out = tmp_path_factory.mktemp("run")
    config = TrainConfig(
        corpus="alice-head",
        out_dir=str(out),
        n_layers=1,
        n_embd=16,
        n_hidden=32,
        batch_size=8,
        seq_len=32,
        max_steps=12,
        eval_interval=6,
        warmup_steps=2,
    )
    result = train(config, alice_text[:8_000])
    return out, result, config


def test_training_checkpoints_carry_the_full_metadata(trained_run, alice_text):
    import hashlib

    out, result, _config = trained_run
    best, last = ckpt.load(out / "best.safetensors"), ckpt.load(out / "last.safetensors")
    sha = hashlib.sha256(alice_text[:8_000].encode()).hexdigest()
    for loaded in (best, last):
        meta = loaded.meta
        assert meta["corpus_sha256"] == sha
        assert meta["model"]["family"] == "char-rnn" and meta["model"]["n_hidden"] == 32
        assert (
            meta["tokenizer"]["kind"] == "char"
            and len(meta["tokenizer"]["vocab"]) == meta["model"]["vocab_size"]
        )
        assert meta["train_config"]["max_steps"] == 12 and meta["corpus"] == "alice-head"
        assert meta["torch_version"] == torch.__version__ and meta["package_version"]
        assert meta["n_params"] == loaded.model.n_params
    assert best.meta["metrics"]["val_loss"] == pytest.approx(result.best_val_loss)
    assert {"val_loss", "val_ppl", "val_bpc"} <= set(best.meta["metrics"])
    assert best.meta["step"] in (6, 12)
    assert last.meta["run"]["step"] == 12
    # `last` carries what resuming needs; `best` only the weights
    assert any(k.startswith("optim.") for k in last.tensors) and "state.rng" in last.tensors
    assert not any(k.startswith(("optim.", "state.")) for k in best.tensors)
