"""Downstream tasks: config, rows from jsonl / a local fake hub / the corpus, scoring, fine-tuning,
tasks.json, the runs-table columns and the task figure.

Models are trained here (lmablate.engine.train on the shipped stories, a few seconds each); task
rows
come from the synthetic fixtures in tests/data/tasks/ (see its README) served as hub parquet.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import unquote, urlparse

import pandas as pd
import pytest
import torch
from conftest import EVAL_STUDY, EVAL_VAL_FRACTION, TASK_DATA, LocalServer, serving

import lmablate.data.corpora
from lmablate import ConfigError, DataError, from_dict
from lmablate.evaluation import (
    BUILTIN_TASKS,
    TaskSpec,
    continuation_rows,
    evaluate_run,
    join_tasks,
    load_prepared,
    load_run_model,
    parse_eval_tasks,
    prepare_task,
    tasks_to_columns,
)
from lmablate.evaluation.prompts import build_examples
from lmablate.evaluation.scoring import Scorer, score_multiple_choice
from lmablate.figures.tasks import plot_tasks

HUB_TASKS = ("sst2", "rte", "mrpc", "boolq")


# --------------------------------------------------------------------------------------------------
# a fake Hugging Face hub serving the synthetic fixtures as parquet

COMMIT = "feedc0de" * 5
REPOS = {"nyu-mll/glue": ("sst2", "rte", "mrpc"), "aps/super_glue": ("boolq",)}


def fixture_rows(task: str, split: str) -> list[dict]:
    text = (TASK_DATA / task / f"{split}.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines()]


def _parquet(rows: list[dict]) -> bytes:
    buf = io.BytesIO()
    pd.DataFrame(rows).to_parquet(buf, index=False)
    return buf.getvalue()


def hub_files() -> dict[str, dict[str, bytes]]:
    files: dict[str, dict[str, bytes]] = {}
    for repo, tasks in REPOS.items():
        files[repo] = {"README.md": b"# synthetic fixtures\n"}
        for task in tasks:
            for split in ("train", "validation"):
                name = f"{task}/{split}-00000-of-00001.parquet"
                files[repo][name] = _parquet(fixture_rows(task, split))
    return files


class Hub(LocalServer):
    def __init__(self, files: dict[str, dict[str, bytes]]):
        super().__init__(_HubHandler)
        self.files, self.log = files, []


class _HubHandler(BaseHTTPRequestHandler):
    """The three hub routes huggingface_hub uses here: revision info, the file tree, resolve."""

    protocol_version = "HTTP/1.1"
    server: Hub

    def _reply(self, status: int, body: bytes, headers: dict | None = None) -> None:
        self.send_response(status)
        for k, v in {"Content-Length": str(len(body)), **(headers or {})}.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, code: str, msg: str) -> None:
        self._reply(404, json.dumps({"error": msg}).encode(),
                    {"X-Error-Code": code, "X-Error-Message": msg,
                     "Content-Type": "application/json"})

    def _dispatch(self) -> None:
        path = unquote(urlparse(self.path).path)
        self.server.log.append(f"{self.command} {path}")
        repo = r"(?P<repo>[^/]+/[^/]+)"
        m = (re.match(rf"^/api/datasets/{repo}/(?P<kind>revision|tree)/(?P<rev>[^/]+)", path)
             or re.match(rf"^/datasets/{repo}/(?P<kind>resolve)/(?P<rev>[^/]+)/(?P<file>.+)$",
                         path))
        if not m:
            self._reply(404, b"no such route")
            return
        files = self.server.files.get(m["repo"])
        if files is None:
            self._error("RepoNotFound", "Repository not found")
        elif m["rev"] not in ("main", COMMIT):
            self._error("RevisionNotFound", "Invalid rev id")
        elif m["kind"] == "revision":
            body = {"id": m["repo"], "sha": COMMIT, "siblings": [{"rfilename": f} for f in files]}
            self._reply(200, json.dumps(body).encode(), {"Content-Type": "application/json"})
        elif m["kind"] == "tree":
            body = [{"type": "file", "oid": "0" * 40, "size": len(d), "path": f}
                    for f, d in files.items()]
            self._reply(200, json.dumps(body).encode(), {"Content-Type": "application/json"})
        elif m["file"] not in files:
            self._error("EntryNotFound", "Entry not found")
        else:
            data = files[m["file"]]
            self._reply(200, data, {"X-Repo-Commit": COMMIT, "ETag": f'"{hash(data) & 0xffff:x}"',
                                    "Content-Type": "application/octet-stream"})

    do_GET = do_HEAD = _dispatch

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def hub(tmp_path_factory) -> Iterator[Hub]:
    with serving(Hub(hub_files())) as srv:
        mp = pytest.MonkeyPatch()
        mp.setenv("HF_ENDPOINT", srv.url)
        mp.setenv("HF_HOME", str(tmp_path_factory.mktemp("hf-home")))
        for var in ("HF_TOKEN", "HF_HUB_OFFLINE", "HF_HUB_CACHE", "NO_PROXY", "no_proxy"):
            mp.delenv(var, raising=False)
        mp.setenv("NO_PROXY", "127.0.0.1")
        yield srv
        mp.undo()


@pytest.fixture(scope="module")
def hub_tasks(hub: Hub, tmp_path_factory) -> dict[str, Path]:
    """The four smallbench tasks prepared from the fake hub: {name: folder}."""
    out = tmp_path_factory.mktemp("tasks")
    dirs = {}
    for name in HUB_TASKS:
        spec = from_dict(TaskSpec, {"name": name, **BUILTIN_TASKS[name]})
        prepare_task(spec, out / name)
        dirs[name] = out / name
    return dirs


# --------------------------------------------------------------------------------------------------
# the eval_tasks block


@pytest.mark.parametrize("raw, message", [
    pytest.param({"tasks": ["smalbench"]}, r"eval_tasks\.tasks\[0\]: unknown task or preset "
                 r"'smalbench' \(did you mean 'smallbench'\?\)", id="typo"),
    pytest.param({"tasks": [{"name": "a.b", "source": "jsonl", "eval": "x",
                             "choices": ["a", "b"]}]},
                 r"eval_tasks\.tasks\[0\]\.name: expected a task name", id="dotted-name"),
    pytest.param({"tasks": [{"name": "x", "source": "jsonl", "eval": "x.jsonl"}]},
                 r"eval_tasks\.tasks\[0\]\.choices: expected a list of at least 2",
                 id="no-choices"),
    pytest.param({"tasks": [{"name": "x", "source": "hub", "eval": "*.parquet",
                             "choices": ["a", "b"]}]},
                 r"eval_tasks\.tasks\[0\]\.repo: source 'hub' needs `repo`", id="hub-no-repo"),
    pytest.param({"tasks": ["continuation"], "mode": "finetune"},
                 r"eval_tasks\.tasks\[0\]: task 'continuation' cannot be fine-tuned",
                 id="finetune-continuation"),
    pytest.param({"tasks": ["sst2", "smallbench"]},
                 r"eval_tasks\.tasks\[1\]: task 'sst2' is listed twice",
                 id="twice"),
    pytest.param({"tasks": ["sst2"], "limit": 0}, r"eval_tasks\.limit: expected a value >= 1",
                 id="limit"),
    pytest.param({"tasks": ["sst2"], "finetune": {"pool": "max"}},
                 r"eval_tasks\.finetune\.pool: expected one of 'mean', 'last'", id="pool"),
    pytest.param({"taks": ["sst2"]}, r"eval_tasks\.taks: unknown key \(did you mean 'tasks'\?\)",
                 id="unknown-key"),
    pytest.param({"tasks": []}, r"eval_tasks\.tasks: no tasks", id="empty"),
])
def test_eval_tasks_errors_are_one_line_with_file_and_key(raw: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=r"^study\.yaml: " + message) as err:
        parse_eval_tasks(raw, source="study.yaml")
    assert "\n" not in str(err.value)


def test_smallbench_preset_and_builtin_overrides() -> None:
    cfg = parse_eval_tasks({"tasks": ["smallbench", {"name": "continuation", "limit": 50}],
                            "mode": "both", "limit": 500})
    by_name = {s.name: s for s in cfg.tasks}
    assert list(by_name) == ["sst2", "rte", "boolq", "mrpc", "continuation"]
    assert by_name["sst2"].template == ("{sentence}\nQuestion: Is this sentence positive or "
                                        "negative?\nAnswer:")  # lm-eval's glue/sst2 prompt
    assert by_name["rte"].choices == ["True", "False"] and by_name["boolq"].repo == "aps/super_glue"
    assert by_name["continuation"].limit == 50 and cfg.limit == 500
    from lmablate.evaluation.specs import modes

    assert modes(by_name["sst2"], cfg) == ["zeroshot", "finetune"]
    assert modes(by_name["continuation"], cfg) == ["zeroshot"]  # per-row answers: no head


def test_continuation_rows_reorder_the_same_words() -> None:
    docs = ["one two three four five six seven eight nine ten eleven twelve", "a a a a a a a a"]
    rows = continuation_rows(docs, context_words=4, continuation_words=4, seed=3)
    assert [r["context"] for r in rows] == ["one two three four"]  # all-"a" answers: skipped
    row = rows[0]
    true = row["choices"][row["label"]]
    other = row["choices"][1 - row["label"]]
    assert true == "five six seven eight" and other != true
    assert sorted(other.split()) == sorted(true.split())
    assert continuation_rows(docs, context_words=4, continuation_words=4, seed=3) == rows


# --------------------------------------------------------------------------------------------------
# scoring


def direct_loglikelihood(run, context: str, continuation: str) -> float:
    """log p(continuation | context), one unpadded forward pass: the definition, written out."""
    def enc(s):
        return run.tokenizer.encode(s, add_special_tokens=False).ids

    ctx = enc(context) if context else [run.eot_id]
    whole = enc(context + continuation) if context else ctx + enc(continuation)
    cont = whole[len(ctx):]
    full = whole[-(run.max_len + 1):]
    with torch.no_grad():
        logits = run.model(torch.tensor([full[:-1]]))[0, :, :run.vocab_size].float()
    logp = torch.log_softmax(logits, -1)[-len(cont):]
    return float(logp.gather(1, torch.tensor(cont)[:, None]).sum())


def test_batched_scores_equal_one_pass_per_pair(workspace) -> None:
    run = load_run_model(workspace.runs / "trained-s0", "cpu")
    long_context = "Once upon a time there was a little dog. " * 20  # > 64 tokens: cut on the left
    pairs = [("The cat sat on the", " mat."), ("Lily and Tom went to the", " park"),
             (long_context, " The dog was happy."), ("", "Once upon a time"),
             ("She said, ", "\"Hello!\"")]
    scorer = Scorer(run, batch_size=2)
    got = scorer.loglikelihood(pairs)
    for (context, continuation), (ll, _) in zip(pairs, got):
        assert ll == pytest.approx(direct_loglikelihood(run, context.rstrip(" "),
                                   context[len(context.rstrip(" ")):] + continuation), abs=1e-4)
    assert len(scorer.encode(long_context)) > run.max_len
    assert scorer.encode_pair("She said, ", "\"Hi") == (scorer.encode("She said,"),
                                                         scorer.encode("She said, \"Hi")[
                                                             len(scorer.encode("She said,")):])


def test_acc_norm_divides_by_the_length_of_the_answer(workspace) -> None:
    run = load_run_model(workspace.runs / "trained-s0", "cpu")
    spec = from_dict(TaskSpec, {"name": "t", "template": "{q}", "eval": "rows.jsonl",  # unused
                                "choices": ["it was", "it was nice"]})
    rows = [{"q": "The day was sunny and", "label": 1}]
    res = score_multiple_choice(Scorer(run), build_examples(spec, rows))
    lls = res.lls[0]
    assert res.acc == [1.0 if lls[1] > lls[0] else 0.0]
    assert res.acc_norm == [1.0 if lls[1] / 11 > lls[0] / 6 else 0.0]


# --------------------------------------------------------------------------------------------------
# must show: a trained model is above chance on the corpus sanity task, an untrained one at it


@pytest.fixture(scope="module")
def continuation_task(workspace, tmp_path_factory) -> Path:
    spec = from_dict(TaskSpec, {"name": "continuation", **BUILTIN_TASKS["continuation"],
                                "context_words": 16, "continuation_words": 6})
    out = tmp_path_factory.mktemp("tasks") / "continuation"
    prepare_task(spec, out, manifest=workspace.manifest, val_fraction=EVAL_VAL_FRACTION,
                 corpus="stories")
    return out


def test_trained_model_beats_chance_on_the_continuation_task(workspace, continuation_task) -> None:
    cfg = parse_eval_tasks({"tasks": [{"name": "continuation", "context_words": 16,
                                       "continuation_words": 6}]})
    res = {}
    for run in ("trained-s0", "untrained-s0"):
        out = evaluate_run(workspace.runs / run, cfg, {"continuation": continuation_task},
                           device="cpu")
        res[run] = out["tasks"]["continuation"]
    trained, untrained = res["trained-s0"], res["untrained-s0"]
    print(f"\ncontinuation (n={trained['n']}): trained acc {trained['value']:.3f} +- "
          f"{trained['stderr']:.3f}; untrained {untrained['value']:.3f} +- "
          f"{untrained['stderr']:.3f}")
    assert trained["n"] >= 300 and trained["chance"] == 0.5
    assert trained["value"] > 0.5 + 5 * trained["stderr"]  # far above chance
    assert abs(untrained["value"] - 0.5) < 3 * untrained["stderr"]  # at chance
    # the answers hold the same words, so the length normalisation changes nothing
    assert trained["acc_norm"] == trained["value"]


# --------------------------------------------------------------------------------------------------
# must show: hub tasks from a local server


def test_hub_tasks_download_at_one_commit(hub: Hub, hub_tasks: dict[str, Path]) -> None:
    for name, folder in hub_tasks.items():
        rows = load_prepared(folder)
        assert rows["eval"] == fixture_rows(name, "validation")
        assert rows["train"] == fixture_rows(name, "train")
        meta = json.loads((folder / "task.json").read_text())
        repo = next(r for r, tasks in REPOS.items() if name in tasks)
        assert meta["origin"]["commit"] == COMMIT and meta["origin"]["endpoint"] == hub.url
        assert meta["origin"]["files"] == {"eval": [f"{name}/validation-00000-of-00001.parquet"],
                                           "train": [f"{name}/train-00000-of-00001.parquet"]}
        assert f"GET /datasets/{repo}/resolve/{COMMIT}/{name}/validation-00000-of-00001.parquet" \
            in hub.log


@pytest.mark.parametrize("change, message", [
    pytest.param({"repo": "nobody/nothing"}, r"hub dataset 'nobody/nothing' at http://127\.0\.0\.1:"
                 r"\d+ not found", id="no-repo"),
    pytest.param({"revision": "v9"}, r"has no revision 'v9'", id="no-revision"),
    pytest.param({"eval": "sst2/test-*.parquet"}, r"no file of hub dataset 'nyu-mll/glue' matches "
                 r"eval pattern 'sst2/test-\*\.parquet' \(files: README\.md, mrpc/", id="no-match"),
])
def test_hub_errors_are_one_line(hub: Hub, tmp_path: Path, change: dict, message: str) -> None:
    spec = from_dict(TaskSpec, {"name": "sst2", **BUILTIN_TASKS["sst2"], **change})
    with pytest.raises(DataError, match=r"^task 'sst2': .*" + message) as err:
        prepare_task(spec, tmp_path / "t")
    assert "\n" not in str(err.value)


# --------------------------------------------------------------------------------------------------
# tasks.json: zero-shot and fine-tuned, on every run


@pytest.fixture(scope="module")
def scored(workspace, hub_tasks, continuation_task) -> dict[str, dict]:
    """tasks.json of the four runs: smallbench zero-shot + fine-tuned, and continuation."""
    cfg = parse_eval_tasks({"tasks": ["smallbench", {"name": "continuation", "context_words": 16,
                                                     "continuation_words": 6, "limit": 300}],
                            "mode": "both", "finetune": {"epochs": 5, "batch_size": 4}})
    dirs = {**hub_tasks, "continuation": continuation_task}
    return {d.name: evaluate_run(d, cfg, dirs, device="cpu")
            for d in sorted(workspace.runs.iterdir())}


def test_tasks_json_holds_every_task_in_both_modes(workspace, scored) -> None:
    out = json.loads((workspace.runs / "trained-s0" / "tasks.json").read_text())
    assert out == json.loads(json.dumps(scored["trained-s0"]))
    assert set(out["tasks"]) == {"sst2", "rte", "boolq", "mrpc", "continuation", "sst2_ft",
                                 "rte_ft", "boolq_ft", "mrpc_ft"}
    for name, entry in out["tasks"].items():
        assert {"metric", "value", "stderr", "n", "chance"} <= set(entry), name
        assert entry["metric"] == "acc" and 0 <= entry["value"] <= 1
        if name != "continuation":
            assert entry["n"] == 6 and entry["chance"] == 0.5 and entry["majority"] == 0.5
    assert out["tasks"]["sst2_ft"]["n_train"] == 8 and out["tasks"]["sst2_ft"]["steps"] == 10
    assert out["tasks"]["sst2"]["num_fewshot"] == 0 and out["tasks"]["sst2"]["mode"] == "zeroshot"


def test_finetuning_is_deterministic_and_leaves_the_model_alone(workspace, hub_tasks) -> None:
    from lmablate.evaluation import finetune_classifier
    from lmablate.evaluation.specs import FinetuneConfig

    run = load_run_model(workspace.runs / "trained-s0", "cpu")
    before = {k: v.clone() for k, v in run.model.state_dict().items()}
    spec = from_dict(TaskSpec, {"name": "sst2", **BUILTIN_TASKS["sst2"]})
    rows = load_prepared(hub_tasks["sst2"])
    results = []
    for cfg in (FinetuneConfig(epochs=4, batch_size=4), FinetuneConfig(epochs=4, batch_size=4),
                FinetuneConfig(epochs=4, batch_size=4, full=True, pool="last")):
        results.append(finetune_classifier(run, spec, rows["train"], rows["eval"], cfg))
    assert results[0] == results[1]
    assert results[2]["steps"] == 8 and results[2]["lr"] == 1e-4
    assert all(torch.equal(v, run.model.state_dict()[k]) for k, v in before.items())


def test_a_diverged_run_is_skipped_not_failed(workspace, tmp_path: Path) -> None:
    import shutil

    run = tmp_path / "diverged"
    shutil.copytree(workspace.runs / "trained-s0", run)
    final = json.loads((run / "final.json").read_text())
    (run / "final.json").write_text(json.dumps({**final, "status": "diverged"}))
    out = evaluate_run(run, parse_eval_tasks({"tasks": ["sst2"]}), {}, device="cpu")
    assert out["status"] == "skipped" and out["reason"] == "run diverged" and out["tasks"] == {}
    assert tasks_to_columns(out) == {}


# --------------------------------------------------------------------------------------------------
# columns and the figure


def test_columns_and_task_figure(workspace, scored, tmp_path: Path) -> None:
    cols = tasks_to_columns(scored["trained-s0"])
    assert cols["task.sst2"] == scored["trained-s0"]["tasks"]["sst2"]["value"]
    assert cols["task.sst2.metric"] == "acc" and cols["task.sst2.chance"] == 0.5
    assert cols["task.continuation.n"] == scored["trained-s0"]["tasks"]["continuation"]["n"]
    runs = pd.DataFrame([{"run_id": r, "variant": r.split("-")[0], "group": r.split("-")[0],
                          "seed": int(r[-1]), "status": "completed", "differs": ""}
                         for r in sorted(scored)])
    joined = join_tasks(runs, workspace.root / "results" / EVAL_STUDY)
    assert joined.loc[joined.run_id == "untrained-s1", "task.rte_ft"].item() == \
        scored["untrained-s1"]["tasks"]["rte_ft"]["value"]
    fig = plot_tasks(joined, baseline="trained")
    from lmablate.figures.style import save

    path = tmp_path / "tasks.png"
    save(fig, path)
    assert path.stat().st_size > 20_000
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title().split("\n")[0] for ax in panels] == [
        "sst2", "sst2_ft", "rte", "rte_ft", "boolq", "boolq_ft", "mrpc", "mrpc_ft",
        "continuation"]
    chance_lines = [ln for ax in panels for ln in ax.get_lines() if ln.get_linestyle() == "--"]
    assert len(chance_lines) == len(panels)
    assert all(ln.get_xdata()[0] == 0.5 for ln in chance_lines)


# --------------------------------------------------------------------------------------------------
# loading runs


def test_load_run_model_finds_the_workflow_tokenizer(workspace, monkeypatch) -> None:
    monkeypatch.chdir(workspace.root)
    model, tokenizer, cfg = load_run_model(Path("results") / EVAL_STUDY / "runs" / "trained-s0")
    assert cfg.model.d_model == 32 and tokenizer.get_vocab_size() == 320
    assert model.head.weight is model.embed.weight  # tied weights restored
    monkeypatch.chdir(workspace.root.parent)  # found beside results/ too
    assert load_run_model(workspace.runs / "trained-s0").vocab_size == 320


def test_load_run_model_errors(workspace, tmp_path: Path) -> None:
    import shutil

    run = tmp_path / "results" / "s" / "runs" / "r"
    shutil.copytree(workspace.runs / "trained-s0", run)
    with pytest.raises(DataError, match=r"^resources/tokenizers/stories-d1/tokenizer\.json: "
                       r"tokenizer of run 'trained-s0' not found .*pass its path explicitly$"):
        load_run_model(run)
    (run / "model.safetensors").unlink()
    with pytest.raises(DataError, match=r"model\.safetensors: missing"):
        load_run_model(run, tokenizer=workspace.tokenizer)


# --------------------------------------------------------------------------------------------------
# the workflow: the task plan of a study, and smallbench + the corpus task in a smoke study


def test_study_eval_plans_one_prepared_folder_per_task(tiny_study: dict, tmp_path: Path) -> None:
    from lmablate import study_from_dict
    from lmablate.evaluation import study_eval

    study = study_from_dict(tiny_study, source=str(tmp_path / "study.yaml"))
    assert study_eval(study) is None  # no eval_tasks: no rules
    own = {"name": "mine", "source": "jsonl", "eval": "data/dev.jsonl", "template": "{text}",
           "choices": ["no", "yes"]}
    study.doc["eval_tasks"] = {"tasks": ["smallbench", "continuation", own],
                               "harness": {"tasks": ["arc_easy"]}}
    plan = study_eval(study)
    assert list(plan.task_ids) == ["sst2", "rte", "boolq", "mrpc", "continuation", "mine"]
    cont = plan.task_ids["continuation"]
    manifest = lmablate.data.corpora.manifest_path(study.corpora["tiny-stories"])
    assert manifest.startswith("resources/corpora/tiny-stories-")  # the corpus's identity folder
    assert plan.inputs[cont] == [manifest]
    assert plan.context[cont] == {"corpus": "tiny-stories", "val_fraction": 0.1,
                                  "manifest": manifest}
    assert plan.inputs[plan.task_ids["mine"]] == [str(tmp_path / "data/dev.jsonl")]
    assert plan.inputs[plan.task_ids["sst2"]] == []  # downloaded by the rule itself
    assert plan.task_file("sst2") == f"resources/tasks/{plan.task_ids['sst2']}/task.json"
    assert "harness" not in plan.tasks_params() and plan.harness
    assert set(plan.harness_params()) == {"harness"}
    # the rows' identity, not the prompt, names the folder
    study.doc["eval_tasks"] = {"tasks": [{"name": "sst2", "template": "{sentence} Answer:"}]}
    assert study_eval(study).task_ids["sst2"] == plan.task_ids["sst2"]
    study.doc["eval_tasks"] = {"tasks": [{"name": "continuation", "corpus": "elsewhere"}]}
    with pytest.raises(ConfigError, match=r"study\.yaml: eval_tasks\.tasks\[0\]\.corpus: corpus "
                       r"'elsewhere' is not a corpus of this study \(.*tiny-stories\)$"):
        study_eval(study)


@pytest.mark.workflow
@pytest.mark.slow
def test_smoke_study_scores_smallbench_and_continuation(hub: Hub, tmp_path: Path,
                                                         tiny_study: dict) -> None:
    from conftest import snakemake, write_yaml

    from lmablate import study_from_dict

    tiny_study["eval_tasks"] = {
        "tasks": ["smallbench", {"name": "continuation", "context_words": 12,
                                 "continuation_words": 6}],
        "mode": "both", "finetune": {"epochs": 2, "batch_size": 4}}
    write_yaml(tmp_path / "study.yaml", tiny_study)
    study = study_from_dict(tiny_study, source=str(tmp_path / "study.yaml"))
    targets = [f"results/tiny/runs/{run_id}/tasks.json" for run_id in study.by_id]
    snakemake(tmp_path, "-c2", *targets)
    for target in targets:
        out = json.loads((tmp_path / target).read_text())
        assert out["status"] == "completed"
        assert set(out["tasks"]) == {"sst2", "rte", "boolq", "mrpc", "continuation", "sst2_ft",
                                     "rte_ft", "boolq_ft", "mrpc_ft"}
        assert out["tasks"]["mrpc"]["n"] == 6 and out["tasks"]["continuation"]["n"] > 20
    prepared = sorted(p.name.rsplit("-", 1)[0] for p in (tmp_path / "resources/tasks").iterdir())
    assert prepared == ["boolq", "continuation", "mrpc", "rte", "sst2"]  # once, for every run
    again = snakemake(tmp_path, "-n", *targets)
    assert "Nothing to be done" in again.stdout + again.stderr
