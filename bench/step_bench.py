"""The cost of one Model.step of N decode rows (N sequences, one row each), in the engine and
in Python around it.

    python bench/step_bench.py MODEL [--rows 1,2,4,8,16] [--threads 1] [--steps 7] [--runs 3]

For each N: a model with n_seq = max(rows), every sequence prefilled with its own 16-token
prompt, then `runs` alternating runs of `steps` decode steps of N rows (rows of different
sequences, every row's logits returned, as the server asks). Per step, the minimum over the
runs of: wall time, CPU time of the calling thread (time.thread_time: with --threads 1 the
engine's work runs on this thread, so this is the step's CPU cost without the noise of other
processes), and the wall time outside the engine's replay (Python: validation, buffers, the
logits' download and finiteness check).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "python"))
import llmetal  # noqa: E402


class TimedEncoder:
    """The model's encoder with replay_rows timed (the engine's share of a step)."""

    def __init__(self, enc):
        self.enc, self.t = enc, 0.0

    def replay_rows(self, *a):
        t0 = time.perf_counter()
        r = self.enc.replay_rows(*a)
        self.t += time.perf_counter() - t0
        return r

    def __getattr__(self, name):
        return getattr(self.enc, name)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--rows", default="1,2,4,8,16")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=7)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    counts = [int(s) for s in a.rows.split(",")]
    n_seq = max(counts)
    m = llmetal.load(a.model, n_ctx=256, n_threads=a.threads, n_batch=256, n_out=max(32, n_seq), n_seq=n_seq)
    prompt = list(range(100, 116))
    for s in range(n_seq):
        m.step([(s, t + s, i) for i, t in enumerate(prompt)], [len(prompt) - 1])
    best = {n: [float("inf")] * 3 for n in counts}
    m.enc = enc = TimedEncoder(m.enc)
    for run in range(a.runs + 1):   # run 0 records the plans (not counted)
        for n in counts:
            enc.t = 0.0   # every run rewrites positions 16.. (the same attention lengths each run)
            w0, c0 = time.perf_counter(), time.thread_time()
            for i in range(a.steps):
                logits = m.step([(s, 1000 + s, len(prompt) + i) for s in range(n)])
                np.argmax(logits, axis=1)
            wall, cpu = time.perf_counter() - w0, time.thread_time() - c0
            if run:
                best[n] = [min(best[n][0], wall / a.steps * 1000), min(best[n][1], cpu / a.steps * 1000),
                           min(best[n][2], (wall - enc.t) * 1000 / a.steps)]
    print(f"{Path(m.path).name}, {a.threads} thread(s), {a.steps} steps x {a.runs} runs, min per step (ms):")
    print(f"{'rows':>5} {'wall':>8} {'cpu':>8} {'python':>8} {'x 1 row (cpu)':>14}")
    for n in counts:
        w, c, p = best[n]
        print(f"{n:5d} {w:8.2f} {c:8.2f} {p:8.3f} {c / best[counts[0]][1]:14.2f}")


if __name__ == "__main__":
    main()
