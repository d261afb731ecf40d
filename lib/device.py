"""Where and in what precision to run: device choice, bf16 autocast, the CPU allocator setting, synchronisation."""
from __future__ import annotations

import contextlib
import ctypes
import platform
import sys

import torch

from lib.cli import UserError


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


def bf16_supported(device: torch.device) -> bool:
    """Whether bf16 autocast pays off: on CUDA GPUs and on CPUs with bf16 in hardware; elsewhere it is emulated.

    On x86 that means AVX512-BF16 or AMX: oneDNN also "supports" bf16 on plain AVX512 by converting to fp32,
    which is no faster than fp32 and less accurate.
    """
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:
            if platform.machine().lower() in ("x86_64", "amd64", "x86", "i386", "i686"):
                return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())  # Arm: bf16 instructions (e.g. Neoverse V1)
        except (AttributeError, RuntimeError):
            return False
    return False


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast where it helps (see bf16_supported), otherwise plain fp32."""
    if enabled and bf16_supported(device):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


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
