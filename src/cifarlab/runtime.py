"""Where and how tensors run: device choice, bfloat16 autocast, memory format, threads, malloc."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import platform

import torch

from cifarlab.errors import CifarlabError


class DeviceError(CifarlabError, RuntimeError):
    """A device that was asked for but is not there."""


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA when available, else CPU; a device that is not there is a one-line error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise DeviceError(f"--device {name!r}: not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"--device {name} was asked for but no CUDA GPU is available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(f"--device {name}: there are only {torch.cuda.device_count()} CUDA GPUs")
    elif device.type != "cpu":
        raise DeviceError(f"--device {name}: cifarlab runs on cpu or cuda, not {device.type}")
    return device


@functools.cache
def native_bf16(device: torch.device) -> bool:
    """Whether the device computes bfloat16 natively (emulated bf16 on CPU is slower than fp32).

    Measured on a 2-core AVX-512 CPU without the bf16 instructions (benchmarks/throughput.py):
    autocast made the paper network 2.9x and the quick preset's network 2.5x slower than float32.
    """
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    forced = os.environ.get("CIFARLAB_NATIVE_BF16")  # "0" or "1": act as a CPU without / with it (tests)
    if forced in ("0", "1"):
        return forced == "1"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = cpuinfo.read()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def use_amp(setting: str | bool, device: torch.device) -> bool:
    """Resolve a config's amp setting (auto, bf16, off; or an already resolved bool) for a device."""
    if isinstance(setting, bool):
        return setting
    return setting == "bf16" or (setting == "auto" and native_bf16(device))


def autocast_dtype(setting: str | bool, device: torch.device) -> str:
    """The dtype a config's amp setting computes in on a device: "bfloat16" or "float32".

    Recorded in config.json, results.json and checkpoints, so a run says what it did, never "auto".
    """
    return "bfloat16" if use_amp(setting, device) else "float32"


def processor_name(device: torch.device) -> str:
    """The GPU's name, or the CPU model as lscpu shows it, for every figure a run records."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def autocast(device: torch.device, enabled: bool):
    """bfloat16 autocast on the device, or a no-op."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def memory_format(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format


def tune_for_training(device: torch.device) -> None:
    """On CUDA, let cuDNN time its convolution algorithms once per input shape and keep the fastest:
    a training run repeats the same few shapes thousands of times.

    Left off under torch.use_deterministic_algorithms: the algorithm picked by timing can change
    from run to run, and the rounding with it.
    """
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not torch.are_deterministic_algorithms_enabled()


def set_cpu_threads() -> int:
    """Use one intra-op thread per physical core unless the user set OMP_NUM_THREADS."""
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))
    return torch.get_num_threads()


# glibc's malloc serves every allocation over 32 MB with a fresh mmap and unmaps it when freed. A
# training step on a CPU allocates and frees activations of about 100 MB (fast at batch 1000: one
# 1000 x 48 x 32 x 32 bfloat16 map is 98 MB), so each step made the kernel fault in and zero
# about 200,000 new 4 KB pages: 25-30% of the CPU's time went to the system, not to training.
# Never mmapping and never trimming keeps freed memory in the process for the next step. One eager
# fast step at batch 1000 (bf16, 2-core Xeon with AMX, torch 2.13.0+cpu): 1.35-1.61 s -> 0.93-1.06 s
# (1.3-1.7x), 208,000 -> under 600 page faults; benchmarks/throughput.py with and without
# (CIFARLAB_MALLOC=system): airbench94 1.42x, fast at full resolution 1.14x more images/s.
# The price: the process keeps what it freed until it exits, as PyTorch's CUDA caching allocator
# does, with some fragmentation on top: 1.4 GB resident over sixteen such steps against 0.8-0.9 GB
# without. jemalloc or tcmalloc (LD_PRELOAD) keep freed memory too and are used as they are when
# preloaded: this only tunes glibc's own malloc.
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # mallopt's parameter numbers (malloc.h)


@functools.cache
def keep_freed_memory() -> bool:
    """Tell glibc's malloc to keep freed memory for reuse (above); True if it now does.

    Process-wide and for the process's life; CIFARLAB_MALLOC=system leaves malloc as it is. Off
    Linux's glibc (musl, macOS, Windows) nothing is changed and it returns False.
    """
    if os.environ.get("CIFARLAB_MALLOC") == "system" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))


def machine_facts(device: torch.device) -> dict:
    """Where a figure was measured, beside every one that results.json or a benchmark records: the
    device (with the GPU's name), the processor (lscpu's model name or the GPU's), torch, CPU
    threads, and whether malloc keeps freed memory (CPU; asking sets it, once per process, as
    training does)."""
    return {
        "device": str(device) if device.type == "cpu" else f"{device} ({torch.cuda.get_device_name(device)})",
        "processor": processor_name(device),
        "torch_version": torch.__version__,
        "threads": torch.get_num_threads(),
        "malloc_keeps_freed_memory": keep_freed_memory() if device.type == "cpu" else None,
    }
