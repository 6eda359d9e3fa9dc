"""Which GPU a training job uses.

Snakemake counts a ``gpu`` resource but does not say which device a job gets. Each training job
claims one slot on one GPU with an exclusive ``flock`` on ``<lock_dir>/gpu<i>.slot<k>.lock``; the
kernel drops the lock when the process exits, however it exits (SIGKILL included), so a killed
job never leaves a GPU marked busy. Up to ``slots`` jobs share a GPU (tiny models leave most of
it idle). Without CUDA the job trains on the CPU.

Jobs that share a GPU start at least a few seconds apart (:func:`space_start`). Runs of one sweep
have the same length, so K jobs started together step together and reach their start-up,
evaluations and outputs together, leaving the GPU idle each time (one tiny run alone saturates
it). Started apart they stay apart: while one job is outside its steps the others use the GPU.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = ["claim_device", "cuda_device_count", "cuda_available", "GpuSlot", "claim_slot",
           "default_runs_per_gpu", "visible_gpus", "space_start", "record_startup",
           "process_age", "bytecode_uncached", "warn_uncached_bytecode"]

log = logging.getLogger("lmablate.gpu")


def cuda_device_count() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # a broken driver means: no GPU
        return 0


def visible_gpus() -> list[str] | None:
    """The GPUs this process may use, as the ids ``CUDA_VISIBLE_DEVICES`` takes, read without
    initialising CUDA (so that a job can still pin itself with ``CUDA_VISIBLE_DEVICES``):
    the variable's own entries when it is set, else one index per line of ``nvidia-smi -L``.
    None when there is no nvidia-smi to ask."""
    import shutil
    import subprocess

    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return []
    if out.returncode != 0:
        return []
    n = sum(1 for ln in out.stdout.splitlines() if ln.startswith("GPU "))
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return [str(i) for i in range(n)]
    ids = [v.strip() for v in visible.split(",") if v.strip()]
    # CUDA stops at the first invalid entry ("-1" is the usual way to hide every GPU)
    ids = ids[:next((i for i, v in enumerate(ids) if v.startswith("-")), len(ids))]
    return [v for v in ids if not v.isdigit() or int(v) < n]


def cuda_available() -> bool:
    """Whether this machine has a usable NVIDIA GPU, without importing torch (fast enough for
    the Snakefile's parse): nvidia-smi's device list, restricted by CUDA_VISIBLE_DEVICES."""
    return bool(visible_gpus())  # None (no nvidia-smi) and [] both mean no


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


# the spacing of job starts on one GPU: a job's start-up (process start to its first step done),
# the last recorded on that GPU (a guess before any is), at most MAX_STARTUP_S, over its slots
DEFAULT_STARTUP_S = 12.0
MAX_STARTUP_S = 60.0


def space_start(lock_dir: str | Path, gpu: int, slots: int, *, clock=time.time,
                sleep=time.sleep) -> float:
    """Start this job on GPU ``gpu`` one ``spacing`` after the GPU's previous start; return the
    seconds waited.

    ``spacing`` = the GPU's last recorded start-up (:func:`record_startup`) / ``slots``.
    ``<lock_dir>/gpu<i>.start`` holds the last (or next reserved) start and the start-up: under
    its lock a job reserves its start time, then waits outside the lock, so jobs that start
    together queue one spacing apart and a job recording its start-up never waits behind them.
    A missing or unreadable file counts as no earlier start; a start dated further ahead than a
    full queue could reserve (a clock that went back, a hand-edited file) waits one start-up at
    most."""
    if slots <= 1:
        return 0.0
    with _start_file(Path(lock_dir) / f"gpu{gpu}.start") as fd:
        last, startup = _read_start(fd)
        spacing = min(MAX_STARTUP_S, startup or DEFAULT_STARTUP_S) / slots
        now = clock()
        wait = 0.0 if last is None else min(slots * spacing, max(0.0, last + spacing - now))
        _write_start(fd, now + wait, startup)
    if wait > 0:
        log.info("GPU %d: jobs sharing it start %.1f s apart so that they do not step in "
                 "lockstep; starting %.1f s later", gpu, spacing, wait)
        sleep(wait)
    return wait


def record_startup(seconds: float) -> None:
    """Record the start-up of the job holding this process's GPU slot (process start to its first
    training step done) beside the slot's lock, which spaces the next starts on that GPU
    (:func:`space_start`); nothing without a held slot."""
    slot = _held
    if slot is None or not math.isfinite(seconds) or seconds < 0:
        return
    path = slot.path.parent / f"gpu{slot.index}.start"
    try:
        with _start_file(path) as fd:
            last, _ = _read_start(fd)
            _write_start(fd, last if last is not None else time.time(), seconds)
    except OSError as err:
        log.warning("could not record the start-up in %s (%s)", path, err)


@contextlib.contextmanager
def _start_file(path: Path) -> Iterator[int]:
    """A GPU's start file, open and exclusively locked (the kernel drops the lock if this process
    dies)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)


def _read_start(fd: int) -> tuple[float | None, float | None]:
    import json

    os.lseek(fd, 0, os.SEEK_SET)
    try:
        rec = json.loads(os.read(fd, 4096) or b"{}")
        last, startup = rec.get("start"), rec.get("startup_s")
    except (ValueError, AttributeError):
        return None, None
    ok = lambda v: isinstance(v, (int, float)) and math.isfinite(v) and v >= 0  # noqa: E731
    return (float(last) if ok(last) else None), (float(startup) if ok(startup) else None)


def _write_start(fd: int, start: float, startup: float | None) -> None:
    import json

    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, json.dumps({"start": start, "startup_s": startup}).encode())


def process_age() -> float:
    """Seconds since this process started (Linux: /proc; elsewhere since this module loaded)."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(float(ln.split()[1]) for ln in Path("/proc/stat").read_text().splitlines()
                    if ln.startswith("btime "))
        return max(0.0, time.time() - (boot + ticks / os.sysconf("SC_CLK_TCK")))
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time() - _LOADED


def bytecode_uncached(module: object) -> bool:
    """True where Python has no compiled bytecode of ``module`` on disk once it is imported:
    ``PYTHONDONTWRITEBYTECODE`` set (many container images set it) or a read-only install without
    ``PYTHONPYCACHEPREFIX``. Every process then compiles the package's Python afresh: on an H100
    host, torch's import, AdamW's and torch.compile's first use took ~5 s more per job
    (bench/sweep_wall.py's breakdown: imports 2.7 -> 1.5 s, setup 6.3 -> 2.5 s)."""
    import importlib.util

    src = getattr(module, "__file__", None)
    if not src or not src.endswith(".py"):
        return False
    try:
        return not os.path.exists(importlib.util.cache_from_source(src))
    except (NotImplementedError, ValueError):  # no cache tag: nothing to cache
        return False


def warn_uncached_bytecode() -> bool:
    """One log warning (True) where torch's bytecode is not cached (:func:`bytecode_uncached`)."""
    import torch

    if not bytecode_uncached(torch):
        return False
    log.warning("Python keeps no bytecode cache of torch (PYTHONDONTWRITEBYTECODE=%s, "
                "PYTHONPYCACHEPREFIX=%s): every job compiles torch's Python afresh, ~5 s more "
                "start-up per GPU job; unset PYTHONDONTWRITEBYTECODE or point PYTHONPYCACHEPREFIX "
                "at a writable directory", os.environ.get("PYTHONDONTWRITEBYTECODE", "unset"),
                os.environ.get("PYTHONPYCACHEPREFIX", "unset"))
    return True


_LOADED = time.time()
_held: GpuSlot | None = None  # the slot claim_device holds in this process


def _torch_built_with_cuda() -> bool:
    import torch  # importing torch does not initialise CUDA

    return torch.version.cuda is not None


def _cuda_initialised() -> bool:
    import sys

    torch = sys.modules.get("torch")
    return torch is not None and torch.cuda.is_initialized()


@contextlib.contextmanager
def claim_device(requested: str = "auto", *, slots: int | None = None,
                 lock_dir: str | Path | None = None) -> Iterator[str]:
    """Yield a torch device string for this job, holding a GPU slot while inside.

    ``requested``: "auto" (a free GPU if any, else CPU), "cpu", or an explicit "cuda:N".
    ``slots`` (runs per GPU): $LMABLATE_RUNS_PER_GPU if set, else the argument, else 1.
    Lock files live in $LMABLATE_GPU_LOCK_DIR (default ``.lmablate/gpu-locks`` in the working
    directory, which every job of one workflow shares).

    The job is pinned with ``CUDA_VISIBLE_DEVICES`` (set to the claimed GPU while inside, and
    the device is then "cuda:0"), so that neither this process nor anything it starts (compile
    workers, data loaders) opens a CUDA context on another job's GPU. That needs CUDA to be
    untouched in this process before the call; if torch already initialised CUDA, the job gets
    "cuda:<index>" and ``torch.cuda.set_device`` instead.
    """
    if requested != "auto":
        yield requested
        return
    if os.environ.get("SLURM_JOB_ID") and os.environ.get("CUDA_VISIBLE_DEVICES"):
        # Slurm already gave this job its own GPU(s); the plugin runs the runs a group
        # (--group-components) packs into one job one after another, so none share it
        yield "cuda:0"
        return
    in_process = _cuda_initialised()
    gpus = None if in_process else visible_gpus()
    if gpus is None:  # CUDA already up here, or no nvidia-smi: torch's devices, pinned in-process
        gpus = [str(i) for i in range(cuda_device_count())]
        in_process = True
    if gpus and not _torch_built_with_cuda():
        gpus = []  # a CPU-only torch on a GPU machine trains on the CPU
    if not gpus:
        yield "cpu"
        return
    slots = int(os.environ.get("LMABLATE_RUNS_PER_GPU") or slots or 1)
    lock_dir = lock_dir or os.environ.get("LMABLATE_GPU_LOCK_DIR", ".lmablate/gpu-locks")
    slot = claim_slot(len(gpus), slots, lock_dir)
    global _held
    log.info("claimed GPU %d slot %d of %d (%s; %d GPUs visible; CUDA_VISIBLE_DEVICES=%s)",
             slot.index, slot.slot, slots, slot.path, len(gpus),
             os.environ.get("CUDA_VISIBLE_DEVICES") if in_process else gpus[slot.index])
    before = os.environ.get("CUDA_VISIBLE_DEVICES")
    try:
        _held = slot
        _spaced(lock_dir, slot.index, slots)
        if in_process:
            import torch

            torch.cuda.set_device(slot.index)
            yield f"cuda:{slot.index}"
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = gpus[slot.index]
            yield "cuda:0"
    finally:
        if not in_process:
            if before is None:
                os.environ.pop("CUDA_VISIBLE_DEVICES", None)
            else:
                os.environ["CUDA_VISIBLE_DEVICES"] = before
        _held = None
        slot.release()


def _spaced(lock_dir: str | Path, gpu: int, slots: int) -> None:
    """:func:`space_start`, where a directory or file system that refuses the lock costs the
    spacing only."""
    try:
        Path(lock_dir).mkdir(parents=True, exist_ok=True)
        space_start(lock_dir, gpu, slots)
    except OSError as err:
        log.warning("GPU %d: starting without spacing (%s)", gpu, err)
