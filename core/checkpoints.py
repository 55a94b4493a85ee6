"""The torch-free half of the checkpoint format: the one reader of a checkpoint's header, shared by the
trainer (trainer/checkpoint.py adds the tensors), the CLI's `info`, the service and db/'s bundled checkpoints,
so every layer refuses the same files for the same reasons.

A checkpoint is one safetensors file whose header carries JSON metadata under `__metadata__.improbable`. It is
untrusted input (users upload and share them), so `validate_header` refuses a bad file before it costs
anything: 1. the file size against MAX_CHECKPOINT_BYTES, before reading it; 2. the safetensors header
(`parse_safetensors_header`, json only): its length against MAX_HEADER_BYTES and the file size, every
tensor's dtype, shape and data offsets, which must tile the data exactly (a truncated file is caught from the
header alone); 3. the metadata: format marker, version, checksum, every number that sizes the model within
the safe maxima below, the tokenizer against the vocabulary size; 4. every tensor's name, shape and dtype
against the shapes the described model has, computed analytically (`expected_model_shapes`), so a forged
config never allocates anything. Step 5, the tensor data, needs torch: trainer.checkpoint.from_bytes.
Every failure is a CheckpointError (a ValueError) that says what is wrong with which file.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FORMAT = "improbable-checkpoint"
FORMAT_VERSION = 1

# --- Safe maxima --------------------------------------------------------------------------------------------
# A checkpoint's metadata decides how much memory building its model takes, so every number in it is bounded
# before anything is built. Each limit is far above what this project trains (CPU-sized RNNs: the recipes use
# 1-2 layers of 100-512 units, vocabularies up to 15,000 words, 4 words of MLP context) and far below what
# would hurt a worker that serves several personas at once.
#
# Whole file: a `last` checkpoint holds the model plus two Adam moments (3x the float32 weights) and small
# state, so 512 MiB admits the largest allowed model (MAX_MODEL_PARAMS float32 weights = 128 MB) with room
# to spare; loading needs at most a few times the file size (bytes, tensors, float32 copies).
MAX_CHECKPOINT_BYTES = 512 * 2**20
# The JSON header: the biggest real one is 200 KB (a 15,000-word vocabulary); 100,000 words of a non-Latin
# script, whose letters the header stores as 7-byte \\uXXXX escapes, take about 6 MB. Parsing JSON builds Python
# objects several times the text's size: up to ~12x for short strings, ~25x for empty objects/arrays, so
# objects and arrays are counted before parsing (a real header has one per tensor and per history entry).
MAX_HEADER_BYTES = 8 * 2**20
MAX_HEADER_CONTAINERS = 100_000
MAX_MODEL_PARAMS = 32_000_000  # 36x the bundled 2x256 LSTMs (0.9M); a 2x1024 LSTM has 13M
MAX_VOCAB_SIZE = 100_000  # word vocabularies default to 15,000; characters of any script stay far below this
MAX_LAYERS = 16  # deeper RNNs do not train on CPU; the n_layers=1000 forgery asked for 2.3 GB
MAX_WIDTH = 8192  # n_embd and n_hidden; the n_hidden=30000 forgery asked for 14 GB
MAX_CONTEXT = 64  # word-mlp context words (Bengio et al. use 3-5)
MAX_ADAPTIVE_CUTOFFS = 8  # adaptive softmax clusters (this project uses 2)
MAX_TENSORS = 4096  # tensors in one file: 4 per RNN layer, 3 Adam slots per parameter, a few state tensors
MAX_TENSOR_RANK = 8  # no tensor here has more than 3 dimensions
MAX_NGRAM_ORDER = 8  # a word MLP's Kneser–Ney n-gram (trainer/ngram.py; the harry-potter recipe uses 5)
MAX_NGRAM_ENTRIES = 64_000_000  # its key tables together: about 4 per training word at order 5 (~1 GB at the cap)

FAMILIES = ("char-rnn", "word-gru", "word-mlp")  # the families trainer/model.py builds (tests keep them equal)
CELLS = {"lstm": 4, "gru": 3, "rnn": 1}  # recurrent cell → gates, i.e. rows of its weight matrices per unit
HEADS = ("full", "adaptive", "tied", "tied-adaptive")  # tied*: trainer/model.py TiedHead (output = embed.weight)
ADAPTIVE_DIV_VALUE = 4  # trainer/model.py's AdaptiveLogSoftmaxWithLoss(div_value=4.0)

# safetensors dtype → bytes per element; anything else (fp8, complex, ...) is refused
DTYPE_SIZES = {"BOOL": 1, "U8": 1, "I8": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
               "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
WEIGHT_DTYPES = ("F32", "F16", "BF16")  # what trainer.checkpoint.to_bytes writes for weights (full or half)
TENSOR_PREFIXES = ("model.", "optim.", "state.")


class CheckpointError(ValueError):
    pass


@dataclass(frozen=True)
class TensorEntry:
    """One tensor as the safetensors header describes it; offsets are relative to the end of the header."""

    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int



def meta_digest(meta: dict) -> str:
    """The metadata's own checksum (over everything but itself), written by trainer.checkpoint.to_bytes."""
    body = {k: v for k, v in meta.items() if k != "meta_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


# --- The safetensors header (json only) --------------------------------------------------------------------


def _short(value: Any, limit: int = 60) -> str:
    """repr for error messages; a forged value may be megabytes long."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def _looks_like_pickle(head: bytes) -> bool:
    # torch.save writes a zip archive (PK\x03\x04) holding a pickle; plain pickles start with PROTO (\x80).
    return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")


def _not_safetensors(head: bytes, name: str, why: str, what: str = "truncated or not a safetensors file"
                     ) -> CheckpointError:
    if _looks_like_pickle(head):
        return CheckpointError(f"{name}: a pickle or torch.save file, not a safetensors checkpoint; it is never "
                               "loaded, because unpickling can run arbitrary code")
    return CheckpointError(f"{name}: {what} ({why})")


def check_file_size(size: int, name: str, limit: int = MAX_CHECKPOINT_BYTES) -> None:
    if size > limit:
        raise CheckpointError(f"{name}: too large for a checkpoint ({size:,} bytes; at most {limit:,})")


def header_length(head: bytes, file_size: int, name: str = "checkpoint") -> int:
    """The JSON header's length from a file's first 8 bytes, checked against the cap and the file size."""
    if file_size < 8 or len(head) < 8:
        raise CheckpointError(f"{name}: not a checkpoint (only {file_size} bytes)")
    n = int.from_bytes(head[:8], "little")
    if n > MAX_HEADER_BYTES:
        raise _not_safetensors(head, name, f"header length {n:,} is over the {MAX_HEADER_BYTES:,} byte limit")
    if n > file_size - 8:
        raise _not_safetensors(head, name, f"header says {n} bytes, file has {file_size}")
    return n


def _tensor_entry(tensor: str, info: Any, name: str) -> TensorEntry:
    def bad(why: str) -> CheckpointError:
        return CheckpointError(f"{name}: corrupt tensor data (tensor {_short(tensor)}: {why})")

    if not isinstance(info, dict):
        raise bad("its header entry is not an object")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if dtype not in DTYPE_SIZES:
        raise bad(f"unsupported dtype {_short(dtype)}")
    if (not isinstance(shape, list) or len(shape) > MAX_TENSOR_RANK
            or not all(type(d) is int and d >= 0 for d in shape)):
        raise bad(f"shape {_short(shape)} is not a list of at most {MAX_TENSOR_RANK} non-negative integers")
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(type(o) is int for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]):
        raise bad(f"data_offsets {_short(offsets)} are not two increasing non-negative integers")
    needed = math.prod(shape) * DTYPE_SIZES[dtype]
    if offsets[1] - offsets[0] != needed:
        raise bad(f"shape {shape} of {dtype} needs {needed} bytes, its data_offsets span {offsets[1] - offsets[0]}")
    return TensorEntry(dtype, tuple(shape), offsets[0], offsets[1])


def parse_safetensors_header(head: bytes, file_size: int, name: str = "checkpoint"
                             ) -> tuple[dict[str, TensorEntry], Any]:
    """(tensor entries, the header's __metadata__) from a safetensors file's first bytes, without torch.

    `head` holds at least the 8-byte length and the JSON header (more is ignored); `file_size` is the whole
    file's size, against which the tensors' data offsets must tile the data exactly: no gap, no overlap, not
    one byte missing (a truncated file) or left over."""
    n = header_length(head, file_size, name)
    if len(head) < 8 + n:
        raise CheckpointError(f"{name}: truncated or not a safetensors file (header says {n} bytes, "
                              f"only {len(head) - 8} were read)")
    text = head[8:8 + n]
    containers = text.count(b"{") + text.count(b"[")  # an upper bound on the objects and arrays parsing makes
    if containers > MAX_HEADER_CONTAINERS:
        raise CheckpointError(f"{name}: not an Improbable checkpoint (the header would build {containers:,} JSON "
                              f"objects or arrays; at most {MAX_HEADER_CONTAINERS:,})")
    try:
        header = json.loads(text)
    except (ValueError, RecursionError) as e:  # RecursionError: a deeply nested forgery
        raise _not_safetensors(head, name, f"the safetensors header is not JSON: {_short(str(e), 80)}",
                               "not an Improbable checkpoint") from None
    if not isinstance(header, dict):
        raise _not_safetensors(head, name, "the safetensors header is not a JSON object",
                               "not an Improbable checkpoint")
    metadata = header.pop("__metadata__", None)
    if len(header) > MAX_TENSORS:
        raise CheckpointError(f"{name}: corrupt tensor data ({len(header)} tensors; at most {MAX_TENSORS})")
    entries = {tensor: _tensor_entry(tensor, info, name) for tensor, info in header.items()}
    data_size, end = file_size - 8 - n, 0
    for tensor, entry in sorted(entries.items(), key=lambda item: (item[1].begin, item[1].end)):
        if entry.begin != end:
            raise CheckpointError(f"{name}: corrupt tensor data (tensor {_short(tensor)} starts at byte "
                                  f"{entry.begin} of the data, the previous one ends at {end})")
        end = entry.end
    if end > data_size:
        raise CheckpointError(f"{name}: truncated (the header describes {end:,} bytes of tensor data, "
                              f"the file has {data_size:,})")
    if end < data_size:
        raise CheckpointError(f"{name}: corrupt tensor data ({data_size - end:,} bytes after the last tensor)")
    return entries, metadata


# --- The metadata and the model it describes ----------------------------------------------------------------


def _improbable_meta(metadata: Any, name: str) -> dict:
    if not isinstance(metadata, dict) or not isinstance(metadata.get("improbable"), str):
        raise CheckpointError(f"{name}: not an Improbable checkpoint (no readable metadata: the header has no "
                              "__metadata__.improbable string)")
    try:
        meta = json.loads(metadata["improbable"])
    except (ValueError, RecursionError) as e:
        raise CheckpointError(f"{name}: not an Improbable checkpoint (metadata is not JSON: "
                              f"{_short(str(e), 80)})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{name}: not an Improbable checkpoint (metadata is not a JSON object)")
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{name}: not an Improbable checkpoint (format {_short(meta.get('format'))})")
    version = meta.get("format_version", 0)
    if type(version) is not int:
        raise CheckpointError(f"{name}: not an Improbable checkpoint (format_version {_short(version)})")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{name}: written by a newer version (format {version}); upgrade")
    if meta.get("meta_sha256") != meta_digest(meta):
        raise CheckpointError(f"{name}: corrupt (metadata checksum mismatch); re-download or retrain")
    digest = meta.get("tensors_sha256")
    if not (isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)):
        raise CheckpointError(f"{name}: corrupt (no valid tensors_sha256 in the metadata)")
    return meta


def validate_model_config(config: Any, name: str = "checkpoint") -> dict:
    """The metadata's model config, every number that sizes the model within the safe maxima. Returns it."""
    def invalid(why: str) -> CheckpointError:
        return CheckpointError(f"{name}: invalid model metadata ({why})")

    if not isinstance(config, dict):
        raise invalid("'model' is not a JSON object")

    def integer(key: str, low: int, high: int) -> int:
        value = config.get(key)
        if type(value) is not int:  # bool is an int subclass: excluded on purpose
            raise invalid(f"{key} must be an integer, not {_short(value)}")
        if not low <= value <= high:
            raise invalid(f"{key}={value} is outside the safe range {low}..{high}")
        return value

    def number(key: str, low: float, high: float) -> None:
        value = config.get(key, 0.0)
        if type(value) not in (int, float) or not low <= value <= high:  # NaN fails the comparison too
            raise invalid(f"{key} must be a number in {low}..{high}, not {_short(value)}")

    family = config.get("family")
    if family not in FAMILIES:
        raise invalid(f"unknown model family {_short(family)}; known: {', '.join(FAMILIES)}")
    vocab_size = integer("vocab_size", 1, MAX_VOCAB_SIZE)
    integer("n_embd", 1, MAX_WIDTH)
    integer("n_hidden", 1, MAX_WIDTH)
    integer("context", 1, MAX_CONTEXT)  # both always written; checked for every family, as code may read them
    integer("n_layers", 1, MAX_LAYERS)
    if family != "word-mlp":
        if config.get("cell") not in CELLS:
            raise invalid(f"unknown cell {_short(config.get('cell'))}; known: {', '.join(CELLS)}")
    head = config.get("head")
    if head not in HEADS:
        raise invalid(f"unknown head {_short(head)}; known: {', '.join(HEADS)}")
    if head in ("adaptive", "tied-adaptive"):
        cutoffs = config.get("adaptive_cutoffs", [])
        if not isinstance(cutoffs, list) or len(cutoffs) > MAX_ADAPTIVE_CUTOFFS:
            raise invalid(f"adaptive_cutoffs must be a list of at most {MAX_ADAPTIVE_CUTOFFS} integers")
        bounds = cutoffs or default_cutoffs(vocab_size)
        if (vocab_size < 2 or not all(type(c) is int for c in bounds) or bounds[0] < 1 or bounds[-1] > vocab_size - 1
                or any(a >= b for a, b in zip(bounds, bounds[1:]))):
            raise invalid(f"adaptive_cutoffs {_short(cutoffs)} must increase strictly within 1..vocab_size-1 "
                          f"(vocab_size={vocab_size})")
    number("dropout", 0.0, 1.0)
    number("recurrent_l2", 0.0, 1.0)
    _validate_ngram(config, invalid)
    if type(config.get("freeze_embedding", False)) is not bool:
        raise invalid("freeze_embedding must be true or false")
    return config


def _validate_ngram(config: dict, invalid) -> None:
    """A word MLP mixed with an n-gram (trainer/model.py NGramMixture): its order, table sizes and weights."""
    order = config.get("ngram_order", 0)
    if order == 0:
        return
    if type(order) is not int or not 2 <= order <= min(MAX_NGRAM_ORDER, config["context"] + 1):
        raise invalid(f"ngram_order {_short(order)} must be 0, or 2..{MAX_NGRAM_ORDER} and at most context + 1")
    if config["family"] != "word-mlp":
        raise invalid("only a word-mlp model mixes with an n-gram")
    sizes, weights = config.get("ngram_sizes"), config.get("ngram_weights")
    if (not isinstance(sizes, list) or len(sizes) != order - 1 or not all(type(n) is int and n >= 0 for n in sizes)
            or sum(sizes) > MAX_NGRAM_ENTRIES):
        raise invalid(f"ngram_sizes must be {order - 1} table sizes totalling at most {MAX_NGRAM_ENTRIES:,}")
    if (not isinstance(weights, list) or len(weights) != order
            or not all(type(w) in (int, float) and 0.0 <= w <= 1.0 for w in weights)):
        raise invalid(f"ngram_weights must be {order} numbers in 0..1")


def ngram_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """The n-gram tables of a mixture, by state_dict name (trainer/ngram.py: integers, not parameters)."""
    if not config.get("ngram_order"):
        return {}
    shapes = {"ngram.counts1": (config["vocab_size"],)}
    for k, size in enumerate(config["ngram_sizes"], start=2):
        shapes.update({f"ngram.keys{k}": (size,), f"ngram.counts{k}": (size,)})
    return shapes


def default_cutoffs(vocab_size: int) -> list[int]:
    """trainer/model.py's adaptive-softmax cutoffs for a vocabulary (tests keep the two equal)."""
    cutoffs = [c for c in (2_000, 10_000) if c < vocab_size - 1]
    return cutoffs or [vocab_size // 2]


def expected_model_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """The state_dict shapes of the model a *validated* config describes, computed without building it
    (tests compare them with trainer/model.py's models built on the meta device)."""
    vocab, embd, hidden = config["vocab_size"], config["n_embd"], config["n_hidden"]
    shapes: dict[str, tuple[int, ...]] = {"embed.weight": (vocab, embd)}
    if config["family"] == "word-mlp":
        shapes["hidden.weight"] = (hidden, config["context"] * embd)
        shapes.update({f"norm.{k}": (hidden,) for k in ("weight", "bias", "running_mean", "running_var")})
        shapes["norm.num_batches_tracked"] = ()
    else:
        rows = CELLS[config["cell"]] * hidden
        for i in range(config["n_layers"]):
            shapes[f"layers.{i}.weight_ih_l0"] = (rows, embd if i == 0 else hidden)
            shapes[f"layers.{i}.weight_hh_l0"] = (rows, hidden)
            shapes[f"layers.{i}.bias_ih_l0"] = (rows,)
            shapes[f"layers.{i}.bias_hh_l0"] = (rows,)
    if config["head"] in ("tied", "tied-adaptive"):  # the output vectors are embed.weight, stored once
        shapes["head.bias"] = (vocab,)
        if hidden != embd:
            shapes["head.proj.weight"] = (embd, hidden)
        if config["head"] == "tied-adaptive":
            clusters = len(config.get("adaptive_cutoffs") or default_cutoffs(vocab))
            shapes["head.cluster.weight"] = (clusters, embd)
            shapes["head.cluster.bias"] = (clusters,)
    elif config["head"] == "adaptive":
        bounds = (config.get("adaptive_cutoffs") or default_cutoffs(vocab)) + [vocab]
        shapes["head.proj.head.weight"] = (bounds[0] + len(bounds) - 1, hidden)
        for i in range(len(bounds) - 1):
            width = hidden // ADAPTIVE_DIV_VALUE ** (i + 1)
            shapes[f"head.proj.tail.{i}.0.weight"] = (width, hidden)
            shapes[f"head.proj.tail.{i}.1.weight"] = (bounds[i + 1] - bounds[i], width)
    else:
        shapes["head.proj.weight"] = (vocab, hidden)
        shapes["head.proj.bias"] = (vocab,)
    if config.get("ngram_order"):  # the mixture holds the MLP as `mlp` beside its n-gram
        return {**{f"mlp.{k}": v for k, v in shapes.items()}, **ngram_shapes(config)}
    return shapes


def _validate_tokenizer(tokenizer: Any, vocab_size: int, name: str) -> None:
    def invalid(why: str) -> CheckpointError:
        return CheckpointError(f"{name}: invalid tokenizer metadata ({why})")

    if not isinstance(tokenizer, dict):
        raise invalid("'tokenizer' is not a JSON object")
    if tokenizer.get("kind") not in ("char", "word"):
        raise invalid(f"unknown tokenizer kind {_short(tokenizer.get('kind'))}")
    vocab = tokenizer.get("vocab")
    if not isinstance(vocab, list) or not all(isinstance(t, str) and t for t in vocab):
        raise invalid("the vocabulary is not a list of non-empty strings")
    if len(vocab) != vocab_size:
        raise CheckpointError(f"{name}: tokenizer has {len(vocab)} tokens, model expects {vocab_size}")
    if len(set(vocab)) != len(vocab):
        raise invalid("the vocabulary repeats a token")
    if tokenizer["kind"] == "char" and any(len(t) != 1 for t in vocab):
        raise invalid("a character vocabulary entry is longer than one character")
    if tokenizer["kind"] == "word":
        if vocab[0] != "<unk>":
            raise invalid("a word vocabulary must start with '<unk>'")
        if type(tokenizer.get("lowercase", False)) is not bool:
            raise invalid("lowercase must be true or false")


def _check_tensors(entries: dict[str, TensorEntry], config: dict, name: str) -> None:
    """Every tensor's name, shape and dtype against the described model, before any of it is built."""
    def mismatch(why: str) -> CheckpointError:
        return CheckpointError(f"{name}: weights do not match the model its metadata describes ({why})")

    expected = expected_model_shapes(config)
    tables = ngram_shapes(config)  # capped by MAX_NGRAM_ENTRIES instead
    n_params = sum(math.prod(shape) for key, shape in expected.items() if key not in tables)
    if n_params > MAX_MODEL_PARAMS:
        raise CheckpointError(f"{name}: invalid model metadata (describes {n_params:,} parameters; "
                              f"at most {MAX_MODEL_PARAMS:,})")
    stray = sorted(t for t in entries if not t.startswith(TENSOR_PREFIXES))
    if stray:
        raise mismatch(f"unexpected tensor {_short(stray[0])}: only {', '.join(TENSOR_PREFIXES)} tensors belong "
                       "in a checkpoint")
    found = {t[len("model."):]: e for t, e in entries.items() if t.startswith("model.")}
    missing, extra = sorted(expected.keys() - found.keys()), sorted(found.keys() - expected.keys())
    if missing:
        raise mismatch(f"missing tensor model.{missing[0]}" + (f" and {len(missing) - 1} more" if len(missing) > 1
                                                                 else ""))
    if extra:
        raise mismatch(f"unexpected tensor {_short('model.' + extra[0])}" + (f" and {len(extra) - 1} more"
                                                                              if len(extra) > 1 else ""))
    for key, shape in expected.items():
        entry = found[key]
        if entry.shape != shape:
            raise mismatch(f"size mismatch for model.{key}: the file has {list(entry.shape)}, the model needs "
                           f"{list(shape)}")
        wanted = (("I64",) if key.endswith("num_batches_tracked") or key.startswith("ngram.keys")
                  else ("I32",) if key.startswith("ngram.counts") else WEIGHT_DTYPES)
        if entry.dtype not in wanted:
            raise mismatch(f"model.{key} is {entry.dtype}, the model needs {' or '.join(wanted)}")


def validate_header(head: bytes, file_size: int, name: str = "checkpoint") -> tuple[dict, dict[str, TensorEntry]]:
    """Steps 1-4 of the module docstring on a file's first bytes: (metadata, tensor entries). Torch-free."""
    check_file_size(file_size, name)
    entries, metadata = parse_safetensors_header(head, file_size, name)
    meta = _improbable_meta(metadata, name)
    config = validate_model_config(meta.get("model"), name)
    _validate_tokenizer(meta.get("tokenizer"), config["vocab_size"], name)
    _check_tensors(entries, config, name)
    return meta, entries


def meta_from_bytes(data: bytes, name: str = "checkpoint") -> dict:
    """The validated JSON metadata of a checkpoint in memory, without reading its tensors or importing torch."""
    return validate_header(data, len(data), name)[0]


def read_meta(path: str | Path) -> dict:
    """The validated JSON metadata alone, without building the model or reading the tensor data (the file's
    size still has to agree with the header, so a truncated file is refused)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            check_file_size(size, str(path))
            head = f.read(8)
            n = header_length(head, size, str(path))
            head += f.read(n)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read checkpoint ({e.strerror or e})") from None
    return validate_header(head, size, str(path))[0]

