"""Forged checkpoints: hostile .safetensors files, each of which must be refused with a specific error and
bounded memory (issue 12).

    .venv/bin/python bench/forged_checkpoints.py [--only NAME ...]

Every case is written programmatically from one small valid checkpoint, the way a forger would: where the
file's checksums would give the forgery away, they are recomputed (they catch corruption, not malice), so the
deeper checks are the ones tested. Each file is then loaded by `trainer.checkpoint.load` (the serving path)
in a fresh subprocess, whose peak RSS comes from os.wait4; the table is printed and written to
bench/results/forged_checkpoints.json. tests/test_forged_checkpoints.py asserts the same cases in-process.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import os
import pickle
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from safetensors.torch import load as st_load  # noqa: E402
from safetensors.torch import save as st_save  # noqa: E402

from trainer import checkpoint as ckpt  # noqa: E402
from trainer.model import ModelConfig, build_model  # noqa: E402
from trainer.tokenizer import CharTokenizer  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "forged_checkpoints.json"
CASE_TIMEOUT_S = 300


@dataclass
class Base:
    """The valid checkpoint every forgery starts from: a 2x32 char LSTM."""

    data: bytes
    tensors: dict[str, torch.Tensor]
    meta: dict

    @property
    def header(self) -> dict:
        n = int.from_bytes(self.data[:8], "little")
        return json.loads(self.data[8:8 + n])

    @property
    def tensor_data(self) -> bytes:
        return self.data[8 + int.from_bytes(self.data[:8], "little"):]


def make_base() -> Base:
    tok = CharTokenizer.build("The quick brown fox jumps over the lazy dog.\n")
    torch.manual_seed(0)
    model = build_model(ModelConfig(family="char-rnn", vocab_size=len(tok), cell="lstm", n_layers=2, n_embd=16,
                                    n_hidden=32)).eval()
    data = ckpt.to_bytes(model, tok, {"step": 1, "metrics": {"val_loss": 2.0}})
    return Base(data, st_load(data), ckpt.meta_from_bytes(data))


def reforge(base: Base, model: dict | None = None, meta: dict | None = None, tensors: dict | None = None,
            drop: tuple[str, ...] = (), tokenizer: dict | None = None) -> bytes:
    """A well-formed safetensors file with edited metadata/tensors and valid (recomputed) checksums."""
    new_tensors = {k: v for k, v in {**base.tensors, **(tensors or {})}.items() if k not in drop}
    new_meta = copy.deepcopy(base.meta)
    new_meta["model"].update(model or {})
    new_meta["tokenizer"].update(tokenizer or {})
    new_meta.update(meta or {})
    new_meta["tensors_sha256"] = ckpt._digest(new_tensors)
    new_meta["meta_sha256"] = ckpt._meta_digest(new_meta)
    return st_save(new_tensors, metadata={"improbable": json.dumps(new_meta)})


def raw(header: dict | bytes, data: bytes, length: int | None = None) -> bytes:
    """A file laid out by hand: 8-byte length (which may lie), header bytes, tensor data."""
    body = header if isinstance(header, bytes) else json.dumps(header).encode()
    return (len(body) if length is None else length).to_bytes(8, "little") + body + data


def edit_header(base: Base, edit: Callable[[dict], None]) -> bytes:
    header = base.header
    edit(header)
    return raw(header, base.tensor_data)


def flipped(data: bytes, at: int) -> bytes:
    out = bytearray(data)
    out[at] ^= 0x01
    return bytes(out)


def with_value(base: Base, tensor: str, value: float) -> bytes:
    t = base.tensors[tensor].clone()
    t.view(-1)[3] = value
    return reforge(base, tensors={tensor: t})


def torch_save_bytes(base: Base) -> bytes:
    buffer = io.BytesIO()
    torch.save(base.tensors, buffer)  # a zip archive holding a pickle: what many shared checkpoints are
    return buffer.getvalue()


def shape_lie(header: dict) -> None:
    header["model.head.proj.bias"]["shape"] = [1_000_000, 1_000_000]


def huge_tensor(header: dict) -> None:
    """The last tensor in the data grows to 16 GiB with offsets that agree with its shape: only the file's
    size gives it away."""
    last = max((info for key, info in header.items() if key != "__metadata__"), key=lambda i: i["data_offsets"][0])
    begin = last["data_offsets"][0]
    last.update(dtype="F32", shape=[65536, 65536], data_offsets=[begin, begin + 65536**2 * 4])


def overlap(header: dict) -> None:
    header["model.head.proj.bias"]["data_offsets"] = list(header["model.embed.weight"]["data_offsets"][:1]) * 2
    header["model.head.proj.bias"]["data_offsets"][1] += 4 * header["model.head.proj.bias"]["shape"][0]


def many_tensors(base: Base) -> bytes:
    header = {f"state.t{i}": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]} for i in range(5000)}
    header["__metadata__"] = base.header["__metadata__"]
    return raw(header, b"")


def object_bomb(base: Base) -> bytes:
    """A header at the size limit made of the smallest JSON objects: the most Python objects per byte."""
    prefix, suffix = b'{"x":[', b"{}]}"
    count = (ckpt.MAX_HEADER_BYTES - len(prefix) - len(suffix)) // 3
    return raw(prefix + b"{}," * count + suffix, b"")


def string_bomb(base: Base) -> bytes:
    """A header at the size limit made of distinct short strings, inside an otherwise valid checkpoint's
    metadata: parsed in full (the memory cost is the point) before the vocabulary is found wrong."""
    meta = copy.deepcopy(base.meta)
    budget = ckpt.MAX_HEADER_BYTES - len(json.dumps(base.header)) - 1000
    meta["tokenizer"]["vocab"] = [f"{i:x}" for i in range(budget // 11)]  # '\"1f2e3\", ' ≈ 11 bytes each
    meta["meta_sha256"] = ckpt._meta_digest(meta)
    header = base.header
    header["__metadata__"]["improbable"] = json.dumps(meta)
    return raw(header, base.tensor_data)


def write_oversized(path: Path) -> None:
    """A sparse file one byte over the cap: refused from its size before a byte is read."""
    with open(path, "wb") as f:
        f.write(raw({"__metadata__": {}}, b""))
        f.truncate(ckpt.MAX_CHECKPOINT_BYTES + 1)


@dataclass
class Case:
    name: str
    expect: str  # regex the CheckpointError must match ("" with accept=True: the control)
    make: Callable[[Base], bytes] | None = None
    write: Callable[[Path], None] | None = None  # for files not built in memory
    accept: bool = False
    header_only: bool = True  # refused by read_meta too (`improbable info` exits non-zero), not only by load

    def build(self, base: Base, directory: Path) -> Path:
        path = directory / f"{self.name}.safetensors"
        if self.write is not None:
            self.write(path)
        else:
            path.write_bytes(self.make(base))
        return path


def shipped(name: str) -> Callable[[Base], bytes]:
    """A shipped checkpoint as a realistic control (db/bundled, formerly improbable/bundled; trainer/pretrained)."""
    def read(_: Base) -> bytes:
        for directory in ("db/bundled", "improbable/bundled", "trainer/pretrained"):
            if (ROOT / directory / f"{name}.safetensors").is_file():
                return (ROOT / directory / f"{name}.safetensors").read_bytes()
        raise FileNotFoundError(f"no shipped checkpoint {name}")
    return read


CASES: list[Case] = [
    Case("valid-control", "", lambda b: b.data, accept=True),
    Case("valid-bundled-movie-reviews", "", shipped("movie-reviews"), accept=True),
    Case("valid-pretrained-base", "", shipped("base"), accept=True),
    # metadata that would size a huge model (the forgeries, checksums recomputed)
    Case("n_layers-1000", r"n_layers=1000 is outside the safe range", lambda b: reforge(b, {"n_layers": 1000})),
    Case("n_layers-10000", r"n_layers=10000 is outside", lambda b: reforge(b, {"n_layers": 10_000})),
    Case("n_hidden-30000", r"n_hidden=30000 is outside", lambda b: reforge(b, {"n_hidden": 30_000})),
    Case("vocab_size-1e9", r"vocab_size=1000000000 is outside", lambda b: reforge(b, {"vocab_size": 10**9})),
    Case("n_embd-1e6", r"n_embd=1000000 is outside", lambda b: reforge(b, {"n_embd": 10**6})),
    Case("in-range-but-8.6G-params", r"describes 8,591,474,718 parameters; at most 32,000,000",
         lambda b: reforge(b, {"n_layers": 16, "n_hidden": 8192, "n_embd": 8192})),
    Case("mlp-context-1e6", r"context=1000000 is outside", lambda b: reforge(b, {"family": "word-mlp",
                                                                                  "context": 10**6})),
    Case("adaptive-cutoffs-unsorted", r"adaptive_cutoffs \[30, 5\] must increase strictly",
         lambda b: reforge(b, {"head": "adaptive", "adaptive_cutoffs": [30, 5]})),
    Case("unknown-family", r"unknown model family 'transformer'", lambda b: reforge(b, {"family": "transformer"})),
    Case("unknown-cell", r"unknown cell 'mamba'", lambda b: reforge(b, {"cell": "mamba"})),
    Case("n_layers-is-a-string", r"n_layers must be an integer, not '2'", lambda b: reforge(b, {"n_layers": "2"})),
    Case("dropout-NaN", r"dropout must be a number in 0.0..1.0, not nan",
         lambda b: reforge(b, {"dropout": float("nan")})),
    # tokenizer metadata
    Case("vocab-shorter-than-model", r"tokenizer has 10 tokens, model expects 3\d",
         lambda b: reforge(b, tokenizer={"vocab": b.meta["tokenizer"]["vocab"][:10]})),
    Case("vocab-not-strings", r"vocabulary is not a list of non-empty strings",
         lambda b: reforge(b, tokenizer={"vocab": list(range(b.meta["model"]["vocab_size"]))})),
    Case("vocab-repeats", r"vocabulary repeats a token",
         lambda b: reforge(b, tokenizer={"vocab": ["a"] * b.meta["model"]["vocab_size"]})),
    # tensors against the described model
    Case("shape-mismatch", r"size mismatch for model.layers.0.weight_ih_l0: the file has \[128, 16\], the model "
         r"needs \[192, 16\]", lambda b: reforge(b, {"n_hidden": 48})),
    Case("missing-tensor", r"missing tensor model.head.proj.bias", lambda b: reforge(b, drop=("model.head.proj.bias",))),
    Case("extra-model-tensor", r"unexpected tensor 'model.layers.2.weight_ih_l0'",
         lambda b: reforge(b, tensors={"model.layers.2.weight_ih_l0": torch.zeros(128, 32)})),
    Case("stray-tensor", r"unexpected tensor 'payload.exe'", lambda b: reforge(b, tensors={"payload.exe": torch.zeros(4)})),
    Case("weights-as-int32", r"model.embed.weight is I32, the model needs F32 or F16 or BF16",
         lambda b: reforge(b, tensors={"model.embed.weight": b.tensors["model.embed.weight"].int()})),
    Case("NaN-weights", r"tensor model.head.proj.weight has non-finite values \(1 NaN, 0 Inf\)",
         lambda b: with_value(b, "model.head.proj.weight", float("nan")), header_only=False),
    Case("Inf-weights", r"tensor model.layers.0.weight_hh_l0 has non-finite values \(0 NaN, 1 Inf\)",
         lambda b: with_value(b, "model.layers.0.weight_hh_l0", float("inf")), header_only=False),
    # the safetensors layout
    Case("truncated-half", r"truncated \(the header describes [\d,]+ bytes of tensor data, the file has",
         lambda b: b.data[:len(b.data) // 2]),
    Case("truncated-one-byte", r"truncated \(the header describes", lambda b: b.data[:-1]),
    Case("header-length-past-eof", r"truncated or not a safetensors file \(header says \d+ bytes, file has \d+\)",
         lambda b: raw(b.data[8:], b"", length=len(b.data))),
    Case("header-length-short", r"not an Improbable checkpoint \(the safetensors header is not JSON",
         lambda b: raw(b.data[8:], b"", length=int.from_bytes(b.data[:8], "little") - 10)),
    Case("header-length-2^63", r"header length 9,223,372,036,854,775,808 is over the [\d,]+ byte limit",
         lambda b: raw(b.data[8:], b"", length=2**63)),
    Case("header-not-JSON", r"the safetensors header is not JSON", lambda b: raw(b"\x00garbage" * 64, b"")),
    Case("header-is-a-list", r"the safetensors header is not a JSON object", lambda b: raw(b"[1, 2, 3]", b"")),
    Case("header-nesting-bomb", r"the safetensors header is not JSON", lambda b: raw(b"[" * 50_000, b"")),
    Case("header-object-bomb", r"the header would build 2,796,\d{3} JSON objects or arrays; at most", object_bomb),
    Case("header-string-bomb", r"tokenizer has \d+ tokens, model expects 30", string_bomb),
    Case("metadata-not-JSON", r"metadata is not JSON",
         lambda b: edit_header(b, lambda h: h["__metadata__"].update(improbable="{not json"))),
    Case("metadata-missing", r"no readable metadata", lambda b: edit_header(b, lambda h: h.pop("__metadata__"))),
    Case("metadata-checksum-mismatch", r"corrupt \(metadata checksum mismatch\)",
         lambda b: edit_header(b, lambda h: h["__metadata__"].update(
             improbable=h["__metadata__"]["improbable"].replace('"step": 1', '"step": 2')))),
    Case("tensor-digest-mismatch", r"corrupt \(tensor checksum mismatch\)",
         lambda b: flipped(b.data, len(b.data) - 100), header_only=False),
    Case("flipped-byte-in-header", r"corrupt \(metadata checksum mismatch\)|not JSON|corrupt tensor data",
         lambda b: flipped(b.data, 8 + int.from_bytes(b.data[:8], "little") - 200)),
    Case("negative-shape", r"shape \[-1, 16\] is not a list of at most 8 non-negative integers",
         lambda b: edit_header(b, lambda h: h["model.embed.weight"].update(shape=[-1, 16]))),
    Case("negative-offsets", r"data_offsets \[-8, 0\] are not two increasing",
         lambda b: edit_header(b, lambda h: h["model.head.proj.bias"].update(data_offsets=[-8, 0]))),
    Case("shape-lies-about-offsets", r"shape \[1000000, 1000000\] of F32 needs 4000000000000 bytes",
         lambda b: edit_header(b, shape_lie)),
    Case("16GiB-tensor-in-a-small-file", r"truncated \(the header describes 17,179,\d{3},\d{3} bytes",
         lambda b: edit_header(b, huge_tensor)),
    Case("overlapping-tensors", r"corrupt tensor data \(tensor '.*' starts at byte", lambda b: edit_header(b, overlap)),
    Case("unsupported-dtype", r"unsupported dtype 'F8_E4M3'",
         lambda b: edit_header(b, lambda h: h["model.head.proj.bias"].update(dtype="F8_E4M3"))),
    Case("5000-tensors", r"5000 tensors; at most 4096", many_tensors),
    Case("trailing-bytes", r"corrupt tensor data \(7 bytes after the last tensor\)", lambda b: b.data + b"\x00" * 7),
    Case("newer-format-version", r"written by a newer version \(format 99\); upgrade",
         lambda b: reforge(b, meta={"format_version": 99})),
    # not safetensors at all
    Case("torch.save-renamed", r"a pickle or torch.save file, not a safetensors checkpoint", torch_save_bytes),
    Case("pickle-renamed", r"a pickle or torch.save file", lambda b: pickle.dumps({"weights": [1.0] * 100}, 4)),
    Case("zero-bytes", r"not a checkpoint \(only 0 bytes\)", lambda b: b""),
    Case("seven-bytes", r"not a checkpoint \(only 7 bytes\)", lambda b: b"\x10" * 7),
    Case("over-the-size-cap", r"too large for a checkpoint \([\d,]+ bytes; at most [\d,]+\)", write=write_oversized),
]


CHILD = r"""
import json, sys
from trainer import checkpoint as ckpt
try:
    loaded = ckpt.load(sys.argv[1])
    out = {"outcome": "accepted", "message": f"{loaded.family}, {loaded.model.n_params} parameters"}
except ckpt.CheckpointError as e:
    out = {"outcome": "refused", "message": str(e)}
out["torch_imported"] = "torch" in sys.modules
print(json.dumps(out))
"""


# The measuring process must be small: Linux charges a child the peak RSS of the memory it was forked from
# (and vfork+exec shares the parent's), so a child of this torch-importing script would report at least this
# script's own size. A bare interpreter launches each case and reads that child's rusage with wait4.
LAUNCHER = r"""
import json, os, subprocess, sys, time
timeout, argv = float(sys.argv[1]), sys.argv[2:]
child = subprocess.Popen(argv)
deadline = time.monotonic() + timeout
while True:
    pid, status, usage = os.wait4(child.pid, os.WNOHANG)
    if pid:
        break
    if time.monotonic() > deadline:
        child.kill()
        pid, status, usage = os.wait4(child.pid, 0)
        break
    time.sleep(0.01)
child.returncode = os.waitstatus_to_exitcode(status)
sys.stdout.flush()
print(json.dumps({"maxrss_kib": usage.ru_maxrss, "returncode": child.returncode}))
"""


def peak_rss_of(argv: list[str], timeout: float) -> tuple[int, int, str, str, float]:
    """(peak RSS in bytes, return code, stdout, stderr, seconds) of one command run by the bare launcher."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-S", "-c", LAUNCHER, str(timeout), *argv], cwd=ROOT,
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    lines = done.stdout.strip().splitlines()
    usage = json.loads(lines[-1])
    return (usage["maxrss_kib"] * 1024, usage["returncode"], "\n".join(lines[:-1]), done.stderr,
            time.perf_counter() - start)


def measure(case: Case, path: Path) -> dict:
    rss, returncode, stdout, stderr, seconds = peak_rss_of([sys.executable, "-c", CHILD, str(path)], CASE_TIMEOUT_S)
    row: dict = {"case": case.name, "seconds": round(seconds, 2), "peak_rss_mb": round(rss / 2**20, 1),
                 "file_bytes": path.stat().st_size, "returncode": returncode}
    try:
        row.update(json.loads(stdout.strip().splitlines()[-1]))
    except (ValueError, IndexError):
        tail = stderr.strip().splitlines()
        row.update(outcome="crashed", message=tail[-1] if tail else f"(no output, exit {returncode})")
    row["message"] = row.get("message", "").replace(str(path.parent) + os.sep, "")
    if case.accept:
        row["ok"] = row["outcome"] == "accepted"
    else:
        row["ok"] = row["outcome"] == "refused" and re.search(case.expect, row["message"]) is not None
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="case names to run (default: all)")
    args = parser.parse_args()
    cases = [c for c in CASES if not args.only or c.name in args.only]
    base = make_base()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in cases:
            path = case.build(base, Path(tmp))
            row = measure(case, path)
            rows.append(row)
            print(f"{'ok ' if row['ok'] else 'BAD'} {row['case']:<30} {row['outcome']:<9} {row['peak_rss_mb']:>7.1f} MB "
                  f"{row['seconds']:>6.2f} s  {row['message'][:110]}", flush=True)
    forged = [r for r in rows if not r["case"].startswith("valid-")]
    summary = {
        "cases": len(forged),
        "refused_as_expected": sum(r["ok"] for r in forged),
        "accepted_wrongly": sum(r["outcome"] == "accepted" for r in forged),
        "crashed": sum(r["outcome"] == "crashed" for r in forged),
        "max_peak_rss_mb_forged": max((r["peak_rss_mb"] for r in forged), default=None),
        "peak_rss_mb_valid": {r["case"]: r["peak_rss_mb"] for r in rows if r["case"].startswith("valid-")},
    }
    print(json.dumps(summary))
    if not args.only:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        limits = {k: getattr(ckpt, k) for k in dir(ckpt) if k.startswith("MAX_")}
        RESULTS.write_text(json.dumps({"command": "python bench/forged_checkpoints.py", "summary": summary,
                                       "limits": limits, "python": platform.python_version(),
                                       "torch": torch.__version__, "rows": rows}, indent=1) + "\n")
        print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
