"""Light environments: the core install (and envs/analysis.yaml) holds no torch, tokenizers or
CUDA wheels, and the analysis path (the Snakefile's modules, harvest, every figure, the results
page) runs with everything only [train] and [eval] install blocked from import; a missing extra
is one line naming it."""

from __future__ import annotations

import importlib.metadata as md
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pandas as pd
import yaml
from conftest import REPO, write_run
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from lmablate.errors import EXTRAS, LmablateError, missing_extra
from lmablate.workflow.steps import error_line

PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
# what a light environment must never pull in (distribution names, canonical)
HEAVY = {"torch", "triton", "tokenizers", "safetensors", "transformers", "lm-eval", "accelerate"}


def extra(name: str) -> list[str]:
    """The requirements of pyproject's extra ``name`` ("" for the core dependencies)."""
    return PROJECT["dependencies"] if name == "" else PROJECT["optional-dependencies"][name]


def closure(reqs: list[str]) -> set[str]:
    """The canonical names of the distributions that installing ``reqs`` pulls in, following
    lmablate's own extras in pyproject.toml and every other one's metadata in this environment
    (markers evaluated here, as pip would)."""
    seen: set[str] = set()
    todo = [(Requirement(r), ()) for r in reqs]
    while todo:
        req, parent_extras = todo.pop()
        if req.marker and not any(req.marker.evaluate({"extra": e})
                                  for e in (*parent_extras, "")):
            continue
        name = canonicalize_name(req.name)
        if name == "lmablate":
            todo += [(Requirement(r), ()) for e in ["", *sorted(req.extras)] for r in extra(e)]
            continue
        key = f"{name}[{','.join(sorted(req.extras))}]"
        if key in seen:
            continue
        seen.add(key)
        try:
            requires = md.distribution(name).requires or []
        except md.PackageNotFoundError:
            continue
        todo += [(Requirement(r), tuple(req.extras)) for r in requires]
    return {k.split("[")[0] for k in seen}


def analysis_env_pip() -> list[str]:
    """The pip lines of envs/analysis.yaml."""
    doc = yaml.safe_load((REPO / "envs/analysis.yaml").read_text())
    return next(d["pip"] for d in doc["dependencies"] if isinstance(d, dict))


def test_the_core_install_and_the_analysis_env_pull_in_no_torch_or_cuda() -> None:
    core = closure(extra(""))
    assert {"snakemake", "pandas", "matplotlib", "scipy", "h5py"} <= core
    assert not core & HEAVY and not {d for d in core if d.startswith("nvidia-")}, core & HEAVY
    pip = analysis_env_pip()
    assert "-e .." in pip  # this checkout, with no extra
    env = closure([line for line in pip if not line.startswith("-e")] + extra(""))
    assert not env & HEAVY and not {d for d in env if d.startswith("nvidia-")}


def test_the_extras_install_training_slurm_and_the_whole_test_suite() -> None:
    train, test = closure(["lmablate[train]"]), closure(["lmablate[test]"])
    assert {"torch", "tokenizers", "safetensors", "h5py", "snakemake"} <= train
    assert "snakemake-executor-plugin-slurm" in closure(["lmablate[slurm]"])
    assert train | closure(["lmablate[slurm,eval]"]) <= test
    for name, pip_line in (("train", "-e ..[train]"), ("eval", "-e ..[eval]")):
        doc = yaml.safe_load((REPO / f"envs/{name}.yaml").read_text())
        assert pip_line in next(d["pip"] for d in doc["dependencies"] if isinstance(d, dict))


def test_each_optional_module_is_installed_by_the_extra_its_message_names() -> None:
    dists = md.packages_distributions()
    for module, name in EXTRAS.items():
        installs = {canonicalize_name(d) for d in dists[module]}
        assert installs & closure([f"lmablate[{name}]"]), (module, name)
        assert not installs & closure(extra("")), f"{module} is a core dependency"


def test_a_missing_extra_is_one_line_naming_it() -> None:
    err = missing_extra(ModuleNotFoundError("No module named 'torch'", name="torch"), "training")
    assert isinstance(err, LmablateError)
    assert str(err) == "training needs torch: pip install 'lmablate[train]'"
    line = error_line(ModuleNotFoundError("No module named 'lm_eval'", name="lm_eval"))
    assert line == "lmablate: error: this step needs lm_eval: pip install 'lmablate[eval]'"
    # a module no extra installs stays a bug, with its type
    assert "unexpected" in error_line(ModuleNotFoundError("no", name="torch._C"))
    assert missing_extra(ImportError("cannot import name 'x'", name="torch")) is None


def blocked_modules() -> list[str]:
    """The top-level modules of every distribution that [train] or [eval] pulls in and the
    core install does not: what a core-only install lacks."""
    only_extras = closure(["lmablate[train,eval]"]) - closure(extra(""))
    return sorted(mod for mod, ds in md.packages_distributions().items()
                  if mod.isidentifier() and {canonicalize_name(d) for d in ds} <= only_extras)


BLOCKER = """\
import sys
BLOCKED = set(sys.argv[1].split(","))

class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
        return None

sys.meta_path.insert(0, Blocker())
sys.argv = sys.argv[1:]
"""


def run_blocked(code: str, *args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter where every module of blocked_modules() fails to import,
    as where it is not installed."""
    blocked = blocked_modules()
    assert {"torch", "tokenizers", "safetensors", "transformers", "lm_eval"} <= set(blocked)
    return subprocess.run([sys.executable, "-c", BLOCKER + code, ",".join(blocked), *args],
                          capture_output=True, text=True, cwd=cwd, timeout=300)


ANALYSIS = """\
import json, re, sys
from pathlib import Path
root = Path(sys.argv[1])
mods = sorted({m for f in [Path("Snakefile"), *Path("rules").glob("*.smk")]
               for m in re.findall(r"^\\s*(?:import|from) (lmablate[\\w.]*)", f.read_text(), re.M)})
for m in mods:
    __import__(m)
import pandas as pd
from lmablate.figures.plan import plan_figures
from lmablate.results.page import write_results_page
from lmablate.workflow.steps import harvest_step, plot_study_step
finals = [str(p) for p in sorted((root / "runs").glob("*/final.json"))]
harvest_step(finals, root, study="hand", baseline="baseline")
plan = plan_figures(pd.read_parquet(root / "runs.parquet").to_dict("records"))
outputs = {name: str(root / "plots" / f"{name}.png") for name in plan}
plot_study_step(str(root / "runs.parquet"), str(root / "curves.parquet"), outputs,
                baseline="baseline", study="hand", figures=plan)
page_figures = {name: {"path": path, "what": name} for name, path in outputs.items()}
write_results_page(root / "runs.csv", root / "summary.json", root / "results.html", study="hand",
                   figures=page_figures, curves=root / "curves.parquet")
print(json.dumps({"modules": mods, "figures": sorted(plan),
                  "torch": "torch" in sys.modules}))
"""


def test_the_analysis_path_runs_with_the_training_extras_blocked(tmp_path: Path) -> None:
    """The Snakefile's modules, harvest, every figure a sweep (sizes x LRs, MoE, a diverged
    run) gets, and the results page, with torch & co. blocked."""
    runs = tmp_path / "runs"
    for i, d_model in enumerate((32, 64, 128)):
        for lr in (1e-3, 1e-2):
            for seed in (0, 1):
                diff = {k: v for k, v in (("model.d_model", d_model), ("train.lr", lr))
                        if (k, v) not in (("model.d_model", 64), ("train.lr", 1e-3))}
                write_run(runs, f"d{d_model}-lr{lr}-s{seed}", seed=seed, lr=lr,
                          status="diverged" if (i, lr, seed) == (2, 1e-2, 1) else "completed",
                          val_loss=3.0 - 0.3 * i + 0.05 * seed + (lr > 1e-3) * 0.2,
                          model={"d_model": d_model}, params=d_model**2 * 10, diff=diff,
                          axes={"model.d_model": d_model, "train.lr": lr})
    for seed in (0, 1):
        write_run(runs, f"moe-s{seed}", variant="moe", seed=seed, val_loss=2.5 + 0.1 * seed,
                  experts=4, model={"d_model": 64, "num_experts": 4}, params=64**2 * 30,
                  axes={"model.d_model": 64, "train.lr": 1e-3}, diff={"model.num_experts": 4})
    proc = run_blocked(ANALYSIS, str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "lmablate" in out["modules"] and len(out["modules"]) > 2, out["modules"]
    assert {"loss_curves", "final_val_loss", "scaling_law", "moe_load"} <= set(out["figures"])
    assert not out["torch"]
    for name in out["figures"]:
        assert (tmp_path / "plots" / f"{name}.png").stat().st_size > 10_000, name
    page = (tmp_path / "results.html").read_text()
    assert "lmablate-results" in page
    assert page.count("data:image/png;base64,") == len(out["figures"])
    runs = pd.read_csv(tmp_path / "runs.csv")
    assert len(runs) == 14 and (runs["status"] == "diverged").sum() == 1


def test_lmablate_train_without_torch_says_which_extra_in_one_line(tmp_path: Path) -> None:
    from lmablate import read_study

    run_id = next(iter(read_study(REPO / "config.yaml").by_id))
    proc = run_blocked("from lmablate.__main__ import entrypoint\nentrypoint()",
                       "train", str(REPO / "config.yaml"), run_id, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == "lmablate: error: training needs torch: pip install 'lmablate[train]'\n"
    assert not (tmp_path / "results").exists()
