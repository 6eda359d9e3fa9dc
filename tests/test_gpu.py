"""The GPU slot allocator with fake device counts: real processes, real flock, real SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lmablate.gpu import claim_device, claim_slot, default_runs_per_gpu

HOLDER = """
import sys, time
from lmablate.gpu import claim_slot
slot = claim_slot(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], timeout=60, poll=0.05)
print(slot.index, slot.slot, flush=True)
time.sleep(float(sys.argv[4]))
"""


def _holders(n: int, gpus: int, slots: int, lock_dir: Path, hold: float):
    return [subprocess.Popen([sys.executable, "-c", HOLDER, str(gpus), str(slots), str(lock_dir),
                              str(hold)], stdout=subprocess.PIPE, text=True) for _ in range(n)]


@pytest.mark.parametrize(("gpus", "slots"), [pytest.param(1, 1, id="1gpu-1slot"),
                                             pytest.param(2, 2, id="2gpus-2slots"),
                                             pytest.param(8, 3, id="8gpus-3slots")])
def test_no_gpu_over_capacity_and_slots_spread(tmp_path, gpus, slots):
    capacity = gpus * slots
    procs = _holders(capacity, gpus, slots, tmp_path, hold=3.0)
    claims = [tuple(map(int, p.stdout.readline().split())) for p in procs]
    assert len(set(claims)) == capacity  # every slot taken exactly once
    per_gpu = {g: sum(1 for c in claims if c[0] == g) for g in range(gpus)}
    assert set(per_gpu.values()) == {slots}
    # one more job must wait until a slot frees up
    t0 = time.monotonic()
    extra = _holders(1, gpus, slots, tmp_path, hold=0.0)[0]
    claim = tuple(map(int, extra.stdout.readline().split()))
    assert time.monotonic() - t0 > 1.0 and claim in claims
    for p in [*procs, extra]:
        p.wait()
        p.stdout.close()


def test_first_slots_go_to_different_gpus(tmp_path):
    procs = _holders(4, 4, 2, tmp_path, hold=2.0)
    gpus = sorted(int(p.stdout.readline().split()[0]) for p in procs)
    assert gpus == [0, 1, 2, 3]  # fill slot 0 of every GPU before doubling up
    for p in procs:
        p.wait()
        p.stdout.close()


def test_lock_released_when_holder_is_killed(tmp_path):
    holder = _holders(1, 1, 1, tmp_path, hold=60.0)[0]
    assert holder.stdout.readline().split() == ["0", "0"]
    with pytest.raises(TimeoutError):
        claim_slot(1, 1, tmp_path, timeout=0.5, poll=0.05)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    holder.stdout.close()
    slot = claim_slot(1, 1, tmp_path, timeout=5, poll=0.05)
    assert (slot.index, slot.slot) == (0, 0)
    slot.release()


def test_cpu_when_no_gpu_and_explicit_device_passes_through(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    import torch

    if torch.cuda.is_available():  # pragma: no cover - GPU machines
        pytest.skip("CUDA_VISIBLE_DEVICES is read at CUDA init; this checks CPU-only machines")
    with claim_device() as dev:
        assert dev == "cpu"
    with claim_device("cuda:3") as dev:
        assert dev == "cuda:3"


def test_default_runs_per_gpu_by_model_size():
    assert [default_runs_per_gpu(n) for n in (5e6, 29e6, 50e6, 2e8)] == [4, 4, 2, 1]
