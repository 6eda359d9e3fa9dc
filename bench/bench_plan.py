"""Benchmark of planning the 1,152-run shape sweep, against peers measured in the same run.

1. ``snakemake -n -s Snakefile --configfile studies/shape_sweep.yaml -d <tmp>``: the dry run of
   the whole study (parse, expand, DAG of 1,159 jobs, print), against the same dry run of
   ``bench/bare/Snakefile`` (the same DAG shape with nothing but Snakemake: what Snakemake
   itself costs for these jobs). The two alternate, run after run, so that a load change on the
   shared machine hits both. Target: lmablate <= 1.5x the bare Snakefile.
2. ``lmablate plan studies/shape_sweep.yaml``: the run table. Target: <= 2 s.
3. The parts, so a miss can be placed: ``read_study`` in-process (YAML -> 1,152 checked runs),
   and the peers that every fresh process pays before any lmablate code runs: the interpreter
   (``python -c pass``), ``import torch`` (which the parse must not pull in: checked with
   ``-X importtime`` on one more dry run), ``import snakemake.cli`` and ``snakemake --version``.

Every ``snakemake`` start asks Slurm for its configuration (the Slurm executor plugin's
``scontrol show config``, timeout 10 s): without a running controller each invocation waits up
to 10 s more, the same for both Snakefiles, which squeezes the ratio towards 1. The benchmark
says which case it measured (``.ci/slurm-up.sh`` starts one).

Wall times: best and median of ``--repeats`` runs; CPU is user + sys of the child. The machine
is shared: the load average before and after is recorded beside the numbers.

    PYTHONPATH=src python3 bench/bench_plan.py [--repeats 5]

Prints a table and writes ``bench/results/<date>-cpu-plan.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
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
TARGETS = {"lmablate_plan": 2.0}
TARGET_RATIO_VS_BARE = 1.5
HEAVY = ("torch", "transformers", "matplotlib")
ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}


def timed(cmd: list[str], cwd: Path = REPO, env: dict[str, str] | None = None
          ) -> tuple[float, float, str]:
    """(wall, cpu, stderr) of one run of ``cmd``; a failure stops the benchmark."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env or ENV,
                          check=False)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, proc.stderr


def summary(runs: list[tuple[float, float]]) -> dict[str, object]:
    """Best and median wall, median CPU, every wall."""
    walls = [w for w, _ in runs]
    return {"wall_s": statistics.median(walls), "best_s": min(walls),
            "cpu_s": statistics.median(c for _, c in runs),
            "wall_all_s": [round(w, 3) for w in walls]}


def measure(cmd: list[str], repeats: int) -> dict[str, object]:
    return summary([timed(cmd)[:2] for _ in range(repeats)])


def dry_run(snakefile: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "snakemake", "-n", "-s", str(snakefile), *extra]


def dry_runs(repeats: int) -> dict[str, dict[str, object]]:
    """lmablate's and the bare Snakefile's dry runs, alternating, each in a fresh directory."""
    cmds = {"snakemake_dry_run": dry_run(REPO / "Snakefile", "--configfile", str(STUDY)),
            "bare_snakefile_dry_run": dry_run(BARE)}
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in cmds}
    for _ in range(repeats):
        for name, cmd in cmds.items():
            with tempfile.TemporaryDirectory(prefix="lmablate-bench-plan-") as tmp:
                runs[name].append(timed([*cmd, "-d", tmp])[:2])
    return {name: summary(r) for name, r in runs.items()}


def heavy_imports_at_parse() -> list[str]:
    """The heavy packages (torch, transformers, matplotlib) one lmablate dry run imports."""
    with tempfile.TemporaryDirectory(prefix="lmablate-bench-plan-") as tmp:
        err = timed([*dry_run(REPO / "Snakefile", "--configfile", str(STUDY)), "-d", tmp],
                    env={**ENV, "PYTHONPROFILEIMPORTTIME": "1"})[2]
    mods = {ln.rsplit("|", 1)[1].strip() for ln in err.splitlines()
            if ln.startswith("import time:")}
    return sorted(m for m in mods if m.split(".")[0] in HEAVY and "." not in m)


def slurm_state() -> dict[str, object]:
    """What each snakemake start pays for the Slurm plugin's ``scontrol show config``: 'up' (a
    controller answers), 'down' (it times out or fails) or 'absent' (no scontrol)."""
    if not shutil.which("scontrol"):
        return {"controller": "absent", "query_s": 0.0}
    t0 = time.perf_counter()
    try:
        ok = subprocess.run(["scontrol", "show", "config"], capture_output=True,
                            timeout=10, check=False).returncode == 0
    except subprocess.TimeoutExpired:
        ok = False
    return {"controller": "up" if ok else "down", "query_s": round(time.perf_counter() - t0, 3)}


def expand_in_process(repeats: int) -> dict[str, object]:
    from lmablate.study.load import read_study

    read_study(STUDY)  # warm imports
    walls, n = [], 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        n = len(read_study(STUDY).runs)
        walls.append(time.perf_counter() - t0)
    return {"wall_s": statistics.median(walls), "best_s": min(walls), "runs": n,
            "wall_all_s": [round(w, 3) for w in walls]}


def report(results: dict[str, dict], ratios: dict[str, float], slurm: list[dict],
           heavy: list[str], load: list[tuple[float, ...]]) -> None:
    print(f"{'step':<24} {'median s':>9} {'best s':>8} {'cpu s':>7}  target")
    for name, r in results.items():
        target = TARGETS.get(name)
        verdict = "" if target is None else (
            f"<= {target:g} s {'ok' if r['wall_s'] <= target else 'MISSED'}")
        print(f"{name:<24} {r['wall_s']:9.2f} {r['best_s']:8.2f} "
              f"{r.get('cpu_s', float('nan')):7.2f}  {verdict}")
    verdict = "ok" if ratios["median"] <= TARGET_RATIO_VS_BARE else "MISSED"
    print(f"\nsnakemake -n of the 1,152-run study: lmablate / bare Snakefile = "
          f"{ratios['median']:.2f}x by medians, {ratios['best']:.2f}x best vs best "
          f"(target <= {TARGET_RATIO_VS_BARE:g}x: {verdict})")
    print(f"heavy imports at parse: {', '.join(heavy) or 'none'}")
    print("Slurm controller: " + ", ".join(f"{s['controller']} ({s['query_s']:.2f} s per query)"
                                           for s in slurm) + " (before, after)")
    if any(s["controller"] == "down" for s in slurm):
        print("  every snakemake start waited on scontrol: both walls include it "
              "(.ci/slurm-up.sh starts a controller)")
    print(f"load average before {load[0][0]:.2f}, after {load[1][0]:.2f} "
          f"({os.cpu_count()} CPUs)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5, help="runs of each dry run (default 5)")
    args = ap.parse_args()

    py = sys.executable
    slurm = [slurm_state()]
    load = [os.getloadavg()]
    results: dict[str, dict] = dry_runs(args.repeats)
    heavy = heavy_imports_at_parse()
    results["lmablate_plan"] = measure([py, "-m", "lmablate", "plan", str(STUDY)], 3)
    results["read_study_in_process"] = expand_in_process(3)
    peers = {"python_startup": [py, "-c", "pass"],
             "import_torch": [py, "-c", "import torch"],
             "import_snakemake_cli": [py, "-c", "import snakemake.cli"],
             "snakemake_version": [py, "-m", "snakemake", "--version"]}
    for name, cmd in peers.items():
        results[name] = measure(cmd, 3)
    load.append(os.getloadavg())
    slurm.append(slurm_state())
    lm, bare = results["snakemake_dry_run"], results["bare_snakefile_dry_run"]
    ratios = {"median": lm["wall_s"] / bare["wall_s"], "best": lm["best_s"] / bare["best_s"]}
    report(results, ratios, slurm, heavy, load)

    out = HERE / "results" / f"{time.strftime('%Y-%m-%d')}-cpu-plan.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                            text=True, check=False).stdout.strip()
    out.write_text(json.dumps({
        "benchmark": "plan", "study": str(STUDY.relative_to(REPO)), "targets_s": TARGETS,
        "dry_run_ratio_vs_bare": ratios["median"], "dry_run_ratio_best_vs_best": ratios["best"],
        "target_ratio_vs_bare": TARGET_RATIO_VS_BARE, "heavy_imports_at_parse": heavy,
        "slurm_controller": slurm, "results": results, "repeats": args.repeats,
        "load_average": load, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform(), "node": platform.node()},
        "commit": commit}, indent=2) + "\n")
    print(f"wrote {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
