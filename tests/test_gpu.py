"""The GPU slot allocator with fake device counts: real processes, real flock, real SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lmablate import gpu
from lmablate.gpu import claim_device, claim_slot, default_runs_per_gpu, space_start

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


def _fake_nvidia_smi(tmp_path, monkeypatch, n: int) -> None:
    """An ``nvidia-smi`` on PATH that lists ``n`` GPUs (what ``-L`` prints)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    lines = "".join(f"echo 'GPU {i}: NVIDIA H100 80GB HBM3 (UUID: GPU-{i:04d})'\n"
                    for i in range(n))
    tool = bin_dir / "nvidia-smi"
    tool.write_text(f"#!/bin/sh\n{lines}")
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def test_visible_gpus_honour_cuda_visible_devices(tmp_path, monkeypatch):
    from lmablate.gpu import visible_gpus

    _fake_nvidia_smi(tmp_path, monkeypatch, 4)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert visible_gpus() == ["0", "1", "2", "3"]
    for value, expected in [("2,3", ["2", "3"]), ("", []), ("-1", []), ("1,-1,2", ["1"]),
                            ("3,7", ["3"]), ("GPU-0002", ["GPU-0002"])]:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", value)
        assert visible_gpus() == expected, value


CLAIMER = """
import os, sys
from lmablate.gpu import claim_device
with claim_device(slots=int(sys.argv[1]), lock_dir=sys.argv[2]) as dev:
    print(dev, os.environ.get("CUDA_VISIBLE_DEVICES"), flush=True)
    sys.stdin.readline()  # hold the slot until the test says so
print("after", os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>"), flush=True)
"""


def test_claimed_gpu_is_pinned_with_cuda_visible_devices(tmp_path, monkeypatch):
    """Each job sees exactly the GPU it claimed, as its cuda:0, and nothing else: with 2 GPUs
    of 4 visible and 2 slots each, four jobs get GPUs 1, 3, 1, 3 (slot 0 of each first)."""
    import torch

    if torch.version.cuda is None:  # pragma: no cover
        pytest.skip("a CPU-only torch trains on the CPU whatever nvidia-smi says")
    _fake_nvidia_smi(tmp_path, monkeypatch, 4)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,3")
    monkeypatch.delenv("LMABLATE_RUNS_PER_GPU", raising=False)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    locks = tmp_path / "locks"
    _recorded_startup(locks, 2, 0.2)  # jobs on one GPU start 0.1 s apart (space_start)
    procs, claims = [], []
    try:
        for _ in range(4):  # one at a time, so the order of claims is known
            procs.append(subprocess.Popen([sys.executable, "-c", CLAIMER, "2", str(locks)],
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                          text=True))
            claims.append(procs[-1].stdout.readline().split())
        assert claims == [["cuda:0", "1"], ["cuda:0", "3"], ["cuda:0", "1"], ["cuda:0", "3"]]
        for p in procs:
            p.stdin.write("\n")
            p.stdin.flush()
            assert p.stdout.readline().split() == ["after", "1,3"]  # restored on the way out
    finally:
        for p in procs:
            p.kill()
            p.wait()
            p.stdin.close()
            p.stdout.close()


def test_gpu_profile_counts_visible_gpus(tmp_path, monkeypatch):
    """profiles/gpu offers K training slots per GPU that nvidia-smi lists and
    CUDA_VISIBLE_DEVICES leaves visible (the profile is YTE-templated when Snakemake loads it)."""
    import yte

    profile = Path(__file__).resolve().parents[1] / "profiles" / "gpu" / "config.yaml"
    _fake_nvidia_smi(tmp_path, monkeypatch, 2)
    monkeypatch.setenv("LMABLATE_RUNS_PER_GPU", "3")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with profile.open() as f:
        assert yte.process_yaml(f)["resources"] == {"gpu": 6}
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    with profile.open() as f:
        assert yte.process_yaml(f)["resources"] == {"gpu": 3}


def _recorded_startup(lock_dir: Path, gpus: int, seconds: float) -> None:
    """A start-up recorded on each GPU as a finished job leaves it (record_startup)."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    for i in range(gpus):
        (lock_dir / f"gpu{i}.start").write_text(f'{{"start": 0, "startup_s": {seconds}}}')


class _Clock:
    def __init__(self, t: float = 1000.0):
        self.t, self.slept = t, []

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.t += s


def test_jobs_sharing_a_gpu_start_a_start_up_over_the_slots_apart(tmp_path):
    """The second of two jobs that start together on a GPU waits the GPU's recorded start-up /
    slots (a default start-up before any is recorded); a start long after the last waits
    nothing; another GPU's starts do not count; one slot per GPU never waits."""
    clock = _Clock()
    kw = {"clock": clock, "sleep": clock.sleep}
    assert space_start(tmp_path, 0, 4, **kw) == 0.0  # the first start on the GPU
    assert space_start(tmp_path, 0, 4, **kw) == pytest.approx(gpu.DEFAULT_STARTUP_S / 4)
    assert space_start(tmp_path, 1, 4, **kw) == 0.0  # GPU 1 has no start yet
    _recorded_startup(tmp_path, 1, 20.0)
    assert space_start(tmp_path, 0, 4, **kw) == 0.0  # the file's start (0) is long ago
    assert space_start(tmp_path, 0, 4, **kw) == pytest.approx(5.0)  # 20 s / 4 slots
    clock.t += 2.0
    assert space_start(tmp_path, 0, 4, **kw) == pytest.approx(3.0)  # 2 of the 5 s have passed
    assert space_start(tmp_path, 0, 1, **kw) == 0.0  # a GPU to itself: nothing to space
    assert clock.slept == pytest.approx([gpu.DEFAULT_STARTUP_S / 4, 5.0, 3.0])


def test_start_spacing_is_bounded_whatever_the_start_file_says(tmp_path):
    """A start-up of hours counts as MAX_STARTUP_S; a start further in the future than a full queue
    could reserve (a clock that went back, a hand-edited file) waits one start-up at most;
    garbage, negative or non-finite values count as nothing recorded."""
    clock = _Clock()
    kw = {"clock": clock, "sleep": clock.sleep}
    start = tmp_path / "gpu0.start"
    start.write_text(f'{{"start": {clock.t}, "startup_s": 36000}}')
    assert space_start(tmp_path, 0, 2, **kw) == pytest.approx(gpu.MAX_STARTUP_S / 2)
    start.write_text(f'{{"start": {clock.t + 1e9}, "startup_s": 4}}')
    assert space_start(tmp_path, 0, 2, **kw) == pytest.approx(4.0)
    default = gpu.DEFAULT_STARTUP_S / 2
    for text in ("not json", "[1, 2]", '{"start": "soon", "startup_s": -3}',
                 f'{{"start": {clock.t}, "startup_s": NaN}}', '{"start": 1e400}'):
        start.write_text(text)
        waited = space_start(tmp_path, 0, 2, **kw)
        assert waited in (0.0, pytest.approx(default)), text  # no earlier start, or the default


STARTER = """
import sys, time
from lmablate.gpu import space_start
space_start(sys.argv[1], 0, 4)
print(time.time(), flush=True)
"""


def test_jobs_started_together_start_apart_in_real_processes(tmp_path):
    """Four jobs that start together on a GPU of four slots start one spacing apart each, in turn
    (each reserves its start under the start file's lock)."""
    _recorded_startup(tmp_path, 1, 1.6)  # 1.6 s / 4 slots: 0.4 s apart
    procs = [subprocess.Popen([sys.executable, "-c", STARTER, str(tmp_path)],
                              stdout=subprocess.PIPE, text=True) for _ in range(4)]
    starts = sorted(float(p.communicate()[0]) for p in procs)
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert all(g >= 0.39 for g in gaps), gaps


def test_a_job_records_its_start_up_on_the_gpu_it_holds(tmp_path, monkeypatch):
    """record_startup writes the start-up of the job holding a slot into its GPU's start file,
    keeping the last start; without a held slot it records nothing."""
    monkeypatch.chdir(tmp_path)
    gpu.record_startup(9.0)
    assert not list(tmp_path.rglob("*"))
    slot = claim_slot(2, 1, tmp_path, timeout=5, poll=0.05)
    slot = claim_slot(2, 1, tmp_path, timeout=5, poll=0.05) if slot.index == 0 else slot
    try:
        clock = _Clock(500.0)
        space_start(tmp_path, 1, 2, clock=clock, sleep=clock.sleep)
        gpu._held = slot
        gpu.record_startup(9.0)
    finally:
        gpu._held = None
        slot.release()
    import json

    assert json.loads((tmp_path / "gpu1.start").read_text()) == {"start": 500.0, "startup_s": 9.0}
    assert space_start(tmp_path, 1, 3, clock=clock, sleep=clock.sleep) == pytest.approx(3.0)


def test_a_start_file_that_cannot_be_used_costs_the_spacing_not_the_run(tmp_path, caplog):
    """A directory where the start file should be (or a file system that refuses the lock): the
    job starts at once and trains; only a warning says the spacing was skipped."""
    (tmp_path / "gpu0.start").mkdir()
    gpu._spaced(tmp_path, 0, 4)
    slot = claim_slot(1, 1, tmp_path, timeout=5, poll=0.05)
    try:
        gpu._held = slot
        gpu.record_startup(5.0)
    finally:
        gpu._held = None
        slot.release()
    warned = [r.message.split(" (")[0] for r in caplog.records if r.levelname == "WARNING"]
    assert warned == ["GPU 0: starting without spacing",
                      f"could not record the start-up in {tmp_path}/gpu0.start"]


BYTECODE_CHILD = """
import importlib, sys
sys.path.insert(0, sys.argv[1])
from lmablate.gpu import bytecode_uncached
print(bytecode_uncached(importlib.import_module("probe_mod")))
"""


@pytest.mark.parametrize("env, uncached", [({"PYTHONDONTWRITEBYTECODE": "1"}, True), ({}, False)])
def test_a_process_that_keeps_no_bytecode_is_told(tmp_path, env, uncached):
    """PYTHONDONTWRITEBYTECODE (container images set it) makes every job compile torch's Python
    afresh; bytecode_uncached sees it from the module's missing cache file."""
    (tmp_path / "probe_mod.py").write_text("X = 1\n")
    child_env = {k: v for k, v in os.environ.items()
                 if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX")}
    out = subprocess.run([sys.executable, "-c", BYTECODE_CHILD, str(tmp_path)], check=True,
                         capture_output=True, text=True, env={**child_env, **env}).stdout
    assert out.strip() == str(uncached)
    assert any((tmp_path / "__pycache__").glob("probe_mod.*.pyc")) is not uncached
    assert not gpu.bytecode_uncached(gpu) or sys.dont_write_bytecode  # this process


def test_uncached_torch_bytecode_is_one_warning(monkeypatch, caplog):
    monkeypatch.setattr(gpu, "bytecode_uncached", lambda module: True)
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    with caplog.at_level("WARNING", logger="lmablate.gpu"):
        assert gpu.warn_uncached_bytecode()
    [rec] = caplog.records
    assert "PYTHONDONTWRITEBYTECODE=1" in rec.getMessage()
    assert "PYTHONPYCACHEPREFIX" in rec.getMessage()
    monkeypatch.setattr(gpu, "bytecode_uncached", lambda module: False)
    assert not gpu.warn_uncached_bytecode()
