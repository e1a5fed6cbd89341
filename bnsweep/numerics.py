"""A trial's numerics, pinned before it runs and recorded in its `trials` row: the training step's precision, TF32,
cuDNN's algorithm choice and deterministic algorithms; and full fp32 for everything that measures.

Why: torch runs cuDNN convolutions in TF32 by default on an Ampere or later GPU (cudnn.conv.fp32_precision is
"tf32"), which keeps 10 mantissa bits of each input; the probes' small-eta gradient differences, the BatchNorm
identity at a tolerance of 1e-3 and Lanczos all feel that. So each trial sets every flag itself (a Ray worker that
ran another trial keeps nothing of it), and records what was in force:
  fp32  TF32 off for matmuls and cuDNN (the paper's protocol, the default)
  tf32  TF32 on for both (Ampere and later GPUs; a CPU has no TF32 and computes in fp32)
  bf16  TF32 off; the forward under torch.autocast(bfloat16), its output cast to fp32 for the loss; weights,
        gradients and SGD stay fp32
`deterministic`: torch.use_deterministic_algorithms(True), cudnn.deterministic, and CUBLAS_WORKSPACE_CONFIG=:4096:8
(cuBLAS reads it when the process first uses it: an existing value is kept, and recorded). cudnn.benchmark is
always off: it chooses convolution algorithms by timing them, so two runs of one trial may differ.

torch 2.9 and later set TF32 through fp32_precision ("ieee" or "tf32") per backend and operator; a process that
mixes it with the legacy allow_tf32 flags or set_float32_matmul_precision gets a RuntimeError from the readers of
either. This module uses the new API only.

Probes and evaluations measure in full fp32 (`measuring`: TF32 off, autocast off). A probe step of a lowered
precision (tf32, bf16) is run twice: the step itself, which trains, then the same step again in fp32 from the same
weights, batch and noise (`fp32_rerun`), on which the probes' hooks fire and whose loss and gradients they read.
Everything the rerun changes is put back (running statistics, the noise generator, the step's gradients), so the
curves are those of the same trial with probes off, and a probe's rows at step t are those of an fp32 run at the
same weights.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any

import torch

from bnsweep.config import PRECISIONS  # noqa: F401  (the choices, defined with the option)

CUBLAS_WORKSPACE = ":4096:8"  # PyTorch's reproducibility notes: :4096:8 or :16:8


def set_tf32(value: str) -> None:
    """TF32 ("tf32") or full fp32 ("ieee") for cuBLAS matmuls and cuDNN convolutions (and RNNs, so that no reader
    of the cuDNN-wide flag sees a mix)."""
    torch.backends.cuda.matmul.fp32_precision = value
    torch.backends.cudnn.conv.fp32_precision = value
    torch.backends.cudnn.rnn.fp32_precision = value


def tf32_state() -> tuple[str, str, str]:
    return (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision,
            torch.backends.cudnn.rnn.fp32_precision)


def recorded() -> dict[str, Any]:
    """The numerics in force in this process, as the `trials` columns name them."""
    matmul, conv, _ = tf32_state()
    return {"matmul_fp32_precision": matmul, "conv_fp32_precision": conv,
            "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
            "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
            "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG")}


class Numerics:
    """One trial's numerics on its device. Building it pins the process's flags (pin)."""

    def __init__(self, precision: str, deterministic: bool, device: torch.device):
        self.precision, self.deterministic, self.device = precision, deterministic, device
        self.lowered = precision != "fp32"  # the step computes in less than fp32: probes rerun it
        self.pin()

    def pin(self) -> None:
        set_tf32("tf32" if self.precision == "tf32" else "ieee")
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = self.deterministic
        if self.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
        torch.use_deterministic_algorithms(self.deterministic)

    def forward(self, model: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
        """What the training step calls for the model's outputs: the model itself, or under bf16 the model under
        autocast with its output cast to fp32 (the loss is computed in fp32)."""
        if self.precision != "bf16":
            return model

        def forward(x: torch.Tensor) -> torch.Tensor:
            with torch.autocast(self.device.type, dtype=torch.bfloat16):
                return model(x).float()
        return forward

    def reruns(self, t: int, every: int) -> bool:
        """Whether step t is rerun in fp32 for the probes: a probe step, or the step after one (activations read
        its per-channel moments), in a lowered precision."""
        return self.lowered and every > 0 and t % every in (0, 1)

    @contextlib.contextmanager
    def measuring(self) -> Iterator[None]:
        """Full fp32 while a probe or an evaluation runs: TF32 off, autocast off; the flags put back after."""
        if not self.lowered:
            yield
            return
        saved = tf32_state()
        set_tf32("ieee")
        try:
            with torch.autocast(self.device.type, enabled=False):
                yield
        finally:
            torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision, \
                torch.backends.cudnn.rnn.fp32_precision = saved

    @contextlib.contextmanager
    def fp32_rerun(self, model: torch.nn.Module, params: list[torch.Tensor], generators: list[torch.Generator],
                   started: list[torch.Tensor]) -> Iterator[None]:
        """Around step t's rerun in full fp32, after the step itself ran: the generators go back to the states the
        step `started` from (the same noise is drawn again); afterwards the running statistics, the generators'
        states and the step's gradients are those the step left, for the optimizer's update."""
        buffers = [b.clone() for b in model.buffers()]
        ended = [g.get_state() for g in generators]
        grads = [p.grad for p in params]
        for g, state in zip(generators, started, strict=True):
            g.set_state(state)
        try:
            with self.measuring():
                yield
        finally:
            with torch.no_grad():
                for b, saved in zip(model.buffers(), buffers, strict=True):
                    b.copy_(saved)
            for g, state in zip(generators, ended, strict=True):
                g.set_state(state)
            for p, grad in zip(params, grads, strict=True):
                p.grad = grad
