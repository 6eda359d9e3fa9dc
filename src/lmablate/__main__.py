"""The ``lmablate`` command: look at a study before (and after) Snakemake runs it.

    lmablate plan config.yaml                 the run table: IDs, what differs, params, FLOPs
    lmablate plan studies/x.yaml --config scale=smoke --format csv
    lmablate solve --params 10M --embedding-share 0.35 --glu-expansion 2.66 --vocab 16000
    lmablate train config.yaml RUN_ID         train one run here, outside Snakemake
    lmablate lr-find config.yaml [RUN]        LR range test of a run (or variant); writes a plot
    lmablate overfit config.yaml [RUN]        can the model memorise one batch? (a sanity check)
    lmablate schema -o schemas/config.schema.yaml
    lmablate import-hf runs/* --name-pattern '(?P<heads>[0-9]+)_(?P<layers>[0-9]+)' --out results/hf
    lmablate eval-harness results/default/runs/RUN_ID --tasks arc_easy --limit 100
    lmablate export-hf results/default/runs/RUN_ID hf/RUN_ID   a transformers model directory
    lmablate migrate-ids config.yaml [--apply]  keep runs finished under older 8-digit run IDs
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lmablate import paths
from lmablate.errors import LmablateError, missing_extra
from lmablate.units import plural

__all__ = ["main", "entrypoint"]


def _parser(prog: str | None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog or "lmablate",
        description="Ablation and sweep studies of small transformer LMs. The workflow itself "
                    "runs with `snakemake -c2` (see README.md); this command inspects studies "
                    "and runs single steps.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    plan = sub.add_parser("plan", help="print the runs a study expands to, without training",
                          description="Expand a study and print one row per run: run ID, the "
                          "keys that differ from the defaults, parameters, tokens, FLOPs and an "
                          "estimated wall time, then totals.")
    plan.add_argument("study", type=Path, help="study YAML file (e.g. config.yaml)")
    plan.add_argument("--config", "-C", action="append", default=[], metavar="KEY=VALUE",
                      help="override a key (dotted for nested keys: defaults.train.lr=1e-3; "
                      "scale=smoke); repeatable")
    plan.add_argument("--format", choices=("table", "csv", "json"), default="table")
    plan.add_argument("--tokens-per-second", type=float, default=None, metavar="TPS",
                      help="throughput used for the wall-time estimate (default: measured "
                      "throughput of finished runs of this study under results/, else none)")
    plan.add_argument("--results", type=Path, default=Path("results"), metavar="DIR",
                      help="where finished runs are looked for (default: results)")

    so = sub.add_parser("solve", help="model dims for a parameter target",
                        description="Solve d_model, n_layers and d_ff so the model has --params "
                        "parameters (within --tolerance), --embedding-share of them in the "
                        "embedding and d_ff/d_model near --glu-expansion; the same solver a "
                        "study's model.params_target uses.")
    so.add_argument("--params", required=True, help="target total, e.g. 10M")
    so.add_argument("--embedding-share", type=float, default=None,
                    help="share of the parameters in the embedding (default: keep --d-model)")
    so.add_argument("--glu-expansion", type=float, default=None,
                    help="d_ff / d_model (default: 8/3 for gated FFNs, 4 otherwise)")
    so.add_argument("--vocab", type=int, required=True, help="tokenizer vocabulary (padded to "
                    "--vocab-multiple as training pads it)")
    so.add_argument("--vocab-multiple", type=int, default=64)
    so.add_argument("--seq-len", type=int, default=512, help="context (sizes a learned position "
                    "table)")
    so.add_argument("--d-model", type=int, default=128, help="width when no share is given")
    so.add_argument("--n-heads", type=int, default=4)
    so.add_argument("--ffn", default="swiglu")
    so.add_argument("--pos-emb", default="rope")
    so.add_argument("--untied", action="store_true", help="separate output head")
    so.add_argument("--tolerance", type=float, default=None, help="relative (default 0.005)")
    so.add_argument("--format", choices=("text", "json"), default="text")

    tr = sub.add_parser("train", help="train one run of a study here (outside Snakemake)",
                        description="Train one run, writing results/<study>/runs/<run_id>/ and "
                        "resuming from checkpoints/<study>/<run_id>/. The token store must exist "
                        "(run snakemake first, or point --tokens at one).")
    tr.add_argument("study", type=Path)
    tr.add_argument("run_id")
    tr.add_argument("--config", "-C", action="append", default=[], metavar="KEY=VALUE")
    tr.add_argument("--tokens", type=Path, default=None, help="HDF5 token store (default: the "
                    "workflow's resources/tokens/<corpus>-<data_id>.h5)")
    tr.add_argument("--device", default="auto", help="auto | cpu | cuda:N")
    tr.add_argument("--threads", type=int, default=None)

    lf = sub.add_parser("lr-find", help="LR range test of one run: loss vs an exponentially "
                        "growing LR, with suggested LRs and a plot",
                        description="Train one run's model from its initialisation while the LR "
                        "grows exponentially from --min-lr to --max-lr (Smith 2017); stop when "
                        "the smoothed loss exceeds 4x its minimum or rises 25% above its start. "
                        "Writes lr_find.json and "
                        "lr_find.png to --out and prints the suggested LR (steepest descent: "
                        "closest to the best LR of real runs), the valley (LR at the minimum / "
                        "10) and the min-loss LR. The token store must exist (run "
                        "snakemake first, or point --tokens-file at one).")
    ov = sub.add_parser("overfit", help="sanity check: can one run's model memorise one batch?",
                        description="Train one run's model on the first --tokens train tokens "
                        "(one fixed batch) at its LR until the loss falls below --target nats. "
                        "Passing means the model, optimiser and data are wired so that learning "
                        "happens; exit status 1 when it fails.")
    for sp in (lf, ov):
        sp.add_argument("study", type=Path)
        sp.add_argument("run", nargs="?", default=None, help="run ID or variant name (default: "
                        "the first run of the baseline variant)")
        sp.add_argument("--config", "-C", action="append", default=[], metavar="KEY=VALUE")
        sp.add_argument("--tokens-file", type=Path, default=None, metavar="H5",
                        help="HDF5 token store (default: the workflow's resources/tokens/...)")
        sp.add_argument("--device", default="auto", help="auto | cpu | cuda:N")
        sp.add_argument("--threads", type=int, default=None)
    lf.add_argument("--min-lr", type=float, default=1e-6, help="start of the ramp (default 1e-6)")
    lf.add_argument("--max-lr", type=float, default=10.0, help="end of the ramp (default 10)")
    lf.add_argument("--steps", type=int, default=100, help="steps of the ramp (default 100)")
    lf.add_argument("--out", type=Path, default=None, metavar="DIR", help="default: "
                    "results/<study>/lr_find/<run_id>")
    ov.add_argument("--tokens", type=int, default=1024, help="tokens in the batch (default 1024)")
    ov.add_argument("--target", type=float, default=0.2, help="loss to reach, nats (default 0.2)")
    ov.add_argument("--max-steps", type=int, default=500)

    sc = sub.add_parser("schema", help="write the JSON schema of study files")
    sc.add_argument("-o", "--output", type=Path, default=None, help="file (default: stdout)")

    hf = sub.add_parser("import-hf", help="import Hugging Face Trainer output dirs as a study",
                        description="Read each run directory's latest checkpoint-*/"
                        "trainer_state.json and write the same tables, summary, analysis and "
                        "figures as a native study to --out.")
    hf.add_argument("dirs", nargs="+", type=Path, metavar="DIR",
                    help="Trainer output directories (one per run)")
    hf.add_argument("--name-pattern", required=True, metavar="REGEX",
                    help="regex with named groups matched against each directory name, e.g. "
                    r"'(?P<heads>\d+)_(?P<layers>\d+)_(?P<hidden>\d+)_(?P<inter>\d+)'; the groups "
                    "become config columns and sweep axes")
    hf.add_argument("--out", required=True, type=Path, metavar="DIR",
                    help="results directory, e.g. results/ablations")
    hf.add_argument("--study", default=None, help="study name (default: the --out name)")
    hf.add_argument("--tokens-per-step", type=int, default=None, metavar="N",
                    help="tokens per optimizer step, for token axes when the Trainer did not "
                    "count input tokens (default: curves against steps)")
    hf.add_argument("--no-plots", action="store_true", help="tables and text only")

    eh = sub.add_parser("eval-harness", help="run lm-evaluation-harness tasks on a trained run",
                        description="Evaluate one trained run (results/<study>/runs/<run_id>) on "
                        "lm-eval tasks through lmablate's adapter (needs the `eval` extra: "
                        "pip install 'lmablate[eval]').")
    eh.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    eh.add_argument("--tasks", required=True, help="comma-separated lm-eval task names")
    eh.add_argument("--tokenizer", type=Path, default=None, help="tokenizer.json (default: the "
                    "workflow's resources/tokenizers/<corpus>-<data_id>/tokenizer.json)")
    eh.add_argument("--num-fewshot", type=int, default=None)
    eh.add_argument("--limit", type=float, default=None, help="rows per task (a fraction if < 1)")
    eh.add_argument("--batch-size", type=int, default=32)
    eh.add_argument("--device", default="cpu", help="cpu | cuda:N")
    eh.add_argument("--include-path", type=Path, default=None, help="folder of extra task YAMLs")
    eh.add_argument("--only-include-path", action="store_true", help="look for tasks only in "
                    "--include-path, not among lm-eval's built-in tasks (faster start)")
    eh.add_argument("--seed", type=int, default=1234)
    eh.add_argument("--output", "-o", type=Path, default=None, help="write the results as JSON "
                    "(tasks.json's per-task schema plus lm-eval's full results)")

    ex = sub.add_parser("export-hf", help="write a trained run as a Hugging Face model directory",
                        description="Write RUN_DIR's model and tokenizer to OUT as a directory "
                        "that transformers' AutoModelForCausalLM and AutoTokenizer load: Llama, "
                        "Qwen3 (qk_norm), Mixtral (MoE) or GPT-2 (LayerNorm, learned positions), "
                        "whichever computes the same logits; other models are refused.")
    ex.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    ex.add_argument("out", type=Path, metavar="OUT")
    ex.add_argument("--tokenizer", type=Path, default=None, help="tokenizer.json (default: the "
                    "workflow's resources/tokenizers/<corpus>-<data_id>/tokenizer.json)")
    mi = sub.add_parser("migrate-ids", help="rename finished runs made under older 8-digit IDs",
                        description="Run IDs end in 16 hex digits (they used to end in 8). Find "
                        "the study's finished runs under their old IDs and, with --apply, rename "
                        "their results, checkpoints, logs and benchmarks to the new IDs, so "
                        "snakemake keeps them instead of retraining. A run is renamed only when "
                        "its config.yaml resolves to the same config as the new ID.")
    mi.add_argument("study", type=Path)
    mi.add_argument("--config", "-C", action="append", default=[], metavar="KEY=VALUE",
                    help="override a key, as in `lmablate plan`; repeatable")
    mi.add_argument("--apply", action="store_true", help="rename (default: only list)")
    mi.add_argument("--root", type=Path, default=Path("."), metavar="DIR",
                    help="the workflow's working directory (default: .)")
    return p


def _migrate_ids(args: argparse.Namespace) -> int:
    from lmablate.study.load import read_study
    from lmablate.study.phases import ranking_of
    from lmablate.workflow.migrate import migrate_ids

    study = read_study(args.study, _overrides(args.config))
    ranking = ranking_of(study)
    runs = {**study.by_id, **(ranking.phase1 if ranking else {})}
    plan = migrate_ids(args.root, study.name, runs, apply=args.apply)
    base = paths.fill(paths.RUNS_DIR, study=study.name)
    for r in plan:
        print(f"{base}/{r.old} -> {r.new}" if r.ok else f"{base}/{r.old}: not renamed ({r.why})")
    n = sum(r.ok for r in plan)
    verb = "renamed" if args.apply else "to rename (dry run; --apply renames them)"
    rest = f", {len(plan) - n} not renamed" if len(plan) > n else ""
    print(f"{plural(n, 'run')} {verb}{rest}")
    return 0


def _overrides(items: Sequence[str]) -> dict:
    from lmablate.study.load import parse_override

    return dict(parse_override(i) for i in items)


def _plan(args: argparse.Namespace) -> int:
    from lmablate.evaluation.steps import study_eval
    from lmablate.study.load import read_study
    from lmablate.study.plan import (
        ANY_DEVICE,
        check_memory,
        memory_warning,
        plan_table,
        render,
        task_plan,
    )

    study = read_study(args.study, _overrides(args.config))
    # a study is often planned where it will not train (a laptop, a login node): runs too big
    # for this machine are a warning here; for the device named by LMABLATE_DEVICE_MEMORY, or
    # for any single device, a refusal (snakemake refuses them on a machine that would train)
    check_memory(study, None if os.environ.get("LMABLATE_DEVICE_MEMORY") else ANY_DEVICE)
    warning = memory_warning(study)
    table = plan_table(study, tokens_per_second=args.tokens_per_second,
                       results_root=args.results)
    evaluation = study_eval(study)  # the downstream tasks (eval_tasks:), listed after the runs
    tasks = task_plan(study, evaluation.evaluations(), args.results) if evaluation else None
    print(render(table, args.format, study, tasks))
    if warning:
        print(warning, file=sys.stderr)
    return 0


def _solve(args: argparse.Namespace) -> int:
    from lmablate.errors import ConfigError
    from lmablate.study.config import ModelConfig, TokenizerConfig, from_dict
    from lmablate.study.solve import TOLERANCE, model_vocab, solve

    model = from_dict(ModelConfig, {"d_model": args.d_model, "n_heads": args.n_heads,
                                    "ffn": args.ffn, "pos_emb": args.pos_emb,
                                    "tie_embeddings": not args.untied, "params_target": args.params,
                                    "vocab_multiple": args.vocab_multiple,
                                    "embedding_share": args.embedding_share,
                                    "glu_expansion": args.glu_expansion}, "model")
    if args.vocab is not None and args.vocab < 2:
        raise ConfigError(f"expected an integer >= 2, got {args.vocab}", key="--vocab")
    vocab = model_vocab(model, TokenizerConfig(vocab_size=args.vocab))
    sol = solve(model, vocab, args.seq_len, model.params_target,
                embedding_share=args.embedding_share, glu_expansion=args.glu_expansion,
                tolerance=args.tolerance or TOLERANCE)
    if args.format == "json":
        print(json.dumps({"vocab_size": vocab, **sol.to_dict()}, indent=2))
    else:
        print(f"d_model={sol.d_model} n_layers={sol.n_layers} d_ff={sol.d_ff} "
              f"n_heads={args.n_heads}\n{sol.describe()}, {sol.error:.2%} from the target, "
              f"vocab {vocab}")
    return 0


def _pick_run(study: Any, which: str | None, file: Path) -> Any:
    """A run of ``study`` by run ID or variant name (its first run); default: the baseline's."""
    from lmablate.errors import ConfigError, did_you_mean

    which = which or study.baseline
    if which in study.by_id:
        return study.by_id[which]
    for run in study.runs:
        if run.variant == which:
            return run
    if which == study.baseline and not any(r.variant == which for r in study.runs):
        return study.runs[0]
    names = [*sorted({r.variant for r in study.runs}), *study.by_id]
    raise ConfigError(f"no run or variant {which!r} in this study{did_you_mean(which, names)}",
                      file=str(file))


def _tokens_file(run: Any, given: Path | None) -> Path:
    from lmablate.errors import DataError

    path = given or Path(paths.tokens(run.config.data.corpus, run.data_id))
    if not path.is_file():
        raise DataError(f"{path}: token store not found; build it with `snakemake -c2 {path}` "
                        "(with --configfile for a study other than config.yaml), or pass "
                        "--tokens-file")
    return path


def _lr_find(args: argparse.Namespace) -> int:
    from lmablate.engine.lrfind import lr_range_test
    from lmablate.figures.sweeps import lr_finder
    from lmablate.study.load import read_study

    study = read_study(args.study, _overrides(args.config))
    run = _pick_run(study, args.run, args.study)
    out = args.out or Path(paths.fill(paths.LR_FIND_DIR, study=study.name, run_id=run.run_id))
    res = lr_range_test(run.to_dict(), _tokens_file(run, args.tokens_file), out,
                        min_lr=args.min_lr, max_lr=args.max_lr, steps=args.steps,
                        device=args.device, threads=args.threads, run_id=run.run_id,
                        progress=sys.stderr.isatty())
    lr_finder([res], out / "lr_find.png")
    if res["lr_suggested"] is None:
        print(f"{run.run_id}: the loss never fell between {args.min_lr:g} and {args.max_lr:g} "
              f"({res['stopped']}); plot: {out / 'lr_find.png'}")
        return 1
    print(f"{run.run_id}: suggested LR {res['lr_suggested']:.3g} (steepest descent); valley "
          f"(min / 10) {res['lr_valley']:.3g}, min loss at {res['lr_min_loss']:.3g}; configured "
          f"{res['configured_lr']:.3g}. {res['steps']} steps ({res['stopped']}). "
          f"Plot: {out / 'lr_find.png'}")
    return 0


def _overfit(args: argparse.Namespace) -> int:
    from lmablate.engine.lrfind import overfit_check
    from lmablate.study.load import read_study

    study = read_study(args.study, _overrides(args.config))
    run = _pick_run(study, args.run, args.study)
    res = overfit_check(run.to_dict(), _tokens_file(run, args.tokens_file), tokens=args.tokens,
                        target=args.target, max_steps=args.max_steps, device=args.device,
                        threads=args.threads)
    verdict = "passed" if res["passed"] else "FAILED"
    print(f"overfit check {verdict} ({run.run_id}): loss {res['initial_loss']:.3f} -> "
          f"{res['final_loss']:.3f} nats in {res['steps']} steps on {res['tokens']} tokens "
          f"(target {res['target']:g}, lr {res['lr']:g})")
    if not res["passed"]:
        print("the model could not memorise one batch: check the learning rate, the model "
              "(masking, a frozen or zero-initialised layer) and the data", file=sys.stderr)
    return 0 if res["passed"] else 1


def _train(args: argparse.Namespace) -> int:
    from lmablate.study.load import read_study
    from lmablate.workflow.steps import setup_logging, train_run_step

    setup_logging()
    study = read_study(args.study, _overrides(args.config))
    runs = study.by_id
    if args.run_id not in runs:
        from lmablate.errors import ConfigError, did_you_mean

        raise ConfigError(f"no run {args.run_id!r} in this study{did_you_mean(args.run_id, runs)}",
                          file=str(args.study))
    run = runs[args.run_id]
    tokens = args.tokens or Path(paths.tokens(run.config.data.corpus, run.data_id))
    where = {"study": study.name, "run_id": run.run_id}
    final = train_run_step(run.to_dict(), str(tokens), paths.fill(paths.RUN_DIR, **where),
                           study=study.name, ckpt_dir=paths.fill(paths.CHECKPOINT_DIR, **where),
                           threads=args.threads, device=args.device,
                           tracking=study.doc.get("logging"))
    print(json.dumps({k: final.get(k) for k in ("run_id", "status", "val_loss", "tokens",
                                                "tokens_per_s")}))
    return 0


def _schema(args: argparse.Namespace) -> int:
    import yaml

    from lmablate.study.schema import study_schema

    text = ("# Generated by `lmablate schema -o schemas/config.schema.yaml`; do not edit.\n"
            + yaml.safe_dump(study_schema(), sort_keys=False, width=100))
    if args.output:
        args.output.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def _import_hf(args: argparse.Namespace) -> int:
    from lmablate.interop.importhf import import_hf

    summary = import_hf(args.dirs, args.out, name_pattern=args.name_pattern, study=args.study,
                        tokens_per_step=args.tokens_per_step, plots=not args.no_plots)
    print(f"{plural(summary['n_runs'], 'run')} -> {args.out}/ (runs.csv, curves.parquet, "
          "summary.json, "
          f"analysis.txt, RESULTS.md{', plots/' if not args.no_plots else ''})")
    return 0


def _eval_harness(args: argparse.Namespace) -> int:
    try:
        from lmablate.evaluation.harness import harness_tasks_json, run_harness
    except ImportError as err:  # lm-eval is an optional extra
        raise LmablateError(str(err)) from None
    from lm_eval.utils import make_table

    from lmablate.io import atomic_write_json

    limit = args.limit if args.limit is None or args.limit < 1 else int(args.limit)
    results = run_harness(args.run_dir, [t for t in args.tasks.split(",") if t],
                          tokenizer=args.tokenizer, device=args.device, batch_size=args.batch_size,
                          num_fewshot=args.num_fewshot, limit=limit,
                          include_path=args.include_path,
                          include_defaults=not args.only_include_path, seed=args.seed)
    print(make_table(results))
    if args.output:
        atomic_write_json(args.output, {**harness_tasks_json(results),
                                        "lm_eval": {k: results[k] for k in ("results", "n-samples")
                                                    if k in results}})
    return 0


def _export_hf(args: argparse.Namespace) -> int:
    from lmablate.interop.exporthf import export_hf

    info = export_hf(args.run_dir, args.out, tokenizer=args.tokenizer)
    print(f"{args.run_dir} -> {info['out']}/ ({info['class']}, {info['vocab_size']} tokens)")
    return 0


def main(cli_args: Sequence[str] | None = None, prog: str | None = None) -> int:
    args = _parser(prog).parse_args(cli_args)
    try:
        return {"plan": _plan, "solve": _solve, "train": _train, "schema": _schema,
                "import-hf": _import_hf, "eval-harness": _eval_harness, "lr-find": _lr_find,
                "overfit": _overfit, "export-hf": _export_hf,
                "migrate-ids": _migrate_ids}[args.command](args)
    except (LmablateError, ModuleNotFoundError) as err:
        err = missing_extra(err, f"lmablate {args.command}") or err
        if not isinstance(err, LmablateError):
            raise
        print(f"lmablate: error: {err}", file=sys.stderr)
        return 2


def entrypoint() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entrypoint()
