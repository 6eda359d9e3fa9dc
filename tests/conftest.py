"""Shared fixtures: the repository, a tiny study, running real snakemake in a temp dir, a real
token store with a small run config, and a workspace of trained runs."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

import pytest
import yaml

if TYPE_CHECKING:
    from lmablate.study.config import RunConfig

REPO = Path(__file__).resolve().parents[1]

# A study small enough to train on a CPU in seconds: the `debug` model on 400 shipped stories.
TINY_STUDY = {
    "study": "tiny",
    "data": {"corpus": "tiny-stories", "val_fraction": 0.1},
    "corpora": {"tiny-stories": {"source": "file", "path": "package:tinystories_valid_1k.txt",
                                 "separator": "\n\n", "max_documents": 400}},
    "tokenizer": {"kind": "bpe", "vocab_size": 320},
    "defaults": {
        "model": {"preset": "debug"},
        "train": {"tokens": 8192, "batch_size": 8, "seq_len": 32, "lr": 3e-3, "eval_every": 8,
                  "eval_tokens": 2048, "log_every": 4},
    },
    "sweep": {"variants": {"baseline": {}, "post_norm": {"model.norm_position": "post"}},
              "seeds": [0, 1]},
}


@pytest.fixture
def tiny_study() -> dict:
    import copy

    return copy.deepcopy(TINY_STUDY)


def write_yaml(path: Path, doc: dict) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


# Whether the test being set up or run carries the `workflow` mark (set before its fixtures, so
# a module-scoped fixture that runs snakemake is checked against the test that first needs it).
_IN_WORKFLOW_TEST = [False]


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    _IN_WORKFLOW_TEST[0] = item.get_closest_marker("workflow") is not None


def snakemake(workdir: Path, *args: str, configfile: str | None = "study.yaml",
              check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the real snakemake CLI on this repo's Snakefile in ``workdir`` (only from a test
    marked ``workflow``, so that ``-m "not workflow"`` leaves out every such run)."""
    assert _IN_WORKFLOW_TEST[0], "a test that runs snakemake needs @pytest.mark.workflow"
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir)]
    if configfile:
        cmd += ["--configfile", str(workdir / configfile)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=workdir)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def jobs(out: str) -> tuple[Counter, dict[str, set[str]]]:
    """(jobs per rule, run IDs per rule) of the jobs snakemake lists in ``out``: the output of a
    dry run (planned) or of a real one (ran)."""
    rules: Counter = Counter()
    run_ids: dict[str, set[str]] = {}
    current = None
    for line in out.splitlines():
        m = re.match(r"^(?:local)?(?:rule|checkpoint) (\w+):", line.strip())
        if m:
            current = m.group(1)
            rules[current] += 1
            continue
        m = re.search(r"wildcards: .*run_id=([^,\s]+)", line)
        if m and current:
            run_ids.setdefault(current, set()).add(m.group(1))
    rules.pop("all", None)
    return rules, run_ids


def planned(workdir: Path, *args: str, **kw) -> tuple[Counter, set[str]]:
    """(jobs per rule, run IDs of planned train_model jobs) of ``snakemake -n``."""
    proc = snakemake(workdir, "-n", *args, **kw)
    rules, run_ids = jobs(proc.stdout + proc.stderr)
    return rules, run_ids.get("train_model", set())


class LocalServer(ThreadingHTTPServer):
    """An HTTP server on 127.0.0.1 (a free port), for tests that drive the real download
    clients (urllib, huggingface_hub) against it."""

    daemon_threads = True

    def __init__(self, handler: type) -> None:
        super().__init__(("127.0.0.1", 0), handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@contextmanager
def serving(srv: LocalServer, poll_interval: float = 0.5) -> Iterator[LocalServer]:
    """Serve ``srv`` on a background thread for the duration of the block, then close it."""
    thread = threading.Thread(target=srv.serve_forever, args=(poll_interval,), daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=5)


# --------------------------------------------------------------------------------------------------
# a real token store and a small run config (test_train.py, test_lrfind.py, test_phases_train.py)

TRAIN = {"tokens": 10240, "batch_size": 8, "seq_len": 32, "lr": 3e-3, "eval_every": 10,
         "eval_tokens": 2048, "log_every": 5, "checkpoint_every": 2}
COMPARED = ("val_loss", "best_val_loss", "val_acc", "val_top5", "val_ece", "final_train_loss",
            "steps", "tokens")


def run_config(**train) -> RunConfig:
    """A 2-layer, 32-wide model over the ``tokens`` store, ``train`` settings over :data:`TRAIN`."""
    from lmablate.study.config import RunConfig, from_dict

    return from_dict(RunConfig, {"model": {"d_model": 32, "n_layers": 2, "n_heads": 2, "d_ff": 64},
                                 "train": {**TRAIN, **train}, "tokenizer": {"vocab_size": 320}})


def assert_same_run(final: dict, ref: dict) -> None:
    """A resumed run ends where the uninterrupted one did: bitwise on the CPU; on CUDA, where
    atomic adds in the embedding backward are not bitwise reproducible, losses within 1e-4
    relative and the token-counting metrics (accuracy, top-5, ECE) within 0.005."""
    for key in COMPARED:
        if final["device"].startswith("cuda") and isinstance(ref[key], float):
            tol = {"rel": 1e-4} if "loss" in key else {"abs": 5e-3}
            assert final[key] == pytest.approx(ref[key], **tol), key
        else:
            assert final[key] == ref[key], key


@pytest.fixture(scope="session")
def tokens(tmp_path_factory) -> Path:
    """A real token store: 400 shipped stories, a 320-token BPE, HDF5."""
    from lmablate.data.corpora import is_val, iter_documents, load_manifest, prepare_corpus
    from lmablate.data.tokenizer import build_tokenizer
    from lmablate.data.tokens import encode_corpus
    from lmablate.study.config import RunConfig, from_dict
    from lmablate.study.corpus_spec import resolve_corpora

    d = tmp_path_factory.mktemp("data")
    spec = resolve_corpora(TINY_STUDY["corpora"], d)["tiny-stories"]
    manifest = prepare_corpus(spec, d / "corpus")
    docs = (t for t in iter_documents(load_manifest(manifest)) if not is_val(t, 0.1))
    cfg = from_dict(RunConfig, {"tokenizer": {"vocab_size": 320}}).tokenizer
    build_tokenizer(cfg, docs, d / "tok" / "tokenizer.json")
    encode_corpus(manifest, d / "tok" / "tokenizer.json", d / "tokens.h5", val_fraction=0.1)
    return d / "tokens.h5"


# --------------------------------------------------------------------------------------------------
# a token store with a test split (test_epochs.py, test_report_tables.py)

TEST_TEXT = Path(__file__).parent / "data" / "wikitext2_test_excerpt.txt"  # WikiText-2 excerpt


@pytest.fixture(scope="session")
def split_tokens(tmp_path_factory) -> Path:
    """A real token store with all three splits: 40 shipped stories (hash split, 20% validation)
    and the WikiText-2 test excerpt as the corpus' ``test`` source; a 300-token BPE, HDF5."""
    from lmablate.data.corpora import load_manifest, prepare_corpus, split_documents
    from lmablate.data.tokenizer import build_tokenizer
    from lmablate.data.tokens import encode_corpus
    from lmablate.study.config import RunConfig, from_dict
    from lmablate.study.corpus_spec import resolve_corpora

    d = tmp_path_factory.mktemp("split_tokens")
    spec = resolve_corpora({"c": {"source": "file", "path": "package:tinystories_valid_1k.txt",
                                  "max_documents": 40, "test": str(TEST_TEXT)}}, d)["c"]
    manifest = prepare_corpus(spec, d / "corpus")
    docs = (x for _, x in split_documents(load_manifest(manifest), 0.2, split="train"))
    cfg = from_dict(RunConfig, {"tokenizer": {"vocab_size": 300}}).tokenizer
    build_tokenizer(cfg, docs, d / "tok" / "tokenizer.json")
    encode_corpus(manifest, d / "tok" / "tokenizer.json", d / "tokens.h5", val_fraction=0.2)
    return d / "tokens.h5"


# --------------------------------------------------------------------------------------------------
# a workflow-shaped workspace with trained and untrained runs (test_tasks.py, test_harness.py)

TASK_DATA = Path(__file__).parent / "data" / "tasks"  # synthetic task rows (see its README)
EVAL_STUDY = "evaltest"
EVAL_VAL_FRACTION = 0.2


@pytest.fixture(scope="session")
def workspace(tmp_path_factory) -> SimpleNamespace:
    """resources/{corpora,tokenizers,tokens} as the workflow lays them out, from the 1,000
    shipped stories (a 320-token BPE), and results/<study>/runs/ with four runs: trained and
    untrained (initial weights), seeds 0 and 1."""
    import torch

    from lmablate.data.corpora import is_val, iter_documents, load_manifest, prepare_corpus
    from lmablate.data.tokenizer import build_tokenizer
    from lmablate.data.tokens import encode_corpus
    from lmablate.engine.train import train
    from lmablate.study.config import RunConfig, from_dict
    from lmablate.study.corpus_spec import resolve_corpora

    root = tmp_path_factory.mktemp("eval")
    corpus = resolve_corpora({"stories": {"source": "file", "separator": "\n\n",
                                          "path": "package:tinystories_valid_1k.txt"}},
                             root)["stories"]
    manifest = prepare_corpus(corpus, root / "resources/corpora/stories")
    tok_cfg = from_dict(RunConfig, {"tokenizer": {"vocab_size": 320}}).tokenizer
    tokenizer = root / "resources/tokenizers/stories-d1/tokenizer.json"
    docs = (t for t in iter_documents(load_manifest(manifest)) if not is_val(t, EVAL_VAL_FRACTION))
    build_tokenizer(tok_cfg, docs, tokenizer)
    tokens = root / "resources/tokens/stories-d1.h5"
    encode_corpus(manifest, tokenizer, tokens, val_fraction=EVAL_VAL_FRACTION)
    runs = root / "results" / EVAL_STUDY / "runs"
    torch.set_num_threads(1)
    train_settings = {"tokens": 100_000, "batch_size": 8, "seq_len": 64, "lr": 3e-3,
                      "eval_every": 1000, "eval_tokens": 2048, "log_every": 100}
    for seed in (0, 1):
        cfg = {"model": {"d_model": 32, "n_layers": 2, "n_heads": 2, "d_ff": 64},
               "train": {**train_settings, "seed": seed},
               "data": {"corpus": "stories", "val_fraction": EVAL_VAL_FRACTION},
               "tokenizer": {"vocab_size": 320}}
        meta = {"study": EVAL_STUDY, "variant": "trained", "seed": seed, "data_id": "d1"}
        train(cfg, tokens, runs / f"trained-s{seed}", run_id=f"trained-s{seed}", meta=meta,
              progress=False, device="cpu")
        untrained_run(runs / f"trained-s{seed}", runs / f"untrained-s{seed}", seed)
    return SimpleNamespace(root=root, manifest=manifest, tokenizer=tokenizer, runs=runs)


def untrained_run(src: Path, dst: Path, seed: int) -> None:
    """A run directory like ``src`` whose weights are the initial ones (variant "untrained")."""
    import torch
    from safetensors.torch import load_file, save_file

    from lmablate.engine.model import LM
    from lmablate.study.config import RunConfig, from_dict

    dst.mkdir(parents=True)
    doc = yaml.safe_load((src / "config.yaml").read_text())
    doc.update(run_id=dst.name, variant="untrained")
    (dst / "config.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    final = json.loads((src / "final.json").read_text())
    (dst / "final.json").write_text(json.dumps({**final, "run_id": dst.name}))
    cfg = from_dict(RunConfig, {k: doc[k] for k in ("model", "train", "data", "tokenizer")})
    vocab = load_file(str(src / "model.safetensors"))["embed.weight"].shape[0]
    torch.manual_seed(seed)
    state = LM(cfg.model, vocab, max_seq_len=cfg.train.seq_len).state_dict()
    save_file({k: v.contiguous() for k, v in state.items() if k != "head.weight"},
              str(dst / "model.safetensors"))


# --------------------------------------------------------------------------------------------------
# run directories written by hand (test_harvest.py, test_plots.py)


def write_run(root: Path, run_id: str, *, variant: str = "baseline", seed: int = 0,
              status: str = "completed", val_loss: float | None = 1.0,
              model: dict | None = None, lr: float = 3e-3, axes: dict | None = None,
              diff: dict | None = None, params: int = 1000, evals: int = 4,
              reliability: bool = True, experts: int = 0, tokens: int = 4096) -> Path:
    """One run directory as train.py writes it; the val curve ends at ``val_loss``."""
    d = root / run_id
    d.mkdir(parents=True)
    cfg = {"run_id": run_id, "study": "hand", "variant": variant, "seed": seed,
           "axes": axes or {}, "diff": diff or {},
           "model": {"d_model": 32, "n_layers": 2, "n_heads": 2, "ffn": "swiglu",
                     "num_experts": experts, **(model or {})},
           "train": {"tokens": tokens, "lr": lr, "seed": seed}, "data": {"corpus": "c"},
           "tokenizer": {"kind": "bpe", "vocab_size": 256}}
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    records = []
    step_tokens = tokens // evals
    last = val_loss if val_loss is not None else float("nan")
    for i in range(1, evals + 1):
        records.append({"step": 2 * i, "tokens": step_tokens * i, "split": "train",
                        "loss": last + 1.0 + (evals - i) * 0.5, "lr": lr})
        rec = {"step": 2 * i, "tokens": step_tokens * i, "split": "val",
               "loss": last + (evals - i) * 0.5, "ppl": math.exp(last + (evals - i) * 0.5)}
        if experts:
            share = [(k + 1) / sum(range(1, experts + 1)) for k in range(experts)]
            rec.update({"expert_load": share, "expert_gini": 0.2 + 0.01 * i,
                        "expert_entropy": 1.8 - 0.01 * i})
        records.append(rec)
    if status == "diverged":
        records = records[:3]
        records[-1]["loss"] = float("nan")
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    final = {"run_id": run_id, "status": status, "steps": 2 * evals, "tokens": tokens,
             "diverged_at_step": 4 if status == "diverged" else None,
             "params": {"total": params, "non_embedding": params // 2},
             "tokens_per_s": 1000.0, "peak_mem_mb": 100.0, "device": "cpu"}
    if status == "stopped_early":  # evaluated where it stopped, as train.final_metrics does
        final["stopped_early_at_step"] = 2 * evals
    if status in ("completed", "stopped_early"):
        final.update({"val_loss": val_loss, "val_ppl": math.exp(val_loss),
                      "best_val_loss": val_loss})
        if reliability:
            final["reliability"] = {"bin_confidence": [0.1, 0.5, 0.9],
                                    "bin_accuracy": [0.12, 0.45, 0.95],
                                    "bin_count": [50, 30, 20]}
    (d / "final.json").write_text(json.dumps(final))
    return d


def fill(mount: Path) -> None:
    """Write zeros until the file system is full (unbuffered: every byte that fits is written)."""
    with open(mount / "filler", "wb", buffering=0) as fh:
        for size in (1 << 16, 512, 1):
            try:
                while True:
                    fh.write(bytes(size))
            except OSError:
                pass
