"""int8 serving of a character LSTM's *step* path (issue 14): `quantize_for_serving(model)`.

Batch-1 stepping reads every weight once per character, so it is bound by moving weights, not by arithmetic:
int8 weights are a quarter of the float32 bytes. The returned object keeps the model interface the sampler
and the serving engine use (`init_state`, `step`, `forward`, `eval`, `config`), so neither needs a branch:

    serving = quantize_for_serving(model)          # model: a float32 char-rnn LSTM with a full head
    logits, state = serving.step(idx, state)        # int8 weights, float32 state and logits
    hidden, state = serving(prompt_ids, state)      # prefill: the float model's fused nn.LSTM, unchanged

What changes in a step:
- Layer 0's input projection becomes a table lookup: embedding · W_ih0ᵀ + both biases, precomputed per
  character in float32 (exact, and one matmul fewer per step).
- Every other matmul (layer 0's recurrent weights, layer k's [W_ih | W_hh] on [x, h] as one matmul, the
  output layer) is a dynamically quantised linear: int8 weights with a per-output-row scale, the activation
  quantised per call (fbgemm/x86 kernels via `torch.ao.nn.quantized.dynamic.Linear`), int32 accumulation.
- The LSTM gate arithmetic stays in float32, and so does the cell state.

Where it pays (bench/generation.py measures both, in one process, interleaved): batch-1 stepping on CPU. Keep
it only where it is faster *and* the held-out loss stays within 0.01 nats of float32 (`held_out_loss`).
Batched stepping is compute-bound and the float kernels are already good there, so serve batches in float.

Only torch: the trainer, the workers and the benches can all import it.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear

from .model import LanguageModel, ModelConfig, RecurrentLM, State


def _int8_linear(weight: torch.Tensor, bias: torch.Tensor | None) -> DynamicQuantizedLinear:
    """A dynamically quantised linear with int8 weights, one scale per output row (per-channel keeps the
    rows with small weights precise, which a single per-tensor scale would flatten)."""
    weight = weight.detach().float()
    out_features, in_features = weight.shape
    scales = weight.abs().amax(dim=1).clamp(min=1e-8) / 127.0
    with warnings.catch_warnings():  # torch 2.13 marks quantized tensors deprecated; still the only fbgemm path
        warnings.filterwarnings("ignore", message=".*quantize_per.*deprecated")
        qweight = torch.quantize_per_channel(weight, scales.double(), torch.zeros(out_features, dtype=torch.long),
                                             axis=0, dtype=torch.qint8)
    linear = DynamicQuantizedLinear(in_features, out_features, bias_=bias is not None, dtype=torch.qint8)
    linear.set_weight_bias(qweight, None if bias is None else bias.detach().float())
    return linear


class QuantizedCharLSTM(nn.Module):
    """A float32 char LSTM whose `step` runs on int8 weights; see the module docstring."""

    def __init__(self, model: RecurrentLM):
        super().__init__()
        config: ModelConfig = model.config
        if not isinstance(model, RecurrentLM) or config.cell != "lstm":
            raise ValueError("int8 serving supports LSTM character models only (got "
                             f"{config.family} / {config.cell})")
        head_proj = getattr(model.head, "proj", None)
        if getattr(model.head, "adaptive", False) or not isinstance(head_proj, nn.Linear):
            raise ValueError(f"int8 serving needs a full softmax head (got head {config.head!r})")
        if model.embed.weight.dtype != torch.float32:
            raise ValueError("quantize a float32 model (load the checkpoint without dtype=bfloat16)")
        self.config = config
        self.float_model = model.eval()  # prefill (forward) and the reference numerics
        first = model.layers[0]
        with torch.no_grad():
            table = F.linear(model.embed.weight.float(), first.weight_ih_l0.float(),
                             first.bias_ih_l0.float() + first.bias_hh_l0.float())
        self.register_buffer("input_gates0", table.contiguous())  # (vocab, 4H): layer 0's x-side, per character
        self.recurrent0 = _int8_linear(first.weight_hh_l0, None)
        self.upper = nn.ModuleList(
            _int8_linear(torch.cat([layer.weight_ih_l0, layer.weight_hh_l0], 1), layer.bias_ih_l0 + layer.bias_hh_l0)
            for layer in model.layers[1:])
        self.out = _int8_linear(head_proj.weight, head_proj.bias)

    @property
    def head(self):
        return self.float_model.head

    def added_bytes(self) -> int:
        """Memory this holds beside the float model it wraps: the input table and the int8 linears
        (their packed weights are not parameters, so model_bytes does not see them)."""
        total = self.input_gates0.numel() * self.input_gates0.element_size()
        for linear in (self.recurrent0, *self.upper, self.out):
            weight, bias = linear.weight(), linear.bias()
            total += weight.numel() + weight.q_per_channel_scales().numel() * 8
            total += 0 if bias is None else bias.numel() * bias.element_size()
        return total

    def init_state(self, batch_size: int, device: torch.device | str = "cpu") -> State:
        return self.float_model.init_state(batch_size, device)

    def forward(self, idx: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        # Prefill is batched over the prompt's length, so compute-bound: the float fused LSTM is the fast path
        return self.float_model(idx, state)

    def loss(self, idx: torch.Tensor, targets: torch.Tensor, state: State | None = None):
        return self.float_model.loss(idx, targets, state)

    @staticmethod
    def _cell(gates: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        i, f, g, o = gates.chunk(4, 1)  # nn.LSTM's gate order
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c

    def step(self, idx: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        # One intra-op thread for the int8 kernels: measured on the 2-core EPYC VM, fbgemm's dynamic linear at
        # batch 1 took 39 us of CPU on one thread and 350-6,700 us (wall 0.9-13 ms) on two, its threads
        # spinning on a loaded machine, while float32 mm keeps small products on one thread by itself.
        threads = torch.get_num_threads()
        if threads == 1:
            return self._step(idx, state)
        torch.set_num_threads(1)
        try:
            return self._step(idx, state)
        finally:
            torch.set_num_threads(threads)

    def _step(self, idx: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        h_all, c_all = state
        h, c = self._cell(self.input_gates0[idx] + self.recurrent0(h_all[:, 0]), c_all[:, 0])
        hs, cs = [h], [c]
        for i, layer in enumerate(self.upper, start=1):
            h, c = self._cell(layer(torch.cat([h, h_all[:, i]], 1)), c_all[:, i])
            hs.append(h)
            cs.append(c)
        return self.out(h), (torch.stack(hs, 1), torch.stack(cs, 1))


def quantize_for_serving(model: LanguageModel) -> QuantizedCharLSTM:
    """`model` with int8 step weights and the same init_state/step/forward interface (CPU only: the int8
    kernels are fbgemm/x86's). Raises ValueError for a model it cannot serve in int8, so a caller can fall back."""
    if next(model.parameters()).device.type != "cpu":
        raise ValueError("int8 serving runs on CPU; on a GPU serve the float model")
    return QuantizedCharLSTM(model)  # type: ignore[arg-type]


@torch.inference_mode()
def held_out_loss(model, ids: torch.Tensor, batch_size: int = 1) -> float:
    """Mean next-character loss in nats, by *stepping* (the serving path, not the fused forward): `ids`
    split into `batch_size` contiguous streams, each from a zero state. batch_size 1 measures exactly what a
    single stream serves (dynamic quantisation scales the activations per call, so the batch shapes them)."""
    length = (len(ids) - 1) // batch_size
    if length < 1:
        raise ValueError("held_out_loss needs more ids than streams")
    inputs = ids[: length * batch_size].view(batch_size, length)
    targets = ids[1: length * batch_size + 1].view(batch_size, length)
    state = model.init_state(batch_size)
    total = 0.0
    for t in range(length):
        logits, state = model.step(inputs[:, t], state)
        total += F.cross_entropy(logits.float(), targets[:, t], reduction="sum").item()
    loss = total / (length * batch_size)
    if not math.isfinite(loss):
        raise ValueError("held-out loss is not finite")
    return loss
