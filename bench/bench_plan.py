"""Benchmark of planning seed 000's 1,152-run study, against peers measured in the same run.

1. ``snakemake -n -s Snakefile --configfile studies/shape_sweep.yaml -d <tmp>``: the dry run of
   the whole study (parse, expand, DAG of 1,158 jobs, print), against the same dry run of
   ``bench/bare/Snakefile`` (the same DAG shape with nothing but Snakemake: what Snakemake
   itself costs for these jobs). Target: <= 10 s and <= 1.5x the bare Snakefile.
2. ``lmablate plan studies/shape_sweep.yaml``: the run table. Target: <= 2 s.
3. The parts, so a miss can be placed: ``read_study`` in-process (YAML -> 1,152 checked runs),
   and the peers that every fresh process pays before any lmablate code runs: the interpreter
   (``python -c pass``), ``import torch`` (pulled in by ``lmablate.study.accounting`` and by the
   Snakefile's GPU check), ``import snakemake.cli`` and ``snakemake --version``.

Wall times are medians of ``--repeats`` runs; CPU is user + sys of the child. The machine is
shared: the load average before and after is recorded beside the numbers.

    python bench/bench_plan.py [--repeats 3]

Prints a table and writes ``bench/results/<date>-cpu-plan.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
STUDY = REPO / "studies" / "shape_sweep.yaml"
BARE = HERE / "bare" / "Snakefile"
TARGETS = {"snakemake_dry_run": 10.0, "lmablate_plan": 2.0}
TARGET_RATIO_VS_BARE = 1.5


def timed(cmd: list[str], cwd: Path) -> tuple[float, float]:
    """(wall, cpu) seconds of one run of ``cmd``; a failure stops the benchmark."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"}, check=False)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def measure(cmd: list[str], repeats: int, cwd: Path = REPO) -> dict[str, float]:
    runs = [timed(cmd, cwd) for _ in range(repeats)]
    return {"wall_s": statistics.median(w for w, _ in runs),
            "cpu_s": statistics.median(c for _, c in runs),
            "wall_all_s": [round(w, 3) for w, _ in runs]}


def expand_in_process(repeats: int) -> dict[str, float]:
    from lmablate.study.load import read_study

    read_study(STUDY)  # warm imports
    walls, n = [], 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        n = len(read_study(STUDY).runs)
        walls.append(time.perf_counter() - t0)
    return {"wall_s": statistics.median(walls), "runs": n,
            "wall_all_s": [round(w, 3) for w in walls]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    py = sys.executable
    load_before = os.getloadavg()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="lmablate-bench-plan-") as tmp:
        results["snakemake_dry_run"] = measure(
            [py, "-m", "snakemake", "-n", "-s", str(REPO / "Snakefile"), "--configfile",
             str(STUDY), "-d", tmp], args.repeats)
    with tempfile.TemporaryDirectory(prefix="lmablate-bench-bare-") as tmp:
        results["bare_snakefile_dry_run"] = measure(
            [py, "-m", "snakemake", "-n", "-s", str(BARE), "-d", tmp], args.repeats)
    results["lmablate_plan"] = measure([py, "-m", "lmablate", "plan", str(STUDY)], args.repeats)
    results["read_study_in_process"] = expand_in_process(args.repeats)
    peers = {"python_startup": [py, "-c", "pass"],
             "import_torch": [py, "-c", "import torch"],
             "import_snakemake_cli": [py, "-c", "import snakemake.cli"],
             "snakemake_version": [py, "-m", "snakemake", "--version"]}
    for name, cmd in peers.items():
        results[name] = measure(cmd, args.repeats)
    load_after = os.getloadavg()

    print(f"{'step':<24} {'wall s':>8} {'cpu s':>8}  target")
    for name, r in results.items():
        target = TARGETS.get(name)
        verdict = "" if target is None else (
            f"<= {target:g} s {'ok' if r['wall_s'] <= target else 'MISSED'}")
        print(f"{name:<24} {r['wall_s']:8.2f} {r.get('cpu_s', float('nan')):8.2f}  {verdict}")
    torch = results["import_torch"]["wall_s"] - results["python_startup"]["wall_s"]
    for name in TARGETS:
        share = torch / results[name]["wall_s"]
        print(f"{name}: import torch is {share:.0%} of it "
              f"({results[name]['wall_s'] / results['snakemake_version']['wall_s']:.1f}x "
              "snakemake --version)")
    ratio = results["snakemake_dry_run"]["wall_s"] / results["bare_snakefile_dry_run"]["wall_s"]
    verdict = "ok" if ratio <= TARGET_RATIO_VS_BARE else "MISSED"
    print(f"snakemake -n: lmablate / bare Snakefile = {ratio:.2f}x "
          f"(target <= {TARGET_RATIO_VS_BARE:g}x {verdict})")
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} "
          f"({os.cpu_count()} CPUs)")

    out = HERE / "results" / f"{time.strftime('%Y-%m-%d')}-cpu-plan.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                            text=True, check=False).stdout.strip()
    out.write_text(json.dumps({
        "benchmark": "plan", "study": str(STUDY.relative_to(REPO)), "targets_s": TARGETS,
        "dry_run_ratio_vs_bare": ratio, "target_ratio_vs_bare": TARGET_RATIO_VS_BARE,
        "results": results, "repeats": args.repeats, "load_average": [load_before, load_after],
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()}, "commit": commit}, indent=2) + "\n")
    print(f"wrote {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
