"""Which GPU a training job uses.

Snakemake counts a ``gpu`` resource but does not say which device a job gets. Each training job
claims one slot on one GPU with an exclusive ``flock`` on ``<lock_dir>/gpu<i>.slot<k>.lock``; the
kernel drops the lock when the process exits, however it exits (SIGKILL included), so a killed
job never leaves a GPU marked busy. Up to ``slots`` jobs share a GPU (tiny models leave most of
it idle). Without CUDA the job trains on the CPU.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = ["claim_device", "cuda_device_count", "cuda_available", "GpuSlot", "claim_slot",
           "default_runs_per_gpu"]

log = logging.getLogger("lmablate.gpu")


def cuda_device_count() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # a broken driver means: no GPU
        return 0


def cuda_available() -> bool:
    """Whether this machine has a usable NVIDIA GPU, without importing torch (fast enough for
    the Snakefile's parse): nvidia-smi's device list, restricted by CUDA_VISIBLE_DEVICES."""
    import shutil
    import subprocess

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False
    if not shutil.which("nvidia-smi"):
        return False
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and any(ln.startswith("GPU ") for ln in out.stdout.splitlines())


def default_runs_per_gpu(params: int) -> int:
    """How many runs of this size share one GPU by default: tiny models leave an H100 mostly idle
    (kernel-launch bound), so several processes on one GPU raise aggregate throughput."""
    if params < 30_000_000:
        return 4
    if params < 150_000_000:
        return 2
    return 1


class GpuSlot:
    def __init__(self, index: int, slot: int, fh: int, path: Path):
        self.index, self.slot, self._fd, self.path = index, slot, fh, path

    def release(self) -> None:
        if self._fd >= 0:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = -1


def claim_slot(n_gpus: int, slots: int, lock_dir: str | Path, *, timeout: float = 600.0,
               poll: float = 0.5) -> GpuSlot:
    """Block until one of ``n_gpus * slots`` slots is free; prefer the least-loaded GPU."""
    d = Path(lock_dir)
    d.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    while True:
        for slot in range(slots):  # fill slot 0 of every GPU before doubling up
            for gpu in range(n_gpus):
                path = d / f"gpu{gpu}.slot{slot}.lock"
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    continue
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                return GpuSlot(gpu, slot, fd, path)
        if time.monotonic() > deadline:
            raise TimeoutError(f"no free GPU slot in {lock_dir} after {timeout:.0f} s "
                               f"({n_gpus} GPUs x {slots} slots all held)")
        time.sleep(poll)


@contextlib.contextmanager
def claim_device(requested: str = "auto", *, slots: int | None = None,
                 lock_dir: str | Path | None = None) -> Iterator[str]:
    """Yield a torch device string for this job, holding a GPU slot while inside.

    ``requested``: "auto" (a free GPU if any, else CPU), "cpu", or an explicit "cuda:N".
    ``slots`` (runs per GPU): $LMABLATE_RUNS_PER_GPU if set, else the argument, else 1.
    Lock files live in $LMABLATE_GPU_LOCK_DIR (default ``.lmablate/gpu-locks`` in the working
    directory, which every job of one workflow shares).
    """
    if requested != "auto":
        yield requested
        return
    n = cuda_device_count()
    if n == 0:
        yield "cpu"
        return
    if os.environ.get("SLURM_JOB_ID") and os.environ.get("CUDA_VISIBLE_DEVICES"):
        yield "cuda:0"  # Slurm already gave this job its own GPU(s)
        return
    slots = int(os.environ.get("LMABLATE_RUNS_PER_GPU") or slots or 1)
    lock_dir = lock_dir or os.environ.get("LMABLATE_GPU_LOCK_DIR", ".lmablate/gpu-locks")
    slot = claim_slot(n, slots, lock_dir)
    log.info("claimed GPU %d slot %d of %d (%s; %d GPUs visible)", slot.index, slot.slot, slots,
             slot.path, n)
    try:
        yield f"cuda:{slot.index}"
    finally:
        slot.release()
