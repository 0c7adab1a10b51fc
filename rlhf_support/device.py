"""Device and precision: which device, bf16 / fp16 with loss scaling / fp32, seeds, clocks, and the fused GELU."""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from .errors import RLHFError


@dataclass(frozen=True)
class Precision:
    """How tensors are computed: the autocast dtype (None = fp32) and whether losses are scaled."""

    device: torch.device
    dtype: torch.dtype | None
    use_grad_scaler: bool

    @property
    def name(self) -> str:
        """'bf16', 'fp16' or 'fp32'."""
        return {torch.bfloat16: "bf16", torch.float16: "fp16", None: "fp32"}[self.dtype]

    def autocast(self) -> contextlib.AbstractContextManager:
        """A context that runs matrix products in the reduced dtype (a no-op in fp32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def grad_scaler(self, init_scale: float = 2.0**16) -> torch.amp.GradScaler:
        """A loss scaler, active only for fp16 (whose small gradients would underflow to 0).

        The loss is multiplied by the scale before backward; when a gradient overflows (inf or NaN) the
        scaler skips that optimizer step and halves the scale, and it doubles it after 2,000 good steps.
        """
        return torch.amp.GradScaler(self.device.type, init_scale=init_scale, enabled=self.use_grad_scaler)


FP32 = Precision(
    device=torch.device("cpu"), dtype=None, use_grad_scaler=False
)  # no mixed precision: the one way to say it


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run `model` in eval mode (dropout off) inside the block, then give it back the mode it had."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> CUDA when present, else CPU; 'cuda' without a GPU is an error that says what to do."""
    if name == "cuda" and not torch.cuda.is_available():
        raise RLHFError(
            "device='cuda' but PyTorch sees no CUDA GPU. In Colab: Runtime > Change runtime "
            "type > T4 GPU. Elsewhere: set RLHF_DEVICE=cpu (slow) or RLHF_PROFILE=cpu."
        )
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def cpu_supports_bf16() -> bool:
    """True when this CPU has native bf16 matrix instructions (AVX512-BF16 or AMX)."""
    capability = torch.backends.cpu.get_cpu_capability() if hasattr(torch.backends, "cpu") else ""
    if "AMX" in capability:
        return True
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def resolve_precision(device: torch.device, name: str = "auto", profile: str = "full") -> Precision:
    """Pick the precision: bf16 on Ampere or newer, fp16 + loss scaling on older GPUs (T4), fp32 on CPU (see below).

    The 'cpu' profile uses bf16 autocast on CPUs with native bf16 (measured faster there). fp16 is also
    accepted on a CPU when asked for by name, so that its loss-scaling path can be tested without a GPU.
    """
    if name == "auto":
        if device.type == "cuda":
            name = "bf16" if torch.cuda.get_device_capability(device)[0] >= 8 else "fp16"
        else:
            name = "bf16" if profile == "cpu" and cpu_supports_bf16() else "fp32"
    # fp16 on a CPU runs the T4's code path (fp16 autocast, loss scaling, skipped steps) where a test can reach
    # it; PyTorch supports both on the CPU, though slowly. 'auto' never picks it there.
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[name]
    return Precision(device=device, dtype=dtype, use_grad_scaler=(name == "fp16"))


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and PyTorch (CPU and every GPU); returns a CPU generator for data order."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    return torch.Generator().manual_seed(seed)


def describe_device(device: torch.device, precision: Precision) -> str:
    """One line naming the device and the precision, for the setup cell."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        where = f"CUDA GPU {props.name} ({props.total_memory / 2**30:.0f} GiB)"
    else:
        threads = torch.get_num_threads()
        where = f"CPU ({threads} thread{'s' if threads != 1 else ''})"
    return f"device: {where}; precision: {precision.name}" + (" with loss scaling" if precision.use_grad_scaler else "")


def device_clock(device: torch.device) -> float:
    """time.perf_counter() once the device's queued work is done (CUDA runs asynchronously), for timers."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def use_fused_gelu(model: nn.Module) -> nn.Module:
    """Swap GPT-2's GELU, which runs as eight elementwise tensor ops, for PyTorch's one-kernel version, in place.

    Both compute 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))) and agree to ~1e-7; the fused one is
    2-5x faster (backward, forward), which matters on a CPU, where a small model spends much of its time in such ops.
    The loaders of this module call it; the saved config still names GPT-2's own "gelu_new".
    """
    from transformers.activations import NewGELUActivation

    for module in list(model.modules()):
        for name, child in module.named_children():
            if isinstance(child, NewGELUActivation):
                setattr(module, name, nn.GELU(approximate="tanh"))
    return model


def count_parameters(model: nn.Module) -> int:
    """Number of parameters."""
    return sum(p.numel() for p in model.parameters())
