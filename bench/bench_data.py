"""Benchmark of the data path, against peers measured in the same run.

1. Encode throughput of ``encode_corpus`` (read, split, hash split, encode, write HDF5) on the
   shipped corpus and on a ~200 MB corpus made by repeating it, against the ceiling: the raw
   ``tokenizers`` ``encode_batch_fast`` on the same documents, already in memory, in batches of the
   same size. Target: >= 70 % of the ceiling.
2. Loader throughput of ``Batches.get`` (seq_len 512, batch 64) on the big corpus' train split, in
   memory, pinned to one CPU core. Target: >= 20M tokens/s. The out-of-core path (windows read from
   the HDF5 file) is reported beside it.
3. Peak RSS, in a fresh subprocess each, of training the BPE tokenizer on the big corpus (reads
   at most ``train_bytes``, 50 MB by default) and of encoding it. Target: < 1 GiB. The peak is
   the process' ``VmHWM``: Linux carries ``getrusage``'s ``ru_maxrss`` over fork + exec, so a
   child started by a large parent reports at least the parent's size (both are recorded; the
   children run before this process loads anything large).

The big corpus repeats the same stories, so the tokenizer's word cache hits more often than on
fresh text; both sides of the encode ratio get that benefit alike.

    python bench/bench_data.py [--big-mb 200] [--workdir /tmp/lmablate-bench-data]

Prints a table and writes ``bench/results/<date>-cpu-data.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from lmablate.data.corpora import iter_documents, load_manifest, prepare_corpus, split_documents
from lmablate.data.tokenizer import build_tokenizer, load_tokenizer
from lmablate.data.tokens import Batches, TokenStore, encode_corpus
from lmablate.study.config import TokenizerConfig
from lmablate.study.corpus_spec import resolve_corpora

HERE = Path(__file__).resolve().parent
VOCAB = 4096
VAL_FRACTION = 0.05
BATCH_DOCS = 512  # encode_corpus's default, used for the ceiling too
SEQ, BATCH = 512, 64
TARGETS = {"encode_ratio": 0.70, "loader_tokens_per_s": 20e6, "peak_rss_bytes": 1 << 30}

# run in a fresh interpreter so that the peak RSS is that step's alone
CHILD = """
import json, resource, sys, time
from lmablate.workflow.steps import train_tokenizer_step
from lmablate.data.tokens import encode_corpus
step, manifest, tokenizer, out, vocab, val_fraction = sys.argv[1:7]
t0 = time.perf_counter()
if step == "train":
    train_tokenizer_step(manifest, {"kind": "bpe", "vocab_size": int(vocab)}, float(val_fraction),
                         tokenizer)
else:
    encode_corpus(manifest, tokenizer, out, val_fraction=float(val_fraction))
# Linux carries ru_maxrss over fork + exec, so it can report the parent's size; VmHWM is this
# process image's own high-water mark
hwm = [int(line.split()[1]) * 1024 for line in open("/proc/self/status")
       if line.startswith("VmHWM:")]
maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"seconds": time.perf_counter() - t0, "ru_maxrss_bytes": maxrss,
                  "peak_rss_bytes": hwm[0] if hwm else maxrss}))
"""


def child(step: str, manifest: Path, tokenizer: Path, out: Path | None = None) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, step, str(manifest), str(tokenizer),
                           str(out or ""), str(VOCAB), str(VAL_FRACTION)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{step} subprocess failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def ceiling(manifest: Path, tokenizer: Path) -> float:
    """Seconds of raw encode_batch_fast over the corpus' documents, held in memory."""
    tok = load_tokenizer(tokenizer)
    docs = list(iter_documents(load_manifest(manifest)))
    batches = [docs[i:i + BATCH_DOCS] for i in range(0, len(docs), BATCH_DOCS)]
    t0 = time.perf_counter()
    for batch in batches:
        tok.encode_batch_fast(batch)
    return time.perf_counter() - t0


def corpus_bytes(manifest: Path) -> int:
    return sum(f["bytes"] for f in load_manifest(manifest)["files"])


def make_big(shipped: Path, out: Path, mb: int) -> Path:
    text = shipped.read_bytes().rstrip(b"\n") + b"\n\n"
    reps = -(-mb * 1_000_000 // len(text))
    if not out.is_file() or out.stat().st_size != reps * len(text):
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "wb") as fh:
            fh.writelines(text for _ in range(reps))
    return out


def loader(tokens: object, steps: int) -> float:
    """Tokens per second of Batches.get (seq_len tokens per window)."""
    b = Batches(tokens, SEQ, BATCH, seed=0)
    b.get(0)
    t0 = time.perf_counter()
    for i in range(1, steps + 1):
        b.get(i)
    return steps * BATCH * SEQ / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--big-mb", type=int, default=200, help="size of the repeated corpus (MB)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/lmablate-bench-data"))
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args(argv)
    work = args.workdir
    load_start = os.getloadavg()

    # the shipped corpus and a tokenizer trained on it
    spec = resolve_corpora({}, Path("."))["tinystories-1k"]
    small = prepare_corpus(spec, work / "shipped")
    tok = work / "tok" / "tokenizer.json"
    docs = (d for _, d in split_documents(load_manifest(small), VAL_FRACTION, split="train"))
    build_tokenizer(TokenizerConfig(kind="bpe", vocab_size=VOCAB), docs, tok)

    results: dict = {"encode": {}, "targets": TARGETS}
    # 1a. shipped corpus: interleave ceiling and encode_corpus, best of 3 each (shared machines)
    n = corpus_bytes(small)
    best_c = best_e = float("inf")
    for _ in range(3):
        best_c = min(best_c, ceiling(small, tok))
        t0 = time.perf_counter()
        encode_corpus(small, tok, work / "shipped.h5", val_fraction=VAL_FRACTION)
        best_e = min(best_e, time.perf_counter() - t0)
    results["encode"]["shipped"] = {"bytes": n, "ceiling_mb_s": n / best_c / 1e6,
                                    "encode_mb_s": n / best_e / 1e6, "ratio": best_c / best_e}

    # 1b + 3. the big corpus: BPE training and encoding, each in its own process
    big_txt = make_big(Path(spec["_abs"]), work / "big-src" / "tinystories-repeated.txt",
                       args.big_mb)
    big_spec = resolve_corpora({"big": {"source": "file", "path": str(big_txt)}}, Path("."))["big"]
    big = prepare_corpus(big_spec, work / "big")
    n = corpus_bytes(big)
    big_tok = work / "big-tok" / "tokenizer.json"
    trained = child("train", big, big_tok)
    encoded = child("encode", big, big_tok, work / "big.h5")
    c = ceiling(big, big_tok)
    results["encode"]["big"] = {"bytes": n, "ceiling_mb_s": n / c / 1e6,
                                "encode_mb_s": n / encoded["seconds"] / 1e6,
                                "ratio": c / encoded["seconds"]}
    results["peak_rss"] = {"train_bpe": trained, "encode": encoded}

    # 2. loader on one core
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    store = TokenStore(work / "big.h5")
    train = store.split("train")
    disk = TokenStore(work / "big.h5", max_memory_bytes=0).split("train")
    results["loader"] = {"train_tokens": len(train), "seq_len": SEQ, "batch_size": BATCH,
                         "in_memory_tokens_per_s": loader(train, 2000),
                         "hdf5_tokens_per_s": loader(disk, 50)}

    import h5py
    import tokenizers

    results["machine"] = {"platform": platform.platform(), "python": platform.python_version(),
                          "cpus": os.cpu_count(), "loadavg_start": load_start,
                          "loadavg_end": os.getloadavg(), "tokenizers": tokenizers.__version__,
                          "h5py": h5py.__version__, "numpy": np.__version__}
    print_table(results)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{time.strftime('%Y-%m-%d')}-cpu-data.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {path}")
    return 0


def print_table(r: dict) -> None:
    t = r["targets"]
    print(f"{'corpus':<10} {'MB':>8} {'ceiling MB/s':>13} {'encode MB/s':>12} {'ratio':>6}  target")
    for name, e in r["encode"].items():
        ok = "ok" if e["ratio"] >= t["encode_ratio"] else "MISSED"
        print(f"{name:<10} {e['bytes'] / 1e6:8.1f} {e['ceiling_mb_s']:13.2f} "
              f"{e['encode_mb_s']:12.2f}"
              f" {e['ratio']:6.2f}  >= {t['encode_ratio']:.2f} {ok}")
    ld = r["loader"]
    ok = "ok" if ld["in_memory_tokens_per_s"] >= t["loader_tokens_per_s"] else "MISSED"
    print(f"\nloader seq {ld['seq_len']} x batch {ld['batch_size']}, 1 core, "
          f"{ld['train_tokens'] / 1e6:.1f}M train tokens:")
    print(f"  in memory  {ld['in_memory_tokens_per_s'] / 1e6:8.1f}M tokens/s  "
          f">= {t['loader_tokens_per_s'] / 1e6:.0f}M {ok}")
    print(f"  from HDF5  {ld['hdf5_tokens_per_s'] / 1e6:8.1f}M tokens/s")
    print("\npeak RSS (VmHWM, fresh process each; ru_maxrss beside it):")
    for step, m in r["peak_rss"].items():
        ok = "ok" if m["peak_rss_bytes"] < t["peak_rss_bytes"] else "MISSED"
        print(f"  {step:<10} {m['peak_rss_bytes'] / 2**20:8.0f} MiB in {m['seconds']:6.1f} s  "
              f"< 1024 MiB {ok}   (ru_maxrss {m['ru_maxrss_bytes'] / 2**20:.0f} MiB)")


if __name__ == "__main__":
    raise SystemExit(main())
