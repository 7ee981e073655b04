"""Numeric precision and backend settings of a run, decided in one place.

* ``--amp`` autocasts the model's training forward passes to ``--amp_dtype``: ``auto`` is bfloat16 where the
  device computes it natively (CUDA GPUs with ``torch.cuda.is_bf16_supported(including_emulation=False)``,
  i.e. Ampere and later, and the CPU), else float16. bfloat16 has float32's exponent range, so it needs no
  GradScaler (``Precision.scaler`` is then a disabled one); float16 gets one. float16 autocast is refused on
  the CPU. Attacks, validation and evaluation run in float32 (``autocast_off``).
* ``--cudnn_benchmark auto`` lets cuDNN time its algorithms for training, whose batches have one fixed shape
  (the training loader drops the last partial batch), and not for evaluation, whose batch shapes vary (the
  last batch, attack cascades on the samples still standing) and would each pay a new search.
* ``--deterministic``: bit-exact reruns on one machine: cuDNN deterministic and not benchmarking,
  ``torch.use_deterministic_algorithms(True, warn_only=True)`` (an op without a deterministic kernel warns
  instead of failing) and ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` where the environment has not set it.
* ``--channels_last auto``: channels-last weights and activations for CUDA models with 2-D convolutions.
"""
from __future__ import annotations

import os
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
from torch import nn

AMP_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
TRI_STATE = ("auto", "on", "off")
CUBLAS_DETERMINISTIC = ":4096:8"


class PrecisionError(ValueError):
    """A precision setting the device cannot run (names the flag)."""


def bf16_native(device: torch.device) -> bool:
    """Whether ``--amp_dtype auto`` picks bfloat16 on ``device``: CUDA GPUs that compute it natively, and the CPU
    (whose autocast is bfloat16; ``cpu_bf16_native`` says whether it is fast there)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return device.type == "cpu"


def cpu_bf16_native() -> bool:
    """Whether this CPU has bfloat16 instructions (AVX512-BF16 or AMX); without them oneDNN emulates bfloat16 and a
    bf16 training step is several times slower than a float32 one."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def resolve_amp_dtype(choice: str, device: torch.device) -> torch.dtype:
    """The autocast dtype of ``--amp_dtype choice`` on ``device``."""
    if choice == "auto":
        return torch.bfloat16 if bf16_native(device) else torch.float16
    if choice not in AMP_DTYPES:
        raise PrecisionError(f"--amp_dtype {choice}: expected one of auto, {', '.join(AMP_DTYPES)}")
    if choice == "float16" and device.type != "cuda":
        raise PrecisionError(f"--amp_dtype float16 is for CUDA GPUs; this run is on the {device.type.upper()}, where "
                             "autocast runs in bfloat16: use --amp_dtype bfloat16 (or auto)")
    return AMP_DTYPES[choice]


@dataclass(frozen=True)
class Precision:
    """The precision of the training forward passes: ``dtype`` None is float32 (no autocast)."""

    device_type: str
    dtype: torch.dtype | None = None

    @property
    def name(self) -> str:
        return "float32" if self.dtype is None else f"{str(self.dtype).removeprefix('torch.')} autocast"

    def autocast(self) -> AbstractContextManager:
        """The context of a training forward pass (an ``Autocast`` for the objectives)."""
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def scaler(self) -> torch.amp.GradScaler:
        """A GradScaler, enabled for float16 only (bfloat16 gradients do not underflow)."""
        return torch.amp.GradScaler(self.device_type, enabled=self.dtype == torch.float16)


def training_precision(amp: bool, amp_dtype: str, device: torch.device) -> Precision:
    """``--amp`` / ``--amp_dtype`` on ``device``."""
    return Precision(device.type, resolve_amp_dtype(amp_dtype, device) if amp else None)


def autocast_off(device_type: str) -> AbstractContextManager:
    """A float32 region inside any autocast on ``device_type`` (nothing to do where autocast does not exist)."""
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type=device_type, enabled=False)
    return nullcontext()


@dataclass(frozen=True)
class BackendSettings:
    """What ``configure_backends`` set."""

    cudnn_benchmark: bool
    deterministic: bool


def configure_backends(cudnn_benchmark: str, deterministic: bool, training: bool) -> BackendSettings:
    """Set cuDNN's benchmark / deterministic modes and torch's deterministic algorithms for this process.

    ``cudnn_benchmark``: auto (on for training, off for evaluation), on or off; ``deterministic`` overrides it
    to off and must not meet an explicit on."""
    if cudnn_benchmark not in TRI_STATE:
        raise PrecisionError(f"--cudnn_benchmark {cudnn_benchmark}: expected one of {', '.join(TRI_STATE)}")
    if deterministic and cudnn_benchmark == "on":
        raise PrecisionError("--deterministic and --cudnn_benchmark on contradict each other: benchmarking picks "
                             "algorithms by timing, so two runs may pick different ones")
    benchmark = not deterministic and (cudnn_benchmark == "on" or (cudnn_benchmark == "auto" and training))
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_DETERMINISTIC)
    torch.backends.cudnn.benchmark = benchmark
    torch.backends.cudnn.deterministic = deterministic
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    return BackendSettings(benchmark, deterministic)


def has_conv2d(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def use_channels_last(choice: str, device: torch.device, model: nn.Module) -> bool:
    """``--channels_last``: auto is on for CUDA models with 2-D convolutions (Tensor Core convolutions want
    NHWC), off elsewhere (the CPU's convolutions gain little from it and 1-D ones nothing)."""
    if choice not in TRI_STATE:
        raise PrecisionError(f"--channels_last {choice}: expected one of {', '.join(TRI_STATE)}")
    if choice == "auto":
        return device.type == "cuda" and has_conv2d(model)
    return choice == "on"
