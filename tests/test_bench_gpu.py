"""bench/speed/gpu.py cannot measure anything without CUDA, but its CPU-side paths (data, both models, autocast,
the quality loop, streamed evaluation, the sampler) run under --dry-run, so they are not dead code."""

from __future__ import annotations

import json

import pytest
import torch

from bench.speed import gpu
from trainer.precision import bf16_runs


def test_dry_run_on_cpu_runs_every_path(tmp_path):
    out = tmp_path / "gpu.json"
    assert gpu.main(["--dry-run", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["dry_run"] is True and "dry run" in report["device"]
    precisions = {"fp32", "bf16"} if bf16_runs("cpu") else {"fp32"}  # no bf16 LSTM kernels without AVX-512
    assert {(r["model"], r["precision"]) for r in report["throughput"]} == {
        (model, p) for model in ("product (per-layer fused)", "bare nn.LSTM") for p in precisions}
    assert all(r["chars_s"] > 0 for r in report["throughput"])
    assert report["quality"]["steps"] == 2 and report["quality"]["val_streamed_nats"] > 0
    assert [r["streams"] for r in report["generation"]] == [1, 4]
    assert all(r["aggregate_chars_s"] > 0 for r in report["generation"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown where CUDA is absent")
def test_without_cuda_it_says_so_and_exits_2(capsys):
    assert gpu.main([]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_streamed_loss_carries_state():
    torch.manual_seed(0)
    from trainer.model import ModelConfig, build_model
    model = build_model(ModelConfig(family="char-rnn", vocab_size=10, n_layers=1, n_embd=4, n_hidden=8)).eval()
    ids = torch.randint(0, 10, (301,))
    # chunking must not change a streamed loss: the state crosses chunk boundaries
    assert gpu.streamed_loss(model, ids, chunk=7) == pytest.approx(gpu.streamed_loss(model, ids, chunk=1000),
                                                                   abs=1e-5)
