"""lm-evaluation-harness (``lm-eval``) on lmablate runs: an LM adapter and a one-call runner.

:class:`LmablateLM` implements lm-eval's model interface over a trained run's checkpoint and
tokenizer, so any harness task runs on lmablate models::

    lmablate eval-harness results/default/runs/<run_id> --tasks arc_easy,hellaswag --limit 100
    lm_eval --model lmablate --model_args run_dir=results/default/runs/<run_id> --tasks ...
        (after ``import lmablate.evaluation.harness``, which registers the name)

- ``loglikelihood``: lm-eval's own tokenization of (context, continuation) pairs
  (``TemplateLM``), scored by :class:`lmablate.evaluation.Scorer`, the scorer lmablate's tasks use,
  so a task scored both ways gives identical numbers (tests/test_harness.py).
- ``loglikelihood_rolling``: lm-eval's rolling windows of the model's context (each token
  predicted once, with as much context as fits), the end-of-text token as the first context.
- ``generate_until``: greedy decoding, one token at a time over the last ``max_length`` tokens
  (the model has no KV cache; these models are small), until the end-of-text token, a stop
  string or ``max_gen_toks``.
  Sampling arguments are ignored: evaluation is greedy.

lm-eval is an optional dependency (``pip install lmablate[eval]``); importing this module
without it raises an error saying so.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

try:
    from lm_eval.api.model import TemplateLM
    from lm_eval.api.registry import register_model
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError("lmablate.evaluation.harness needs lm-eval: "
                      "pip install 'lmablate[eval]'") from err

import torch

from lmablate.evaluation.loading import LoadedRun, load_run_model
from lmablate.evaluation.scoring import Scorer

__all__ = ["LmablateLM", "run_harness", "harness_tasks_json"]

log = logging.getLogger("lmablate.evaluation.harness")


@register_model("lmablate")
class LmablateLM(TemplateLM):
    """lm-eval's LM interface over one lmablate run (``run_dir``) or an already loaded one."""

    def __init__(self, run_dir: str | Path | None = None, tokenizer: str | Path | None = None,
                 device: str = "cpu", batch_size: int | str = 32, max_gen_toks: int = 256,
                 run: LoadedRun | None = None, **_: Any):
        super().__init__()
        if run is None:
            if run_dir is None:
                raise ValueError("LmablateLM needs run_dir (a trained run's directory) or run")
            run = load_run_model(run_dir, device, tokenizer=tokenizer)
        self.run = run
        self.scorer = Scorer(run, batch_size=int(batch_size))
        self._device = self.scorer.device
        self.max_gen_toks = int(max_gen_toks)

    # ---- what TemplateLM needs

    @property
    def eot_token_id(self) -> int:
        if self.run.eot_id is None:
            raise ValueError("the tokenizer has no end-of-text token; lm-eval needs one")
        return self.run.eot_id

    @property
    def max_length(self) -> int:
        return self.run.max_len

    def tok_encode(self, string: str, add_special_tokens: bool | None = None,
                   **kwargs: Any) -> list[int]:
        return self.scorer.encode(string)

    def tok_decode(self, tokens: Sequence[int], **kwargs: Any) -> str:
        return self.scorer.decode(tokens)

    def _loglikelihood_tokens(self, requests: list[tuple[tuple[str, str], list[int], list[int]]],
                              disable_tqdm: bool = False, **kwargs: Any
                              ) -> list[tuple[float, bool]]:
        results = self.scorer.loglikelihood_tokens([(ctx, cont) for _, ctx, cont in requests])
        for (pair, _, _), res in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood", pair, res)
        return results

    # ---- the rest of the interface

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False
                              ) -> list[float]:
        from lm_eval import utils

        out = []
        for req in requests:
            (text,) = req.args
            windows = [utils.make_disjoint_window(w) for w in utils.get_rolling_token_windows(
                token_list=self.tok_encode(text), prefix_token=self.eot_token_id,
                max_seq_len=self.max_length, context_len=1)]
            total = sum(ll for ll, _ in self.scorer.loglikelihood_tokens(windows))
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), total)
            out.append(total)
        return out

    @torch.no_grad()
    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        out = []
        for req in requests:
            context, gen_kwargs = req.args
            kwargs = dict(gen_kwargs or {})
            until = kwargs.get("until") or []
            until = [s for s in ([until] if isinstance(until, str) else until) if s]
            max_new = int(kwargs.get("max_gen_toks", self.max_gen_toks))
            ids = self.tok_encode(context) or [self.eot_token_id]
            new: list[int] = []
            text = ""
            for _ in range(max_new):
                window = (ids + new)[-self.max_length:]
                logp, _ = self.scorer.logits([window])
                token = int(logp[0, -1].argmax())
                if token == self.eot_token_id:
                    break
                new.append(token)
                text = self.tok_decode(new)
                if any(s in text for s in until):
                    break
            for s in until:
                text = text.split(s)[0]
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
            out.append(text)
        return out


def harness_tasks_json(results: Mapping[str, Any]) -> dict[str, Any]:
    """lm-eval's results as tasks.json's per-task schema (``metric`` = acc when reported)."""
    tasks = {}
    for name, metrics in results.get("results", {}).items():
        values = {k.split(",")[0]: v for k, v in metrics.items()
                  if "," in k and "_stderr" not in k and isinstance(v, (int, float))}
        if not values:
            continue
        metric = "acc" if "acc" in values else next(iter(values))
        stderr = next((v for k, v in metrics.items() if k.split(",")[0] == f"{metric}_stderr"),
                      None)
        n = results.get("n-samples", {}).get(name, {}).get("effective")
        tasks[name] = {"metric": metric, "value": values[metric],
                       "stderr": stderr if isinstance(stderr, (int, float)) else None,
                       "n": n, "chance": None, "metrics": values}
    return {"status": "completed", "tasks": tasks}


def run_harness(run_dir: str | Path, tasks: Sequence[str], *, tokenizer: str | Path | None = None,
                device: str = "cpu", batch_size: int = 32, num_fewshot: int | None = None,
                limit: int | float | None = None, include_path: str | Path | None = None,
                include_defaults: bool = True, seed: int = 1234) -> dict[str, Any]:
    """Run lm-eval ``tasks`` on a trained run; lm-eval's results dict (``results``,
    ``n-samples``, ``configs``, ...) without per-sample logs.

    ``include_defaults=False`` looks only in ``include_path`` (indexing lm-eval's thousands of
    built-in task files takes seconds)."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    lm = LmablateLM(run_dir, tokenizer=tokenizer, device=device, batch_size=batch_size)
    manager = TaskManager(include_path=str(include_path) if include_path else None,
                          include_defaults=include_defaults)
    results = simple_evaluate(model=lm, tasks=list(tasks), num_fewshot=num_fewshot, limit=limit,
                              task_manager=manager, log_samples=False, random_seed=seed,
                              numpy_random_seed=seed, torch_random_seed=seed,
                              fewshot_random_seed=seed, bootstrap_iters=1000)
    if results is None:  # only on non-zero ranks of a distributed run
        raise RuntimeError("lm-eval returned no results")
    return results
