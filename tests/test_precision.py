"""trainer.precision: `precision: auto` picks bf16 only where it trains faster, measures a CPU once and
caches the answer per CPU model and torch version."""

from __future__ import annotations

import json

import pytest
import torch

from trainer import precision


@pytest.fixture
def small_step(monkeypatch):
    """A tiny measured model, so that a real measurement takes a fraction of a second."""
    for name, value in {"_VOCAB": 16, "_EMBED": 8, "_HIDDEN": 16, "_BATCH": 4, "_SEQ": 8}.items():
        monkeypatch.setattr(precision, name, value)


@pytest.fixture
def cache_file(tmp_path):
    return tmp_path / "cache" / "precision.json"


def _fake_measurement(monkeypatch, pick: str, calls: list):
    def measure(seconds: float = 2.0) -> dict:
        calls.append(seconds)
        return {"precision": pick, "fp32_chars_per_s": 100, "bf16_chars_per_s": 200 if pick == "bf16" else 50}

    monkeypatch.setattr(precision, "measure_cpu", measure)


def test_explicit_precisions_pass_through_and_unknown_ones_are_refused():
    assert precision.resolve_precision("bf16", "cpu") == "bf16"
    assert precision.resolve_precision("fp32", "cuda") == "fp32"
    with pytest.raises(ValueError, match="auto, bf16, fp32"):
        precision.resolve_precision("fp16", "cpu")


def test_an_explicit_bf16_lstm_is_refused_where_torch_cannot_run_one(monkeypatch):
    monkeypatch.setattr(precision, "bf16_runs", lambda device_type="cpu": False)
    lstm, gru = torch.nn.Sequential(torch.nn.LSTM(4, 8)), torch.nn.Sequential(torch.nn.GRU(4, 8))
    with pytest.raises(ValueError, match="cannot train an LSTM under bf16 autocast.*use precision auto or fp32"):
        precision.resolve_precision("bf16", "cpu", lstm)
    assert precision.resolve_precision("bf16", "cpu", gru) == "bf16"  # a GRU's kernels are another matter
    monkeypatch.setattr(precision, "bf16_runs", lambda device_type="cpu": True)
    assert precision.resolve_precision("bf16", "cpu", lstm) == "bf16"


def test_auto_resolves_through_pick_precision(monkeypatch):
    monkeypatch.setattr(precision, "pick_precision", lambda device: "bf16")
    assert precision.resolve_precision("auto", "cpu") == "bf16"


def test_cpu_is_measured_once_then_the_cached_answer_is_used(monkeypatch, cache_file):
    calls: list = []
    _fake_measurement(monkeypatch, "bf16", calls)
    assert precision.pick_precision("cpu", cache_file=cache_file) == "bf16"
    assert precision.pick_precision("cpu", cache_file=cache_file) == "bf16"
    assert len(calls) == 1
    cached = json.loads(cache_file.read_text())
    assert cached[precision.cache_key()]["precision"] == "bf16"
    assert cached[precision.cache_key()]["bf16_chars_per_s"] == 200


def test_remeasure_ignores_the_cache(monkeypatch, cache_file):
    calls: list = []
    _fake_measurement(monkeypatch, "fp32", calls)
    cache_file.parent.mkdir(parents=True)
    cache_file.write_text(json.dumps({precision.cache_key(): {"precision": "bf16"}}))
    assert precision.pick_precision("cpu", cache_file=cache_file) == "bf16"
    assert precision.pick_precision("cpu", cache_file=cache_file, remeasure=True) == "fp32"
    assert len(calls) == 1
    assert json.loads(cache_file.read_text())[precision.cache_key()]["precision"] == "fp32"


def test_the_cache_is_keyed_by_cpu_model_and_torch_version(monkeypatch, cache_file):
    key = precision.cache_key()
    assert precision.cpu_model() in key and torch.__version__ in key
    calls: list = []
    _fake_measurement(monkeypatch, "fp32", calls)
    cache_file.parent.mkdir(parents=True)
    other = {"v1|Some Other CPU|torch 9.9|threads 2": {"precision": "bf16"}}
    cache_file.write_text(json.dumps(other))
    assert precision.pick_precision("cpu", cache_file=cache_file) == "fp32"  # another CPU's answer is not ours
    assert len(calls) == 1
    assert set(json.loads(cache_file.read_text())) == {key, *other}  # and it is kept beside ours


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", json.dumps({"x": 1})])
def test_a_damaged_cache_is_measured_again_and_rewritten(monkeypatch, cache_file, content):
    calls: list = []
    _fake_measurement(monkeypatch, "fp32", calls)
    cache_file.parent.mkdir(parents=True)
    cache_file.write_text(content)
    assert precision.pick_precision("cpu", cache_file=cache_file) == "fp32"
    assert len(calls) == 1
    assert json.loads(cache_file.read_text())[precision.cache_key()]["precision"] == "fp32"


def test_the_default_cache_lies_in_the_user_cache_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert precision.cache_path() == tmp_path / "improbable" / "precision.json"


@pytest.mark.parametrize(("fp32_s", "bf16_s", "expected"), [
    (1.0, 0.5, "bf16"),   # twice as fast
    (1.0, 0.95, "fp32"),  # 5 % faster: within noise, fp32 stays
    (1.0, 2.15, "fp32"),  # the Intel host of issue 13: bf16 2.15x slower
])
def test_bf16_is_picked_only_when_clearly_faster(monkeypatch, fp32_s, bf16_s, expected):
    monkeypatch.setattr(precision, "_interleaved_step_times", lambda seconds: (fp32_s, bf16_s, 20))
    record = precision.measure_cpu()
    assert record["precision"] == expected
    assert record["speedup"] == pytest.approx(fp32_s / bf16_s, abs=1e-3)
    assert (record["bf16_chars_per_s"] > record["fp32_chars_per_s"]) == (bf16_s < fp32_s)


def test_bf16_that_fails_to_run_means_fp32(monkeypatch):
    def broken(seconds):
        raise RuntimeError("\"addmm_impl_cpu_\" not implemented for 'BFloat16'")

    monkeypatch.setattr(precision, "_interleaved_step_times", broken)
    record = precision.measure_cpu()
    assert record["precision"] == "fp32" and "not implemented" in record["note"]


@pytest.fixture
def one_thread():
    """One intra-op thread: a busy machine's OpenMP barriers can make a 2-thread step take seconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_a_real_measurement_times_both_and_leaves_the_random_streams_alone(small_step, one_thread):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    record = precision.measure_cpu(seconds=0.2)
    assert torch.equal(torch.rand(3), expected)
    if not precision.bf16_runs("cpu"):  # a CPU without bf16 LSTM kernels (no AVX-512): fp32, and why
        assert record["precision"] == "fp32" and record["note"].startswith("bf16 autocast failed")
        return
    assert record["fp32_chars_per_s"] > 0 and record["bf16_chars_per_s"] > 0
    speedup = record["bf16_chars_per_s"] / record["fp32_chars_per_s"]
    assert record["speedup"] == pytest.approx(speedup, rel=0.05)
    assert record["rounds"] >= 1 and record["conclusive"] == (record["rounds"] >= precision.MIN_ROUNDS)
    clearly_faster = record["conclusive"] and record["speedup"] >= precision.MIN_SPEEDUP
    assert record["precision"] == ("bf16" if clearly_faster else "fp32")
    assert record["cpu"] == precision.cpu_model() and record["torch"] == torch.__version__
    assert record["threads"] == 1 and "|threads 1" in precision.cache_key()


@pytest.mark.parametrize(("capability", "expected"), [((8, 0), "bf16"), ((9, 0), "bf16"), ((7, 5), "fp32")])
def test_cuda_follows_the_gpu_generation(monkeypatch, capability, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: capability)
    monkeypatch.setattr(precision, "measure_cpu", lambda seconds=2.0: pytest.fail("a GPU is not measured"))
    assert precision.pick_precision("cuda:0") == expected


def test_cuda_without_a_gpu_and_other_devices_mean_fp32(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert precision.pick_precision("cuda") == "fp32"
    assert precision.pick_precision("meta") == "fp32"


def test_too_few_rounds_decide_nothing_and_are_not_cached(monkeypatch, cache_file):
    """On an overloaded machine a 2-thread step can take seconds: two rounds showing bf16 1.2x faster (seen
    here at load 13) must not be cached as this CPU's answer."""
    monkeypatch.setattr(precision, "_interleaved_step_times", lambda seconds: (1.2, 1.0, 2))
    record = precision.measure_cpu()
    assert record["precision"] == "fp32" and not record["conclusive"] and "too busy" in record["note"]
    assert precision.pick_precision("cpu", cache_file=cache_file) == "fp32"
    assert not cache_file.exists()
    monkeypatch.setattr(precision, "_interleaved_step_times", lambda seconds: (1.2, 1.0, 12))
    assert precision.pick_precision("cpu", cache_file=cache_file) == "bf16"
    assert json.loads(cache_file.read_text())[precision.cache_key()]["rounds"] == 12
