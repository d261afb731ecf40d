"""Where and in what precision to run: the device, the precision (autocast, loss scaling), CPU memory, syncing."""
from __future__ import annotations

import contextlib
import ctypes
import platform
import sys
import warnings
from typing import NamedTuple

import torch

from lib.common import UserError


def pick_device(name: str) -> torch.device:
    """'auto' picks CUDA, then Apple's MPS, then the CPU; an explicit choice must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was requested but no CUDA GPU is available (try --device auto or cpu)")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device mps was requested but Apple's MPS backend is not available "
                        "(try --device auto or cpu)")
    if name not in ("cpu", "cuda", "mps"):
        raise UserError(f"unknown device {name!r}: choose auto, cpu, cuda or mps")
    return torch.device(name)


PRECISIONS = ("auto", "bf16", "fp16", "fp32")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
LABELS = {"bf16": "bf16 autocast", "fp16": "fp16 autocast", "fp32": "fp32"}  # what reports and tables call each


def cpu_has_bf16() -> bool:
    """bf16 in the CPU's hardware: on x86 AVX512-BF16 or AMX, on Arm the bf16 instructions (e.g. Neoverse V1).

    oneDNN also "supports" bf16 on plain AVX512 by converting to fp32, which is no faster than fp32 and less accurate,
    so that does not count.
    """
    try:
        if platform.machine().lower() in ("x86_64", "amd64", "x86", "i386", "i686"):
            return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast_available(device: torch.device, precision: str) -> bool:
    """Whether torch autocasts to this dtype on this device type (it warns and turns itself off where not)."""
    if precision == "fp32":
        return True
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            torch.autocast(device.type, dtype=DTYPES[precision])
        except (RuntimeError, ValueError):
            return False
    return not caught


class Precision(NamedTuple):
    name: str  # "bf16", "fp16" or "fp32"
    reason: str  # for the start-up line: "fp16 + loss scaling: Tesla T4, compute capability 7.5, no bf16 convolutions"
    emulated: bool  # asked for where the hardware lacks it: slower than fp32


def choose_precision(device: torch.device, requested: str = "auto") -> Precision:
    """The precision to train and evaluate in, and why.

    What "auto" picks, and why:

    | device                                   | auto  | reason                                                     |
    | ---------------------------------------- | ----- | ---------------------------------------------------------- |
    | CUDA, compute capability >= 8.0 (A100,   | bf16  | bf16 tensor cores; fp32's range, so no loss scaling        |
    |   H100, RTX 30xx/40xx)                   |       |                                                            |
    | CUDA 7.x (V100, T4, RTX 20xx)            | fp16  | fp16 tensor cores; cuDNN has no bf16 convolutions below    |
    |                                          |       |   8.0; fp16's narrow range needs loss scaling              |
    | CUDA 5.3, 6.0, 6.2 (Jetson, P100)        | fp16  | fp16 arithmetic at twice fp32's rate, no tensor cores      |
    | other CUDA (GTX 10xx at 6.1, Maxwell)    | fp32  | fp16 at a fraction of fp32's rate                          |
    | CPU with AVX512-BF16, AMX or Arm bf16    | bf16  | bf16 dot products in hardware                              |
    | other CPUs (AVX2 laptops, most clouds)   | fp32  | bf16 and fp16 would be emulated: slower than fp32          |
    | Apple MPS                                | fp32  | the one precision PyTorch documents as working on every    |
    |                                          |       |   macOS; its autocast is newer and not measured here       |

    An explicit bf16 or fp16 is honoured where torch can autocast to it (slow where emulated: the reason says so);
    fp16 is always trained with a loss scaler (torch.amp.GradScaler).
    """
    if requested not in PRECISIONS:
        raise UserError(f"unknown precision {requested!r}: choose {', '.join(PRECISIONS)}")
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        where = f"{torch.cuda.get_device_name(device)}, compute capability {major}.{minor}"
        fast_fp16 = major >= 7 or (major, minor) in ((5, 3), (6, 0), (6, 2))
        fast = {"bf16": major >= 8, "fp16": fast_fp16}
        auto, why = (("bf16", "bf16 tensor cores") if major >= 8 else
                     ("fp16", "no bf16 convolutions") if major == 7 else
                     ("fp16", "fast fp16, no bf16") if fast_fp16 else
                     ("fp32", "no fast fp16 or bf16"))
    elif device.type == "cpu":
        where = f"{platform.machine() or 'this'} CPU"
        fast = {"bf16": cpu_has_bf16(), "fp16": _cpu_has_fp16()}
        auto, why = ("bf16", "bf16 instructions") if fast["bf16"] else ("fp32", "no bf16 instructions")
    else:
        where, fast = "Apple MPS", {"fp16": True}  # Apple GPUs compute in fp16 natively
        auto, why = "fp32", "its autocast is not measured here"
    precision = auto if requested == "auto" else requested
    if not autocast_available(device, precision):
        raise UserError(f"--precision {precision} is not available on {device.type} (torch {torch.__version__} has "
                        f"no {precision} autocast there): use --precision auto or fp32")
    what = {"bf16": "bf16 autocast", "fp16": "fp16 + loss scaling", "fp32": "fp32"}[precision]
    if precision != "fp32" and not fast.get(precision, False):
        return Precision(precision, f"{what}: {where}, where {precision} is emulated and much slower than fp32", True)
    return Precision(precision, f"{what}: {where}, {why if requested == 'auto' else 'as asked'}", False)


def evaluation_precision(device: torch.device, requested: str) -> str:
    """The precision test.py and predict.py evaluate in; a note on stderr where it is emulated, so slow."""
    precision = choose_precision(device, requested)
    if precision.emulated:
        print(f"note: {precision.reason}", file=sys.stderr)
    return precision.name


def _cpu_has_fp16() -> bool:
    """fp16 dot products in the CPU's hardware (AMX-FP16, Sapphire Rapids' successors); elsewhere fp16 is emulated."""
    try:
        return bool(torch.cpu._is_amx_fp16_supported())
    except AttributeError:
        return False


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Autocast to the chosen precision (choose_precision); fp32 runs as it is."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision])


def loss_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """fp16 gradients underflow without loss scaling; the scaler is a pass-through in the other precisions."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


def keep_freed_memory() -> None:
    """Let glibc keep freed memory for the next batch instead of handing it back to the OS (elsewhere a no-op).

    By default glibc maps every block over 32 MiB (a batch's activations) afresh and unmaps it when freed, so each
    batch faults all that memory back in, zero-filled page by page; large batches suffer most (BENCHMARKS.md, "CPU
    memory layout and allocator"). PyTorch's CPU tuning guide swaps in jemalloc or tcmalloc for this; two mallopt
    settings do it with the C library already there. Memory is still reused within the process.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl, for one)
        return
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # from glibc's malloc.h
    mallopt(M_MMAP_MAX, 0)  # large blocks come from the heap, like small ones, where freed ones are reused
    mallopt(M_TRIM_THRESHOLD, 2**31 - 1)  # and the heap's free top is not given back to the OS


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so wall-clock timings measure the work itself."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
