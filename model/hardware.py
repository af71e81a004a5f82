"""The hardware a run is on: precision resolution (CPU bf16 only where the CPU has bf16
instructions), and nominal peak FLOP/s and watts for MFU and the energy estimate."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

# Nominal peaks for MFU. CPU: 2.5 GHz x 32 fp32 FLOP/cycle (AVX2: 2 FMA units x 8 lanes x 2) per
# core = 80 GFLOP/s per core. Override with LLMFLOW_PEAK_FLOPS (per process).
GPU_PEAK_BF16 = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10": 125e12,
    "4090": 165e12,
}
CPU_PEAK_PER_CORE = 80e9
# Nominal power for the energy estimate (watts per process): CPU 10 W per core, GPU board power.
GPU_WATTS = {"H200": 700, "H100": 700, "A100": 400, "L40S": 350, "A10": 150, "4090": 450}
CPU_WATTS_PER_CORE = 10.0


def cpu_native_bf16() -> bool | None:
    """Whether this CPU has bf16 dot-product instructions (x86 AVX512-BF16 or AMX, Arm BF16);
    None where /proc/cpuinfo is not there to say. Without them bf16 matmuls are emulated and
    slower than fp32."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    words = set(info.split())
    return bool(words & {"avx512_bf16", "amx_bf16", "bf16"})


def resolve_precision(mp: str) -> str:
    """'auto' -> bf16 on GPUs that support it, fp16 on older GPUs, 'no' on CPU.

    On a CPU, bf16 autocast only pays where the CPU multiplies bf16 natively (AVX512-BF16, AMX,
    Arm BF16: ~25% more pretraining steps in the demo's budget); elsewhere it is emulated and
    slower than fp32, so an explicit 'bf16' falls back to fp32 there, with a warning. fp16
    autocast is GPU-only."""
    if mp != "auto":
        if mp in ("bf16", "fp16") and not torch.cuda.is_available():
            if mp == "bf16" and cpu_native_bf16() is False:
                warnings.warn(
                    "mixed_precision bf16 on a CPU without bf16 instructions (AVX512-BF16, AMX, "
                    "Arm BF16) would be emulated and slower than fp32: training in fp32",
                    stacklevel=2,
                )
                return "no"
            return "bf16" if mp == "bf16" else "no"
        return mp
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


def hardware() -> tuple[str, float, float]:
    """(description, nominal peak FLOP/s, nominal watts) for one process."""
    peak = float(os.environ.get("LLMFLOW_PEAK_FLOPS") or 0.0)
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        key = next((k for k in GPU_PEAK_BF16 if k in name), None)
        return name, peak or GPU_PEAK_BF16.get(key, 100e12), GPU_WATTS.get(key, 300)
    cores = torch.get_num_threads()
    return f"CPU x{cores} threads", peak or cores * CPU_PEAK_PER_CORE, cores * CPU_WATTS_PER_CORE
