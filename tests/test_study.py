"""Reading a study: include, scales, overrides (CLI and Snakemake ``--config``), and bad files
that must stop with one line before any job."""

from __future__ import annotations

import copy
import json

import pytest
import yaml
from snakemake.cli import parse_config

from lmablate.__main__ import main
from lmablate.errors import ConfigError
from lmablate.study.load import read_study, study_from_dict

STUDY = {
    "study": "s",
    "data": {"corpus": "tinystories-1k"},
    "tokenizer": {"kind": "bpe", "vocab_size": 512},
    "defaults": {"model": {"preset": "debug"},
                 "train": {"tokens": 8192, "batch_size": 8, "seq_len": 32, "lr": 3e-3}},
    "sweep": {"variants": {"baseline": {}, "post_norm": {"model.norm_position": "post"}},
              "grid": {"model.n_layers": [1, 2]}},
    "scales": {"smoke": {"defaults.train.tokens": 4096, "sweep.grid.model.n_layers": [1]}},
}


def write(path, doc) -> str:
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return str(path)


def test_include_a_base_study_with_overrides(tmp_path):
    (tmp_path / "base").mkdir()
    write(tmp_path / "base" / "base.yaml", STUDY)
    child = {"include": "base/base.yaml", "study": "child",
             "defaults": {"train": {"lr": 1e-3}},
             "sweep": {"variants": {"nope": {"model.pos_emb": "none"}}},
             "overrides": {"sweep.grid.model.n_layers": [3]}}
    s = read_study(write(tmp_path / "child.yaml", child))
    assert s.name == "child"
    assert {r.variant for r in s.runs} == {"baseline", "post_norm", "nope"}  # merged, not replaced
    assert {r.config.model.n_layers for r in s.runs} == {3}
    assert {r.config.train.lr for r in s.runs} == {1e-3}
    assert {r.config.train.tokens for r in s.runs} == {8192}  # the base's, kept


def test_paths_are_relative_to_the_study_file_not_the_cwd(tmp_path, monkeypatch):
    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / "corpus.txt").write_text("one story\n\nanother story\n")
    write(tmp_path / "studies" / "base.yaml", STUDY)
    doc = {"include": "base.yaml", "study": "rel", "data": {"corpus": "mine"},
           "corpora": {"mine": {"source": "file", "path": "corpus.txt"}}}
    source = write(tmp_path / "studies" / "rel.yaml", doc)
    monkeypatch.chdir(tmp_path)  # as snakemake -d <workdir>: config dict + the file it came from
    config = yaml.safe_load((tmp_path / "studies" / "rel.yaml").read_text())
    s = study_from_dict(config, source=source)
    assert s.corpora["mine"]["_abs"] == str(tmp_path / "studies" / "corpus.txt")
    assert len(s.runs) == 4


def test_scale_and_overrides_from_snakemake_config():
    # `snakemake --configfile s.yaml --config scale=smoke 'overrides={...}'` merges into config
    overrides = ("overrides={defaults.train.tokens: 2048, sweep.seeds: [0, 1], "
                 'defaults.model.tie_embeddings: false, sweep.variants.post_norm.model.d_ff: '
                 '"2 * d_model"}')
    cli = parse_config(["scale=smoke", overrides])
    config = {**copy.deepcopy(STUDY), **cli}
    pristine = copy.deepcopy(config)
    s = study_from_dict(config, source="s.yaml")
    assert config == pristine  # snakemake's config is not modified (it is validated afterwards)
    assert len(s.runs) == 2 * 1 * 2  # variants x smoke grid x seeds
    assert {r.config.train.tokens for r in s.runs} == {2048}  # overrides win over the scale
    assert {r.seed for r in s.runs} == {0, 1}
    assert {r.config.model.tie_embeddings for r in s.runs} == {False}
    assert {r.config.model.d_ff for r in s.runs if r.variant == "post_norm"} == {64}


def test_cli_overrides_are_dotted_and_may_pick_the_scale(tmp_path):
    path = write(tmp_path / "s.yaml", STUDY)
    s = read_study(path, {"scale": "smoke", "defaults.train.lr": 1e-3})
    assert len(s.runs) == 2 and {r.config.train.lr for r in s.runs} == {1e-3}
    assert {r.config.train.tokens for r in s.runs} == {4096}
    assert len(read_study(path).runs) == 4


BAD = {
    "unknown-top-level-key": ({"sweeps": {}},
                              "sweeps: unknown top-level key (did you mean 'sweep'?)"),
    "unknown-model-key": ({"defaults": {"model": {"d_modle": 64}}},
                          "defaults.model.d_modle: unknown key (did you mean 'd_model'?)"),
    "unknown-sweep-key": ({"sweep": {"grids": {}}},
                          "sweep.grids: unknown key (did you mean 'grid'?)"),
    "unknown-scale": ({"scale": "smok"}, "scale: unknown scale 'smok' (did you mean 'smoke'?)"),
    "expression-syntax-error": ({"sweep": {"grid": {"model.d_ff": "seq(d_model,, 2 * d_model)"}}},
                                "sweep.grid.model.d_ff: syntax error in expression"),
    "empty-expansion": ({"sweep": {"grid": {"model.n_layers": "range(4, 1)"}}},
                        "sweep.grid.model.n_layers: axis has no values"),
    "where-removes-everything": ({"sweep": {"grid": {"model.n_layers": [1, 2]},
                                            "where": "n_layers > 8"}},
                                 "sweep: `where` 'n_layers > 8' removes all 2 points"),
    "params-target-unmet": ({"defaults": {"model": {"params_target": "30k",
                                                    "embedding_share": 0.3}}},
                            "defaults.model.params_target: 30.00K cannot be met within ±0.5%"),
    "unsafe-import": ({"sweep": {"grid": {"model.d_ff": "__import__('os').getcwd()"}}},
                      "'__import__' is not allowed"),
    "unsafe-dunder": ({"defaults": {"model": {"d_ff": "d_model.__class__"}}},
                      "'d_model.__class__' is not allowed"),
    "unsafe-lambda": ({"sweep": {"where": "(lambda: True)()"}}, "is not allowed in expression"),
    "bad-include": ({"include": "missing.yaml"}, "missing.yaml: study file not found"),
}


@pytest.mark.parametrize("change, message", list(BAD.values()), ids=list(BAD))
def test_bad_study_is_one_line_before_anything_runs(tmp_path, capsys, change, message):
    doc = {k: v for k, v in copy.deepcopy(STUDY).items() if k != "sweep"}
    doc.update(change)
    path = write(tmp_path / "bad.yaml", doc)
    with pytest.raises(ConfigError) as info:
        read_study(path)
    assert message in str(info.value)
    assert main(["plan", path]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert err.startswith("lmablate: error: ") and message in err
    assert str(tmp_path) in err  # the line names the file


def test_invalid_yaml_names_line_and_column(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("study: x\ndefaults: {model: [\n")
    with pytest.raises(ConfigError, match=r"broken.yaml: invalid YAML: line \d+, column \d+"):
        read_study(path)


def test_study_document_round_trips_through_json(tmp_path):
    """The merged document is plain data (what the report and config.yaml files record)."""
    s = read_study(write(tmp_path / "s.yaml", STUDY), {"scale": "smoke"})
    assert json.loads(json.dumps(s.doc))["scale"] == "smoke"


def test_schema_file_is_regenerated_from_the_dataclasses():
    """schemas/config.schema.yaml is what `lmablate schema` writes today (no drift)."""
    import json

    import yaml
    from conftest import REPO

    from lmablate.study.schema import study_schema

    on_disk = yaml.safe_load((REPO / "schemas" / "config.schema.yaml").read_text())
    assert on_disk == json.loads(json.dumps(study_schema())), \
        "run: lmablate schema -o schemas/config.schema.yaml"


@pytest.mark.parametrize("study", ["config.yaml", "studies/shape_sweep.yaml", "studies/moe.yaml",
                                   "studies/cs336_ablations.yaml"])
def test_to_dict_is_asdict_with_fresh_containers(study):
    """lmablate.study.config.to_dict (the fast path the Snakefile's parse uses) gives what
    dataclasses.asdict gives for every run of the example studies, with containers of its own."""
    import dataclasses

    from conftest import REPO

    from lmablate.study.config import to_dict

    runs = read_study(str(REPO / study)).runs
    for run in runs[:200]:
        got = to_dict(run.config)
        assert got == dataclasses.asdict(run.config)
        for name, section in got.items():
            for key, value in section.items():
                if isinstance(value, (list, dict)):
                    assert value is not getattr(getattr(run.config, name), key)
