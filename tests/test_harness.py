"""lm-evaluation-harness through lmablate's adapter: the same numbers as lmablate's own scorer,
and the rest of lm-eval's LM interface (rolling log-likelihood, greedy generation, the CLI)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

pytest.importorskip("lm_eval")

from conftest import TASK_DATA

from lmablate.__main__ import main
from lmablate.evaluation import load_prepared, load_run_model, parse_eval_tasks, prepare_task
from lmablate.evaluation.harness import LmablateLM, harness_tasks_json
from lmablate.evaluation.prompts import build_examples
from lmablate.evaluation.runner import evaluate_run
from lmablate.evaluation.scoring import Scorer, score_multiple_choice

PROMPT = "{sentence}\nQuestion: Is this sentence positive or negative?\nAnswer:"


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No network: lm-eval reads local json through `datasets`, caches in tmp."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets-cache"))


@pytest.fixture(scope="module")
def local_task(tmp_path_factory) -> SimpleNamespace:
    """One sentiment task as jsonl files: lmablate's spec and lm-eval's YAML over the same rows.

    The fixture's sst2 sentences, plus joined pairs labelled positive (8 of 12 rows then are), and
    answers of very different lengths, so acc and acc_norm pick differently.
    """
    d = tmp_path_factory.mktemp("local_task")
    for split in ("train", "validation"):
        rows = [json.loads(line) for line in (TASK_DATA / "sst2" / f"{split}.jsonl").read_text()
                .splitlines()]
        extra = [{"sentence": f"{r['sentence']} and then {s['sentence']}", "label": 1,
                  "idx": 100 + i} for i, (r, s) in enumerate(zip(rows, rows[1:] + rows[:1]))]
        (d / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows + extra))
    choices = ["bad", "it was a good and happy day"]
    task_yaml = {
        "task": "lmablate_sentiment", "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"train": str(d / "train.jsonl"),
                                          "validation": str(d / "validation.jsonl")}},
        "output_type": "multiple_choice", "training_split": "train",
        "validation_split": "validation", "fewshot_split": "train",
        "doc_to_text": "{{sentence}}\nQuestion: Is this sentence positive or negative?\nAnswer:",
        "doc_to_target": "label", "doc_to_choice": choices,
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                        {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1.0}}
    (d / "tasks").mkdir()
    (d / "tasks" / "lmablate_sentiment.yaml").write_text(yaml.safe_dump(task_yaml))
    spec = {"name": "sentiment", "source": "jsonl", "eval": str(d / "validation.jsonl"),
            "train": str(d / "train.jsonl"), "template": PROMPT, "choices": choices}
    return SimpleNamespace(dir=d, include=d / "tasks", spec=spec)


@pytest.mark.parametrize("shots", [0, 2])
def test_harness_and_lmablate_give_identical_acc_and_acc_norm(workspace, local_task,
                                                              tmp_path: Path, shots: int) -> None:
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    run_dir = workspace.runs / "trained-s0"
    cfg = parse_eval_tasks({"tasks": [local_task.spec], "num_fewshot": shots})
    prepare_task(cfg.tasks[0], tmp_path / "sentiment")
    ours = evaluate_run(run_dir, cfg, {"sentiment": tmp_path / "sentiment"}, tmp_path / "t.json",
                        device="cpu")["tasks"]["sentiment"]
    # per example: lmablate's prompts (few-shot sampling included) and scores
    rows = load_prepared(tmp_path / "sentiment")
    examples = build_examples(cfg.tasks[0], rows["eval"], rows["train"], num_fewshot=shots)
    run = load_run_model(run_dir, "cpu")
    per_example = score_multiple_choice(Scorer(run, batch_size=3), examples)

    theirs = simple_evaluate(model=LmablateLM(run=run, batch_size=5), tasks=["lmablate_sentiment"],
                             num_fewshot=shots, log_samples=True,
                             task_manager=TaskManager(include_path=str(local_task.include),
                                                      include_defaults=False))
    res = theirs["results"]["lmablate_sentiment"]
    print(f"\n{shots}-shot n={ours['n']}: acc {ours['value']:.4f} vs {res['acc,none']:.4f}, "
          f"acc_norm {ours['acc_norm']:.4f} vs {res['acc_norm,none']:.4f}")
    assert theirs["n-samples"]["lmablate_sentiment"]["effective"] == ours["n"] == 12
    assert res["acc,none"] == ours["value"]
    assert res["acc_norm,none"] == ours["acc_norm"]
    assert res["acc_stderr,none"] == pytest.approx(ours["stderr"], rel=1e-12)
    assert res["acc_norm_stderr,none"] == pytest.approx(ours["acc_norm_stderr"], rel=1e-12)
    samples = sorted(theirs["samples"]["lmablate_sentiment"], key=lambda x: x["doc_id"])
    assert [x["arguments"][0][0] for x in samples] == [ex.context for ex in examples]
    assert [[ll for ll, _ in x["filtered_resps"]] for x in samples] == per_example.lls
    assert [x["acc"] for x in samples] == per_example.acc
    assert [x["acc_norm"] for x in samples] == per_example.acc_norm
    assert per_example.acc != per_example.acc_norm  # the normalisation changes some answers
    converted = harness_tasks_json(theirs)["tasks"]["lmablate_sentiment"]
    assert converted["metric"] == "acc" and converted["value"] == ours["value"]


@pytest.fixture(scope="module")
def lm(workspace) -> LmablateLM:
    return LmablateLM(run=load_run_model(workspace.runs / "trained-s0", "cpu"), batch_size=4)


def test_rolling_loglikelihood_predicts_every_token_once(lm: LmablateLM) -> None:
    text = ("Once upon a time there was a little girl named Lily. She liked to play outside "
            "with her dog. ") * 4
    ids = lm.tok_encode(text)
    n, L = len(ids), lm.max_length
    assert n > 2 * L and n % L  # several windows, the last one partly new
    [got] = lm.loglikelihood_rolling([SimpleNamespace(args=(text,))])
    # reference (lm-eval's contract): the eot token, then the tokens in chunks of L predictions;
    # a chunk sees only its own tokens as context, except the last, which sees the L before it
    full = [lm.eot_token_id] + ids
    last_chunk = (n - 1) // L
    want = 0.0
    with torch.no_grad():
        for i in range(1, n + 1):
            chunk = (i - 1) // L
            start = chunk * L if chunk < last_chunk else n - L
            logits = lm.run.model(torch.tensor([full[start:i]]))[0, -1, :lm.run.vocab_size]
            want += float(torch.log_softmax(logits.float(), -1)[full[i]])
    assert got == pytest.approx(want, rel=1e-5)


def test_generate_until_is_greedy_and_stops(lm: LmablateLM) -> None:
    context = "Once upon a time, there was a"
    [free] = lm.generate_until([SimpleNamespace(args=(context, {"max_gen_toks": 12}))])
    ids = lm.tok_encode(context)
    new: list[int] = []
    with torch.no_grad():
        while len(new) < 12:
            logits = lm.run.model(torch.tensor([(ids + new)[-lm.max_length:]]))
            token = int(logits[0, -1, :lm.run.vocab_size].argmax())
            if token == lm.eot_token_id:
                break
            new.append(token)
    assert free == lm.tok_decode(new) and len(free) > 3
    stop = free[2]  # (this tiny model's greedy text is repetitive: any character of it will do)
    [cut] = lm.generate_until([SimpleNamespace(args=(context, {"until": [stop],
                                                                "max_gen_toks": 12}))])
    assert cut == free.split(stop)[0]


def test_eval_harness_command(workspace, local_task, tmp_path: Path, capsys) -> None:
    out = tmp_path / "harness.json"
    code = main(["eval-harness", str(workspace.runs / "trained-s0"), "--tasks",
                 "lmablate_sentiment", "--include-path", str(local_task.include),
                 "--only-include-path", "--limit", "5",
                 "--tokenizer", str(workspace.tokenizer), "-o", str(out)])
    assert code == 0
    assert "lmablate_sentiment" in capsys.readouterr().out
    result = json.loads(out.read_text())
    entry = result["tasks"]["lmablate_sentiment"]
    assert entry["n"] == 5 and entry["metric"] == "acc" and 0 <= entry["value"] <= 1
    code = main(["eval-harness", str(tmp_path / "missing"), "--tasks", "x"])
    assert code == 2
    assert capsys.readouterr().err.startswith("lmablate: error: ")
