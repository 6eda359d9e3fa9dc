"""Sweep expansion and run IDs: seed 000's grid, variants with their own axes, parameter targets,
and the properties run IDs must keep (order-invariant, one per config, stable everywhere)."""

from __future__ import annotations

import glob
import json
import os
import random
import shutil
import subprocess
import sys
from itertools import product
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmablate.dicts import canonical_json, run_hash
from lmablate.errors import ConfigError
from lmablate.study import accounting
from lmablate.study import config as C
from lmablate.study.solve import model_vocab, solve
from lmablate.study.sweep import RUN_HASH_HEX, expand, identity, legacy_run_id, set_override

# A corpus passed straight to expand(): its identity is only these keys (the absolute path is
# machine-specific and stays out of every ID).
CORPORA = {"golden": {"name": "golden", "source": "file", "path": "golden.txt",
                      "_abs": "/somewhere/golden.txt"}}
BASE = {"study": "t", "data": {"corpus": "golden"}, "tokenizer": {"kind": "bpe", "vocab_size": 512},
        "defaults": {"model": {"preset": "debug"},
                     "train": {"tokens": 8192, "batch_size": 8, "seq_len": 32}}}
GOLDEN_DOC = {**BASE, "sweep": {"variants": {
    "baseline": {}, "post_norm": {"model.norm_position": "post"},
    "lr": {"grid": {"train.lr": [1e-3, 1e-2]}}}, "seeds": [0, 1]}}
# Pinned: a change here means every existing result directory gets a new ID. If that is intended
# (a new config field, a new hashing scheme), update these together with a note to users.
GOLDEN_IDS = [
    "baseline-s0-dc1420d263a72896", "baseline-s1-f2af581ed0289dc2",
    "post_norm-s0-be287206716167a4", "post_norm-s1-8b080111dcfde1ec",
    "lr-lr=0.001-s0-16b442e1e3abba85", "lr-lr=0.001-s1-9b86decce88f8c0c",
    "lr-lr=0.01-s0-03774d54b6e19d46", "lr-lr=0.01-s1-3009c216afb79910",
]
# The same runs' IDs with the 8-digit hash run IDs had before it grew to 16 (a prefix of it).
LEGACY_GOLDEN_IDS = [
    "baseline-s0-dc1420d2", "baseline-s1-f2af581e", "post_norm-s0-be287206",
    "post_norm-s1-8b080111", "lr-lr=0.001-s0-16b442e1", "lr-lr=0.001-s1-9b86decc",
    "lr-lr=0.01-s0-03774d54", "lr-lr=0.01-s1-3009c216",
]
GOLDEN_HASH = "e36f9aaa"  # run_hash of a fixed object: the hashing scheme alone

SEED000_GRID = {  # seed 000's four nested bash loops
    "model.n_heads": [6, 8, 10, 12, 14, 16],
    "model.d_model": "seq(n_heads * 8, n_heads * 64, n_heads * 8)",
    "model.d_ff": "seq(d_model // 2, 2 * d_model, d_model // 2)",
    "model.n_layers": "seq(n_heads + 2, n_heads + 12, 2)",
}


def study(**sweep) -> dict:
    return {**json.loads(json.dumps(BASE)), "sweep": sweep}


def bash_seq(first: int, increment: int, last: int) -> list[int]:
    """GNU ``seq FIRST INCREMENT LAST``."""
    out, x = [], first
    while x <= last:
        out.append(x)
        x += increment
    return out


def seed000_bash_loop() -> set[tuple[int, int, int, int]]:
    """The seed's loop, statement for statement: (heads, layers, hidden, intermediate)."""
    configs = set()
    for heads in (6, 8, 10, 12, 14, 16):
        for hidden in bash_seq(heads * 8, heads * 8, heads * 64):
            for inter in bash_seq(hidden // 2, hidden // 2, 2 * hidden):
                if inter < 1:
                    continue
                for layers in bash_seq(heads + 2, 2, heads + 12):
                    configs.add((heads, layers, hidden, inter))
    return configs


@pytest.fixture(scope="module")
def seed000_runs():
    return expand(study(grid=SEED000_GRID), CORPORA)


# --------------------------------------------------------------------------------------------------
# expansion


def test_seed000_grid_is_exactly_the_bash_loop(seed000_runs):
    got = [(r.config.model.n_heads, r.config.model.n_layers, r.config.model.d_model,
            r.config.model.d_ff) for r in seed000_runs]
    assert len(got) == 1152 == len(set(got))
    assert set(got) == seed000_bash_loop()
    assert len({r.run_id for r in seed000_runs}) == 1152


def test_seed000_axes_may_be_listed_in_any_order(seed000_runs):
    reordered = dict(reversed(list(SEED000_GRID.items())))  # d_ff before the d_model it uses
    again = expand(study(grid=reordered), CORPORA)
    assert [r.run_id for r in again] == [r.run_id for r in seed000_runs]


def test_variant_with_its_own_grid_and_seeds():
    runs = expand(study(variants={
        "baseline": {},
        "no_layer_norm": {"model.norm": "none", "grid": {"train.lr": [3e-4, 1e-4, 5e-5, 2e-5]},
                          "seeds": [0, 1]},
        "post_norm": {"model": {"norm_position": "post"}},  # nested form works too
    }), CORPORA)
    by_variant = {}
    for r in runs:
        by_variant.setdefault(r.variant, []).append(r)
    assert [len(by_variant[v]) for v in ("baseline", "no_layer_norm", "post_norm")] == [1, 8, 1]
    lrs = sorted({r.config.train.lr for r in by_variant["no_layer_norm"]})
    assert lrs == [2e-5, 5e-5, 1e-4, 3e-4]
    assert all(r.config.model.norm == "none" for r in by_variant["no_layer_norm"])
    assert by_variant["post_norm"][0].diff == {"model.norm_position": "post"}
    assert by_variant["no_layer_norm"][0].run_id.startswith("no_layer_norm-lr=0.0003-s0-")


def test_zip_steps_axes_in_lockstep_and_grid_multiplies():
    runs = expand(study(zip={"train.seq_len": [16, 32], "train.batch_size": [16, 8]},
                        grid={"model.n_layers": [1, 2, 3]}), CORPORA)
    pairs = {(r.config.train.seq_len, r.config.train.batch_size, r.config.model.n_layers)
             for r in runs}
    assert pairs == {(s, b, n) for (s, b), n in product([(16, 16), (32, 8)], [1, 2, 3])}


def test_where_sees_derived_values_and_variant():
    doc = study(variants={"gelu": {"model.ffn": "gelu"}, "swiglu": {}},
                grid={"model.d_model": [32, 64]}, where="d_ff >= 160 or variant == 'gelu'")
    doc["defaults"]["model"] = {"n_heads": 2, "n_layers": 1}  # d_ff derived from d_model
    runs = expand(doc, CORPORA)
    # swiglu's derived d_ff is 8/3 d_model rounded up to 8s (88, 176): only d_model 64 is kept
    assert sorted((r.variant, r.config.model.d_model) for r in runs) == [
        ("gelu", 32), ("gelu", 64), ("swiglu", 64)]


def test_derived_values_may_refer_to_themselves_and_each_other():
    runs = expand(study(variants={"small": {"model.d_model": "d_model * 2",
                                            "model.d_ff": "4 * d_model",
                                            "train.lr": "=lr / 10"}}), CORPORA)
    m, t = runs[0].config.model, runs[0].config.train
    assert (m.d_model, m.d_ff, t.lr) == (64, 256, pytest.approx(3e-4))  # d_model from defaults


def test_string_settings_are_not_expressions_without_equals():
    runs = expand({**study(), "tokenizer": {"kind": "file", "path": "tok/a-b.json"}}, CORPORA)
    assert runs[0].config.tokenizer.path == "tok/a-b.json"


@pytest.mark.parametrize("sweep, message", [
    pytest.param({"grid": {"model.d_model": "range(64, 32)"}}, "sweep.grid.model.d_model: axis has "
                 "no values", id="empty-axis"),
    pytest.param({"grid": {"model.d_model": [32, 64]}, "where": "d_model > 100"},
                 "sweep: `where` 'd_model > 100' removes all 2 points", id="where-removes-all"),
    pytest.param({"variants": {"a": {"model.ffn": "silu", "where": "d_ff < 0"}}},
                 "sweep.variants.a: `where` 'd_ff < 0' removes all 1 points", id="variant-where"),
    pytest.param({"grid": {"model.d_model": "seq(32,, 64)"}}, "syntax error in expression",
                 id="syntax-error"),
    pytest.param({"grid": {"model.d_model": "d_ff * 2", "model.d_ff": "d_model * 2"}},
                 "grid axes depend on each other in a cycle", id="cycle"),
    pytest.param({"grid": {"modle.d_model": [32]}}, "unknown section 'modle' (did you mean "
                 "'model'?)", id="section-typo"),
    pytest.param({"seeds": []}, "sweep.seeds: expected a non-empty list", id="no-seeds"),
    pytest.param({"zip": {"train.lr": [1e-3, 1e-4], "train.seq_len": [16]}},
                 "all zip lists must have the same length", id="zip-lengths"),
])
def test_bad_sweeps_fail_with_one_line(sweep, message):
    with pytest.raises(ConfigError) as info:
        expand(study(**sweep), CORPORA)
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("variants", [
    {"emb": {"grid": {"model.d_ff": [64, 96]}}, "heads": {"grid": {"model.n_heads": [1, 2]}}},
    {"heads": {"grid": {"model.n_heads": [2, 1]}}, "emb": {"grid": {"model.d_ff": [96, 64]}}},
], ids=["one-order", "other-order"])
def test_sweep_points_of_one_config_are_one_run_in_both_groups(variants):
    """One-axis sweeps meeting at the defaults (d_ff 64 = n_heads 2 here) train that point once;
    the run names both points, and its ID is the same whatever the YAML order."""
    doc = study(variants=variants)
    doc["defaults"]["model"] = {"preset": "debug", "d_ff": 64, "n_heads": 2}
    runs = expand(doc, CORPORA)
    assert len(runs) == 3 and len({resolved_key(r) for r in runs}) == 3
    centre = next(r for r in runs if r.shared)
    assert centre.run_id.startswith("emb-d_ff=64-s0-")  # the smaller of the two points' IDs
    assert centre.memberships() == [("emb", {"model.d_ff": 64}), ("heads", {"model.n_heads": 2})]
    assert "shared" not in centre.to_dict()  # sharing never changes what the train job sees
    assert sorted(r.run_id for r in runs) == sorted(
        r.run_id for r in expand({**doc, "sweep": {"variants": dict(reversed(variants.items()))}},
                                 CORPORA))
    same = expand(study(variants={"baseline": {}, "same": {"model.d_model": 32}}), CORPORA)
    assert [r.memberships() for r in same] == [[("baseline", {}), ("same", {})]]


def test_set_override_addresses_dotted_axes_and_variant_settings():
    doc = {"defaults": {"model": {"d_model": 64}, "train.lr": 1e-3},
           "sweep": {"grid": {"model.n_heads": [2, 4]}, "variants": {"a": {"model.ffn": "silu"},
                                                                      "b": None}}}
    set_override(doc, "sweep.grid.model.n_heads", [8])
    set_override(doc, "sweep.variants.a.model.ffn", "gelu")
    set_override(doc, "sweep.variants.a.grid.train.lr", [1e-2])
    set_override(doc, "sweep.variants.b.model.norm", "none")
    set_override(doc, "defaults.model.d_model", 32)
    set_override(doc, "defaults.train.lr", 3e-4)
    set_override(doc, "sweep.seeds", [0, 1])
    assert doc == {"defaults": {"model": {"d_model": 32}, "train.lr": 3e-4},
                   "sweep": {"grid": {"model.n_heads": [8]}, "seeds": [0, 1],
                             "variants": {"a": {"model.ffn": "gelu", "grid": {"train.lr": [1e-2]}},
                                          "b": {"model.norm": "none"}}}}


def test_run_to_dict_is_the_resolved_config_and_safe_to_modify(seed000_runs):
    run = seed000_runs[5]
    d = run.to_dict()
    assert {k: d[k] for k in C.SECTIONS} == C.to_dict(run.config)
    d["tokenizer"]["special_tokens"].append("<x>")
    d["model"]["d_model"] = -1
    assert run.to_dict()["tokenizer"] == C.to_dict(run.config.tokenizer)
    assert run.to_dict()["model"]["d_model"] == run.config.model.d_model


# --------------------------------------------------------------------------------------------------
# parameter targets (seed 003)


@pytest.mark.parametrize("share, expansion", list(product([0.25, 0.35, 0.45],
                                                          [2.0, 2.66, 3.0, 4.0])))
def test_seed003_targets_are_met_within_half_a_percent(share, expansion):
    model = C.ModelConfig(n_heads=4)
    sol = solve(model, 16000, 512, 10_000_000, embedding_share=share, glu_expansion=expansion)
    solved = C.ModelConfig(n_heads=4, d_model=sol.d_model, n_layers=sol.n_layers, d_ff=sol.d_ff)
    counts = accounting.param_counts(solved, 16000, 512)
    assert abs(counts["total"] - 10_000_000) <= 0.005 * 10_000_000
    assert abs(counts["embedding_share"] - share) <= 0.02
    assert abs(sol.d_ff / sol.d_model - expansion) <= 0.1 * expansion
    assert not solved.check()


@pytest.mark.parametrize("target, share, message", [
    pytest.param(10_000_000, 0.99, "nearest achievable is", id="share-too-high"),
    pytest.param(100_000, 0.35, "nearest achievable is 128.30K params", id="below-embedding"),
])
def test_unreachable_targets_name_the_nearest(target, share, message):
    with pytest.raises(ConfigError) as info:
        solve(C.ModelConfig(n_heads=4), 16000, 512, target, embedding_share=share,
              glu_expansion=2.66)
    text = str(info.value)
    assert text.startswith("params_target: ") and message in text and "\n" not in text


def test_params_target_resolves_at_expansion():
    doc = study(grid={"model.embedding_share": [0.25, 0.35], "model.glu_expansion": [2.0, 2.66]})
    doc["tokenizer"]["vocab_size"] = 2048
    doc["defaults"]["model"] = {"params_target": "400k", "n_heads": 2, "embedding_share": 0.35,
                                "glu_expansion": 2.66}
    runs = expand(doc, CORPORA)
    assert len(runs) == 4
    for r in runs:
        m = r.config.model
        counts = accounting.param_counts(m, model_vocab(m, r.config.tokenizer), 32)
        assert abs(counts["total"] - 400_000) <= 2000, r.run_id
        assert abs(counts["embedding_share"] - m.embedding_share) <= 0.02, r.run_id
    # the solved dims are part of the identity: a different vocabulary gives different runs
    doc["tokenizer"]["vocab_size"] = 2560
    assert not {r.run_id for r in runs} & {r.run_id for r in expand(doc, CORPORA)}


@pytest.mark.parametrize("model, message", [
    pytest.param({"embedding_share": 0.3}, "model.embedding_share: only applies with "
                 "model.params_target", id="share-without-target"),
    pytest.param({"params_target": "10M", "num_experts": 4}, "not supported for MoE",
                 id="moe"),
    pytest.param({"params_target": "20k", "embedding_share": 0.9}, "cannot be met", id="unmet"),
])
def test_bad_targets_fail_at_expansion(model, message):
    doc = study()
    doc["defaults"]["model"] = model
    with pytest.raises(ConfigError) as info:
        expand(doc, CORPORA)
    assert message in str(info.value) and str(info.value).startswith("defaults.model.")


def test_model_vocab_is_what_training_pads_to():
    tok = C.TokenizerConfig
    assert model_vocab(C.ModelConfig(), tok(kind="bpe", vocab_size=16000)) == 16000
    assert model_vocab(C.ModelConfig(), tok(kind="bpe", vocab_size=1000)) == 1024
    assert model_vocab(C.ModelConfig(), tok(kind="byte")) == 320  # 257 padded to 64s
    assert model_vocab(C.ModelConfig(), tok(kind="char")) is None
    assert model_vocab(C.ModelConfig(vocab_size=300), tok(kind="char")) == 300


# --------------------------------------------------------------------------------------------------
# run IDs


def test_golden_ids_and_hash_are_pinned():
    assert run_hash({"b": [1, 2.5, "x"], "a": {"z": None, "y": True}}) == GOLDEN_HASH
    assert [r.run_id for r in expand(GOLDEN_DOC, CORPORA)] == GOLDEN_IDS


def test_fields_added_after_the_first_release_name_a_version_up_to_this_one():
    import dataclasses

    from packaging.version import Version

    import lmablate

    this = Version(Version(lmablate.__version__).base_version)  # 0.2.0.dev0 ships in 0.2.0
    since = {f"{name}.{f.name}": Version(f.metadata["since"]) for name, cls in C.SECTIONS.items()
             for f in dataclasses.fields(cls) if f.metadata.get("since")}
    assert since and set(since) == set(C.later_fields())
    assert all(Version("0.1.0") < v <= this for v in since.values()), since


def test_legacy_ids_are_the_new_ids_cut_to_8_digits():
    assert [legacy_run_id(r.run_id) for r in expand(GOLDEN_DOC, CORPORA)] == LEGACY_GOLDEN_IDS


# Two points of tests/bad_inputs/base.yaml's study (lr 1.25922e-05 with warmup 27, lr 1.58562e-05
# with warmup 94) whose resolved configs, as lmablate hashed them when run IDs had 8 digits, share
# the hash 2eb22933: the study was refused as "resolve to the same config" (P ~ 1.2% at 10k runs).
# tests/data/colliding_run_identities.json holds the two objects hashed; with 64 bits they differ.
COLLIDING_IDENTITIES = Path(__file__).parent / "data" / "colliding_run_identities.json"
COLLIDING_32BIT = {"study": "tiny", "data": {"corpus": "tiny-stories", "val_fraction": 0.1},
                   "tokenizer": {"kind": "bpe", "vocab_size": 320},
                   "defaults": {"model": {"preset": "debug"},
                                "train": {"tokens": 4096, "batch_size": 8, "seq_len": 32,
                                          "lr": 3.0e-3, "eval_every": 8, "eval_tokens": 2048,
                                          "log_every": 4}},
                   "sweep": {"grid": {"train.lr": [1.25922e-05, 1.58562e-05],
                                      "train.warmup": [27, 94]}, "seeds": [0]}}
COLLIDING_CORPORA = {"tiny-stories": {"source": "file", "path": "package:tinystories_valid_1k.txt",
                                      "separator": "\n\n", "max_documents": 400}}


def test_the_pair_whose_32_bit_hashes_collided_gets_distinct_ids():
    objs = json.loads(COLLIDING_IDENTITIES.read_text())
    assert sorted(objs) == ["lr=1.25922e-05-warmup=27-s0-2eb22933",
                            "lr=1.58562e-05-warmup=94-s0-2eb22933"]
    a, b = objs.values()
    assert run_hash(a) == run_hash(b) == "2eb22933"  # 32 bits: the collision
    assert run_hash(a, RUN_HASH_HEX) != run_hash(b, RUN_HASH_HEX)
    runs = expand(COLLIDING_32BIT, COLLIDING_CORPORA)  # the study expands, four distinct IDs
    assert len({r.run_id[-RUN_HASH_HEX:] for r in runs}) == len(runs) == 4


def test_ids_ignore_where_the_corpus_lives():
    moved = {"golden": {**CORPORA["golden"], "_abs": "/elsewhere/golden.txt"}}
    assert [r.run_id for r in expand(GOLDEN_DOC, moved)] == GOLDEN_IDS
    other = {"golden": {**CORPORA["golden"], "path": "other.txt"}}
    assert not set(GOLDEN_IDS) & {r.run_id for r in expand(GOLDEN_DOC, other)}


IDS_SCRIPT = """
import json, sys
from lmablate.study.sweep import expand
doc, corpora = json.loads(sys.stdin.read())
print(json.dumps([r.run_id for r in expand(doc, corpora)]))
"""


@pytest.mark.parametrize("hashseed", ["0", "4242"])
def test_ids_are_stable_across_processes(hashseed):
    doc = study(grid={"model.n_layers": [1, 2], "train.lr": [1e-3, 1e-2]},
                variants={"a": {}, "b": {"model.ffn": "gelu"}}, seeds=[0, 3])
    env = {**os.environ, "PYTHONHASHSEED": hashseed}
    out = subprocess.run([sys.executable, "-c", IDS_SCRIPT], input=json.dumps([doc, CORPORA]),
                         capture_output=True, text=True, env=env, check=True).stdout
    assert json.loads(out) == [r.run_id for r in expand(doc, CORPORA)]


# The hashing scheme (sorted-key compact JSON, SHA-256) in the stdlib only, for interpreters that
# do not have lmablate's dependencies: checks that another Python encodes the same bytes.
HASH_SCRIPT = """
import hashlib, json, sys
for obj in json.loads(sys.stdin.read()):
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    print(hashlib.sha256(text.encode()).hexdigest()[:16])
"""


def other_pythons() -> list[str]:
    """Interpreters of other minor versions on this machine (PATH, pyenv), that run."""
    found = {}
    candidates = [shutil.which(f"python3.{m}") for m in range(8, 15)]
    candidates += sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.*/bin/python3")))
    for exe in filter(None, candidates):
        try:
            out = subprocess.run([exe, "-c", "import sys; print(*sys.version_info[:2])"],
                                 capture_output=True, text=True, timeout=30, check=False).stdout
        except (OSError, subprocess.TimeoutExpired):
            continue
        version = tuple(map(int, out.split())) if out.strip() else None
        if version and version != tuple(sys.version_info[:2]) and version >= (3, 8):
            found.setdefault(version, exe)
    return list(found.values())


def test_ids_are_stable_across_python_versions():
    exes = other_pythons()
    if not exes:
        pytest.skip("no other Python version on this machine")
    runs = expand(GOLDEN_DOC, CORPORA)
    objs = [identity(r.sections, r.data_id) for r in runs]
    assert [run_hash(o, RUN_HASH_HEX) for o in objs] == [r.run_id[-16:] for r in runs]
    for exe in exes:
        out = subprocess.run([exe, "-c", HASH_SCRIPT], input=json.dumps(objs), capture_output=True,
                             text=True, check=True).stdout.split()
        assert out == [r.run_id[-16:] for r in runs], exe


VARIANT_POOL = {
    "baseline": {}, "post_norm": {"model.norm_position": "post"}, "nope": {"model.pos_emb": "none"},
    "silu": {"model.ffn": "silu"}, "wide": {"model": {"d_model": 64, "n_heads": 4}},
    "no_norm": {"model.norm": "none", "grid": {"train.lr": [1e-3, 1e-4]}},
}
AXIS_POOL = {"train.batch_size": [4, 8, 16], "model.n_layers": [1, 2, 3],
             "train.warmup": [0.0, 0.1], "model.d_ff": ["2 * d_model", "3 * d_model"]}


@st.composite
def studies(draw):
    names = draw(st.lists(st.sampled_from(sorted(VARIANT_POOL)), min_size=1, max_size=4,
                          unique=True))
    axes = draw(st.lists(st.sampled_from(sorted(AXIS_POOL)), max_size=2, unique=True))
    grid = {a: draw(st.lists(st.sampled_from(AXIS_POOL[a]), min_size=1, unique=True))
            for a in axes}
    seeds = draw(st.lists(st.integers(0, 5), min_size=1, max_size=2, unique=True))
    return study(variants={n: VARIANT_POOL[n] for n in names}, grid=grid, seeds=seeds)


def shuffled(obj, rnd: random.Random):
    """The same document with every mapping's keys in a random order."""
    if isinstance(obj, dict):
        items = list(obj.items())
        rnd.shuffle(items)
        return {k: shuffled(v, rnd) for k, v in items}
    return obj


def resolved_key(run) -> str:
    return canonical_json([C.to_dict(run.config), run.data_id])


@settings(max_examples=30, deadline=None)
@given(studies(), st.randoms(use_true_random=False))
def test_ids_do_not_depend_on_yaml_key_order(doc, rnd):
    assert sorted(r.run_id for r in expand(shuffled(doc, rnd), CORPORA)) == \
        sorted(r.run_id for r in expand(doc, CORPORA))


@settings(max_examples=30, deadline=None)
@given(studies())
def test_one_id_per_resolved_config(doc):
    runs = expand(doc, CORPORA)
    assert len({r.run_id for r in runs}) == len(runs) == len({resolved_key(r) for r in runs})


@settings(max_examples=30, deadline=None)
@given(studies(), st.data())
def test_editing_one_variant_changes_only_its_ids(doc, data):
    name = data.draw(st.sampled_from(sorted(doc["sweep"]["variants"])))
    edited = json.loads(json.dumps(doc))
    set_override(edited, f"sweep.variants.{name}.model.norm_eps", 1e-6)
    before = {r.run_id: r.variant for r in expand(doc, CORPORA)}
    after = {r.run_id: r.variant for r in expand(edited, CORPORA)}
    assert {i for i, v in before.items() if v != name} == {i for i, v in after.items() if v != name}
    assert not {i for i, v in after.items() if v == name} & set(before)


def test_settings_added_later_leave_identities_and_params_at_their_default():
    """A field added in a later version (F(since=...)) at its default is left out of what run IDs,
    the tokenizer's identity and the tokenizer rule's params see: upgrading lmablate re-runs and
    renames nothing; set to something else, it counts."""
    from lmablate.study.config import later_fields
    from lmablate.study.sweep import without_later_defaults

    later = {k.split(".", 1)[1]: v for k, v in later_fields().items() if k.startswith("tokenizer.")}
    assert later, "no tokenizer field added after the first release to check with"
    name, default = next(iter(later.items()))
    base = {"kind": "bpe", "vocab_size": 4096}
    assert without_later_defaults("tokenizer", {**base, name: default}) == base
    assert without_later_defaults("tokenizer", {**base, name: "x"}) == {**base, name: "x"}
