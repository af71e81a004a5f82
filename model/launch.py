"""Run a training module under `accelerate launch`: the command, the machine check, the stream.

`command` turns a LaunchConfig (pretrain or finetune section) into the `accelerate launch` line
that runs `python -m <module> --config <job.json>` on this machine: `num_processes` processes
here, `num_processes * num_machines` in all, machine 0 at `main_process_ip:main_process_port`.
Precision and the FSDP plugin are set by the module itself (model/train.py `make_accelerator`),
so the same line serves ddp and fsdp, CPU (gloo) and GPUs (nccl).

`run` streams the subprocess's lines: `@@progress {json}` lines go to `on_progress`, an
`@@error <message>` line becomes the RuntimeError's message, everything else goes to `log`.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections import deque
from collections.abc import Callable
from pathlib import Path

from llmflow.config import InputError
from llmflow.config.training import LaunchConfig

ROOT = Path(__file__).resolve().parents[1]


def is_launched(cfg: LaunchConfig) -> bool:
    """True when the run needs `accelerate launch` (several processes or machines)."""
    return cfg.num_processes * cfg.num_machines > 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_machine(cfg: LaunchConfig, cuda_devices: int | None = None) -> None:
    """InputError when this machine cannot run `cfg`: more processes than GPUs on a GPU machine.

    On CPU any count runs (gloo); `cuda_devices` defaults to torch's count.
    """
    if cuda_devices is None:
        import torch

        cuda_devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if cuda_devices and cfg.num_processes > cuda_devices:
        raise InputError(
            f"num_processes={cfg.num_processes} but this machine has {cuda_devices} GPU(s): "
            f"one process per GPU, set num_processes <= {cuda_devices}"
        )


def command(module: str, job_file: str | Path, cfg: LaunchConfig) -> list[str]:
    """The `accelerate launch` line for this machine (accelerate counts processes over all machines)."""
    port = cfg.main_process_port or free_port()
    return [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_processes", str(cfg.num_processes * cfg.num_machines),
        "--num_machines", str(cfg.num_machines), "--machine_rank", str(cfg.machine_rank),
        "--main_process_ip", cfg.main_process_ip, "--main_process_port", str(port),
        "--mixed_precision", "no", "--dynamo_backend", "no",
        "-m", module, "--config", str(job_file),
    ]  # fmt: skip


def run(
    cmd: list[str],
    num_processes: int,
    on_progress: Callable[[float, float, str], None] | None = None,
    log: Callable[[str], None] = print,
    what: str = "training",
    on_step: Callable[[dict, float], None] | None = None,
) -> None:
    """Run `cmd`, stream its output (`@@progress` lines to `on_progress`, `@@step` rows to
    `on_step`); RuntimeError with the subprocess's own error when it fails."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // num_processes)))
    log("launching: " + " ".join(cmd))
    tail: deque[str] = deque(maxlen=40)
    error = None
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            line = line.rstrip()
            if line.startswith("@@progress "):
                p = json.loads(line[len("@@progress ") :])
                if on_progress is not None:
                    on_progress(p["done"], p["total"], p["message"])
                continue
            if line.startswith("@@step "):
                row = json.loads(line[len("@@step ") :])
                if on_step is not None:
                    on_step(row["row"], row["fraction"])
                continue
            if line.startswith("@@error "):
                error = line[len("@@error ") :]
            tail.append(line)
            if line.strip():
                log(line)
        rc = proc.wait()
    finally:  # a cancelled or failed task must not leave its training processes behind
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    if rc != 0:
        detail = error or "\n".join(tail)
        raise RuntimeError(f"{what} failed under accelerate launch (exit {rc}): {detail}")
