"""Aggregate decode speed of several sequences in one step, in the engine (no HTTP).

    python bench/seq_bench.py MODEL [--device cuda] [--seqs 1,2,4,8,16,32] [--steps 32] [--ctx 256] [--no-ids]

For each count N: a model with n_seq = N, every sequence prefilled with the same 16-token
prompt (one step of N x 16 rows), then `steps` decode steps of N rows (one per sequence,
greedy). Prints tokens/s summed over the sequences and the ratio to N = 1: how much one weight
read per step serves several conversations.

Greedy ids come from the device's argmax stage (step(ids=True): N int32s downloaded a step);
--no-ids measures the path without it: every row's logits downloaded (N x vocab floats) and
np.argmax taken on the host.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "python"))
import llmetal  # noqa: E402


def greedy(m, rows, want=None, ids=True):
    """The greedy next token of each wanted row: the device's argmax, or np.argmax of the
    downloaded logits."""
    if ids:
        return m.step(rows, want, ids=True).tolist()
    return [int(np.argmax(r)) for r in m.step(rows, want)]


def run(path, device, n_seq, steps, ctx, ids):
    m = llmetal.load(path, device=device, n_ctx=ctx, n_batch=512, n_out=max(32, n_seq), n_seq=n_seq)
    prompt = list(range(100, 116))
    per_step = max(1, m.step_rows_max() // len(prompt))   # whole prompts per prefill step
    toks = []
    for s0 in range(0, n_seq, per_step):
        seqs = range(s0, min(n_seq, s0 + per_step))
        rows = [(s, t, i) for s in seqs for i, t in enumerate(prompt)]
        want = [k * len(prompt) + len(prompt) - 1 for k in range(len(seqs))]
        toks += greedy(m, rows, want, ids)
    pos = len(prompt)
    for warm in range(2):    # records the plan of N rows
        toks = greedy(m, [(s, toks[s], pos + warm) for s in range(n_seq)], ids=ids)
    pos += 2
    t0 = time.perf_counter()
    for i in range(steps):
        toks = greedy(m, [(s, toks[s], pos + i) for s in range(n_seq)], ids=ids)
    return n_seq * steps / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seqs", default="1,2,4,8,16,32")
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--ids", action=argparse.BooleanOptionalAction, default=True,
                    help="greedy ids from the device's argmax stage (default); --no-ids: download every "
                         "row's logits and take np.argmax on the host")
    a = ap.parse_args()
    base = None
    m = llmetal.load(a.model, device=a.device, n_ctx=a.ctx)
    m.prefill(list(range(100, 116)))
    m.decode_step(1, 16, ids=a.ids)
    t0 = time.perf_counter()
    for i in range(a.steps):
        m.decode_step(1, 17 + i, ids=a.ids)
    single = a.steps / (time.perf_counter() - t0)
    del m
    how = "ids from the device's argmax" if a.ids else "logits downloaded, np.argmax on the host"
    print(f"one sequence through decode_step (the fused single-sequence plan): {single:.1f} t/s")
    print(f"| sequences | aggregate t/s | vs 1 |  ({Path(a.model).name}, {a.device}, {a.steps} steps, {how})")
    print("|---:|---:|---:|")
    for n in (int(x) for x in a.seqs.split(",")):
        tps = run(a.model, a.device, n, a.steps, a.ctx, a.ids)
        base = base or tps
        print(f"| {n} | {tps:.1f} | {tps / base:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
