"""`lmablate plan` is bounded on any input: memory bombs and absurd settings stop at plan time.

Expressions bound what they build (integers, strings, lists, format widths, ``logspace``'s count),
a sweep stops at :data:`lmablate.study.sweep.MAX_RUNS` runs while its grid is built, and settings
have
finite upper bounds (``MAX_*`` in :mod:`lmablate.study.config`), exact integers only. The property
test
plans generated studies (expressions, grids, huge integers, floats, nan, nested lists) in a
subprocess limited to 2 GiB of address space and 10 s of CPU time, and asserts that each prints
its plan or exits with one line starting ``lmablate:``, never a traceback. CPU time rather than
wall time is limited because the test machine is shared; a wall-clock timeout backs it up.
"""

from __future__ import annotations

import copy
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmablate.errors import ConfigError
from lmablate.study import config as C
from lmablate.study.load import study_from_dict
from lmablate.study.sweep import MAX_RUNS

BASE_FILE = Path(__file__).parent / "bad_inputs" / "base.yaml"
BASE = yaml.safe_load(BASE_FILE.read_text())
MEMORY = 2 * 2**30  # bytes of address space the plan may use
CPU_SECONDS = 10  # the plan's own CPU time
WALL_SECONDS = 60  # a backstop only: the machine running the tests is shared


def study(defaults: dict | None = None, **sweep) -> dict:
    """base.yaml with dotted ``defaults`` settings and the given sweep blocks."""
    doc = copy.deepcopy(BASE)
    for key, value in (defaults or {}).items():
        section, name = key.split(".", 1)
        doc["defaults"].setdefault(section, {})[name] = value
    doc["sweep"].update(sweep)
    return doc


def refusal(doc: dict) -> str:
    with pytest.raises(ConfigError) as info:
        study_from_dict(doc, base_dir=BASE_FILE.parent)
    line = str(info.value)
    assert "\n" not in line
    return line


# --------------------------------------------------------------------------------------------------
# the cases, in-process


@pytest.mark.parametrize("doc, message", [
    pytest.param(study(grid={"train.lr": "logspace(1e-4, 1e-2, 10**9)"}),
                 "sweep.grid.train.lr: cannot evaluate 'logspace(1e-4, 1e-2, 10**9)': logspace() "
                 "num must be between 1 and 100000, got 1000000000", id="logspace-count"),
    pytest.param(study(grid={"model.n_layers": "range(1, 100000)",
                             "train.lr": "logspace(1e-4, 1e-2, 100000)"}),
                 f"sweep.grid: the sweep expands to more than {MAX_RUNS} runs", id="two-ranges"),
    pytest.param(study(grid={"train.lr": "logspace(1e-4, 1e-2, 2000)"}, seeds=list(range(6))),
                 f"sweep.grid: the sweep expands to more than {MAX_RUNS} runs", id="x-seeds"),
    pytest.param(study(variants={f"v{i}": {"train.lr": 1e-3 * (i + 1),
                                           "grid": {"train.warmup": "seq(0, 0.5, 0.0001)"}}
                                 for i in range(3)}),
                 f"sweep.variants.v1.grid: the sweep expands to more than {MAX_RUNS} runs",
                 id="summed-over-variants"),
    pytest.param(study(grid={"model.d_ff": "=len('%999999999d' % 1)"}),
                 "sweep.grid.model.d_ff: format width or precision above 100000", id="format"),
    pytest.param(study({"model.d_model": "1e9"}),
                 "defaults.model.d_model: expected a value <= 65536, got 1000000000",
                 id="d_model-1e9"),
    pytest.param(study({"train.batch_size": 1e9}),
                 "defaults.train.batch_size: expected a value <= 1048576, got 1000000000",
                 id="batch_size-1e9"),
    pytest.param(study({"train.batch_size": 1024}),
                 "defaults.train.batch_size: one optimiser step (batch_size x grad_accum x seq_len"
                 " = 32768 tokens) is larger than the whole budget (train.tokens = 4096)",
                 id="step-above-budget"),
    pytest.param(study({"train.seed": 10**23}),
                 f"defaults.train.seed: expected a value <= {C.MAX_SEED}, got 10{'0' * 22}",
                 id="seed-10**23"),
    pytest.param(study(seeds=[0, 2**32]),
                 f"sweep.seeds: expected a non-empty list of integer seeds from 0 to {C.MAX_SEED}",
                 id="sweep-seed-2**32"),
    pytest.param(study({"model.n_layers": 2.5}), "defaults.model.n_layers: expected an integer",
                 id="not-an-integer"),
    pytest.param(study({"train.tokens": 1e23}), "defaults.train.tokens: expected an integer",
                 id="float-not-exact"),
    pytest.param(study({"model.d_ff": "round(5, -10**9)"}),
                 "round() ndigits must be an integer within ±400", id="round-digits"),
])
def test_refused_at_plan_time_with_one_line(doc, message):
    assert message in refusal(doc)


def test_exact_integers_in_any_notation_are_accepted():
    doc = study({"train.tokens": "1e4", "train.eval_tokens": 2048.0, "model.d_ff": "64"})
    cfg = study_from_dict(doc, base_dir=BASE_FILE.parent).runs[0].config
    assert (cfg.train.tokens, cfg.train.eval_tokens, cfg.model.d_ff) == (10_000, 2048, 64)
    assert isinstance(cfg.train.eval_tokens, int)


def test_upper_bounds_are_in_the_schema_and_inclusive():
    fields = C.field_help(C.ModelConfig)
    assert fields["d_model"]["le"] == C.MAX_WIDTH
    assert study_from_dict(study({"train.seed": C.MAX_SEED}),
                           base_dir=BASE_FILE.parent).runs[0].seed == 0  # sweep seeds win
    doc = study({"train.seed": C.MAX_SEED})
    del doc["sweep"]["seeds"]
    assert study_from_dict(doc, base_dir=BASE_FILE.parent).runs[0].seed == C.MAX_SEED
    schema = (Path(__file__).parents[1] / "schemas" / "config.schema.yaml").read_text()
    assert f"maximum: {C.MAX_SEED}" in schema and f"maximum: {C.MAX_WIDTH}" in schema


# --------------------------------------------------------------------------------------------------
# `lmablate plan` in a subprocess with limits


def _limits() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY, MEMORY))
    resource.setrlimit(resource.RLIMIT_CPU, (CPU_SECONDS, CPU_SECONDS))


@dataclass
class Planned:
    status: int
    stdout: str
    stderr: str
    peak_rss: int  # bytes, of the plan's process alone


def plan_limited(path: Path) -> Planned:
    """``lmablate plan path`` under the limits; a wall-clock overrun fails the test."""
    cmd = [sys.executable, "-m", "lmablate", "plan", str(path)]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, preexec_fn=_limits, stdout=out, stderr=err, text=True,
                                cwd=path.parent)
        timer = threading.Timer(WALL_SECONDS, proc.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak RSS
        finally:
            timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        done = Planned(proc.returncode, out.read(), err.read(), usage.ru_maxrss * 1024)
    if done.status == -signal.SIGKILL:
        pytest.fail(f"lmablate plan ran longer than {WALL_SECONDS} s on:\n{path.read_text()}")
    return done


def assert_plan_or_one_line(done: Planned, text: str) -> None:
    where = f"status {done.status} on:\n{text[:3000]}\nstderr:\n{done.stderr[-3000:]}"
    assert "Traceback" not in done.stderr, where
    if done.status == 0:
        assert done.stdout.rstrip().splitlines()[-1].startswith("total: "), where
        assert done.stderr == "", where
    else:
        assert done.status == 2, where  # not killed by a limit (a negative status)
        lines = done.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("lmablate: "), where
    assert done.peak_rss < MEMORY, where


def test_the_largest_study_allowed_plans_within_the_limits(tmp_path):
    path = tmp_path / "largest.yaml"
    path.write_text(yaml.safe_dump(study(grid={"train.lr": "logspace(1e-4, 1e-2, 1000)"},
                                         seeds=list(range(MAX_RUNS // 1000)))))
    done = plan_limited(path)
    assert_plan_or_one_line(done, path.read_text())
    assert done.status == 0 and f"total: {MAX_RUNS:,} runs" in done.stdout


# generated studies -------------------------------------------------------------------------------

INT_KEYS = ["model.d_model", "model.n_heads", "model.n_layers", "model.d_ff", "model.num_experts",
            "model.params_target", "model.context_length", "train.batch_size", "train.seq_len",
            "train.tokens", "train.seed", "train.grad_accum", "train.eval_every"]
FLOAT_KEYS = ["train.lr", "train.warmup", "model.dropout", "model.rope_theta",
              "model.embedding_share"]
NAMES = ["d_model", "n_heads", "n_layers", "d_ff", "lr", "batch_size", "seq_len", "tokens",
         "model.d_model", "seed", "variant"]

huge_ints = st.one_of(
    st.integers(-10**6, 10**6),
    st.integers(0, 4000).map(lambda k: 10**k),  # YAML ints stay under Python's 4300-digit limit
    st.integers(0, 13_000).map(lambda k: 2**k - 1),
    st.integers(-(10**40), 10**40),
)
sane = st.one_of(st.sampled_from([1, 2, 4, 8, 16, 32, 64, 128, 256]),
                st.sampled_from([1e-3, 0.01, 0.1, 0.5, 1.0]))  # so that some studies do plan
numbers = st.one_of(sane, huge_ints, st.floats(allow_nan=True, allow_infinity=True),
                    st.sampled_from(["1e9", "1e23", "10M", "2.5k", "1e308", "-0", "nan", ".inf",
                                     "1_000", "0x10", "9" * 400]))
scalars = st.one_of(numbers, st.booleans(), st.none(), st.text(max_size=12))

atoms = st.one_of(
    st.sampled_from(NAMES),
    huge_ints.filter(lambda n: abs(n) < 10**400).map(str),
    st.floats(allow_nan=False).map(repr),
    st.sampled_from(["10**9", "9**9**9", "2**4096", "'a'", "'%999999999d' % 1", "[1, 2]",
                     "[[0] * 1000] * 1000", "'x' * 10**9", "float('nan')", "1e308 * 10",
                     "round(5, -10**9)", "int('9' * 5000)", "range(10**9)"]),
)
expressions = st.recursive(atoms, lambda e: st.one_of(
    st.builds(lambda a, op, b: f"({a} {op} {b})", e,
              st.sampled_from(["+", "-", "*", "/", "//", "%", "**", "<", "==", "and", "in"]), e),
    st.builds(lambda f, a: f"{f}({a})", st.sampled_from(
        ["len", "int", "float", "abs", "round", "sqrt", "log2", "ceil", "floor", "range", "max",
         "min"]), e),
    st.builds(lambda f, a, b, c: f"{f}({a}, {b}, {c})",
              st.sampled_from(["range", "seq", "logspace", "round"]), e, e, e),
    st.builds(lambda a, b: f"[{a}, {b}]", e, e),
    st.builds(lambda a, b, c: f"{a} if {b} else {c}", e, e, e),
    st.builds(lambda width, a: f"'%{width}d' % {a}", st.integers(0, 10**12), e),
), max_leaves=8)
nested_lists = st.recursive(scalars, lambda c: st.lists(c, max_size=4), max_leaves=10)
values = st.one_of(sane, scalars, expressions, expressions.map(lambda s: "=" + s), nested_lists,
                   st.lists(expressions, min_size=1, max_size=3))
grid_values = st.one_of(st.lists(sane, min_size=1, max_size=5),
                        st.lists(st.one_of(numbers, expressions), min_size=1, max_size=5),
                        expressions, st.sampled_from([
                            "range(1, 100000)", "logspace(1e-4, 1e-2, 100000)",
                            "seq(n_heads * 8, n_heads * 64, n_heads * 8)",
                            "[n_heads, 2 * d_model]"]))


@st.composite
def studies(draw) -> dict:
    keys = st.sampled_from(INT_KEYS + FLOAT_KEYS)
    defaults = draw(st.dictionaries(keys, values, max_size=3))
    sweep: dict = {"grid": draw(st.dictionaries(keys, grid_values, max_size=3))}
    if draw(st.booleans()):
        sweep["seeds"] = draw(st.one_of(st.lists(huge_ints, min_size=1, max_size=4),
                                        expressions, nested_lists))
    if draw(st.booleans()):
        sweep["where"] = draw(expressions)
    if draw(st.booleans()):
        sweep["zip"] = draw(st.dictionaries(keys, grid_values, min_size=1, max_size=2))
    return study(defaults, **sweep)


@pytest.fixture(scope="module")
def study_dir() -> Path:
    with tempfile.TemporaryDirectory(prefix="plan-limits-") as d:
        yield Path(d)


@pytest.mark.slow
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.data_too_large])
@given(doc=studies())
def test_plan_of_any_study_prints_the_plan_or_one_line(doc, study_dir):
    path = study_dir / "generated.yaml"
    text = yaml.safe_dump(doc, sort_keys=False)
    path.write_text(text)
    assert_plan_or_one_line(plan_limited(path), text)
