"""Where a round of `bench/serve_bench.py` goes, end to end: every `Model.step` of the server
timed, and the CPU time of the server's threads and of the clients.

    python bench/serve_profile.py -m smollm2 -t 2 --clients 8 [--rounds 2]

Starts `llmetal serve` (-np 8 -c 4096, as serve_bench) in a child process whose `Model.step`
records (start, end, CPU time of the calling thread, rows, wanted rows); then, per round, the
clients of serve_bench (--clients of them, --requests each) and prints: the round's wall time,
the steps grouped by (rows, wanted), the time outside the steps (before the first, between
them, after the last) with the longest gaps, and the CPU seconds of each server thread (from
/proc: the scheduler thread runs the engine's share 0, the pool's workers the others, the main
thread the event loop) and of this process (the clients). With -t 2 a step whose CPU time on
the scheduler thread is about its wall time ran on one core only when the 1-thread figure
(bench/step_bench.py --threads 1) is about the same.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from collections import defaultdict

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(REPO, "python"))
import serve_bench as sb  # noqa: E402

# The child: llmetal serve with Model.step timed; the records go to TRACE_OUT at SIGTERM.
CHILD = r'''
import json, os, signal, sys, time
from llmetal import server
from llmetal.model import Model
REC, step = [], Model.step
def timed(self, rows, want=None, eager=False, ids=False):
    t0, c0 = time.perf_counter(), time.thread_time()
    out = step(self, rows, want, eager, ids)
    REC.append((t0, time.perf_counter(), time.thread_time() - c0, len(rows), -1 if want is None else len(want)))
    return out
Model.step = timed
def dump(*a):
    with open(os.environ["TRACE_OUT"], "w") as f:
        json.dump(REC, f)
    os._exit(0)
signal.signal(signal.SIGTERM, dump)
a = sys.argv
app = server.build(a[1], n_slots=int(a[2]), n_ctx=int(a[3]), n_threads=int(a[4]))
server.serve(app, port=int(a[a.index("--port") + 1]))
'''


def thread_cpu(pid: int) -> dict:
    """tid -> CPU seconds (user + system) of each thread of pid."""
    out, tck = {}, os.sysconf("SC_CLK_TCK")
    for t in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{t}/stat") as f:
            st = f.read()
        fields = st[st.rindex(")") + 2:].split()
        out[int(t)] = (int(fields[11]) + int(fields[12])) / tck
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model", default="smollm2")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("-np", "--parallel", type=int, default=8)
    ap.add_argument("-c", "--ctx-size", type=int, default=4096)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    trace = tempfile.NamedTemporaryFile(suffix=".json", delete=False).name
    env = dict(os.environ, TRACE_OUT=trace,
               PYTHONPATH=os.path.join(REPO, "python") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    argv = [sys.executable, "-c", CHILD, a.model, str(a.parallel), str(a.ctx_size), str(a.threads)]
    s = sb.Server("llmetal", argv, env)
    rounds = []
    try:
        s.wait_healthy()
        sb.one(s.base, 0, 4)
        for _ in range(a.rounds):
            cpu0, r0 = thread_cpu(s.proc.pid), resource.getrusage(resource.RUSAGE_SELF)
            t0 = time.perf_counter()   # CLOCK_MONOTONIC, as the child's
            tokens, dt, _, _ = sb.measure(s, a.clients, a.requests, a.max_tokens)
            t1 = time.perf_counter()
            cpu1, r1 = thread_cpu(s.proc.pid), resource.getrusage(resource.RUSAGE_SELF)
            client = r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime
            rounds.append((t0, t1, tokens, {t: cpu1[t] - cpu0.get(t, 0.0) for t in cpu1}, client))
    finally:
        s.stop()
    with open(trace) as f:
        rec = json.load(f)
    os.unlink(trace)
    for i, (t0, t1, tokens, cpu, client) in enumerate(rounds):
        steps = [r for r in rec if t0 <= r[0] < t1]
        busy = sum(r[1] - r[0] for r in steps)
        print(f"round {i + 1}: {a.clients} clients, {tokens} tokens in {t1 - t0:.3f} s (the clients' setup "
              f"included); {len(steps)} steps, {busy:.3f} s in Model.step, {t1 - t0 - busy:.3f} s outside")
        by = defaultdict(lambda: [0, 0.0, 0.0])
        for r in steps:
            g = by[(r[3], r[4])]
            g[0] += 1
            g[1] += r[1] - r[0]
            g[2] += r[2]
        for (rows, want), (n, wall, c) in sorted(by.items()):
            print(f"   {rows:4d} rows, {want:3d} wanted: {n:4d} steps, {1000 * wall:8.1f} ms "
                  f"({1000 * wall / n:6.2f} ms each, CPU of the calling thread {1000 * c / n:6.2f})")
        if steps:
            gaps = [b[0] - e[1] for e, b in zip(steps, steps[1:])]
            print(f"   before the first step {1000 * (steps[0][0] - t0):.1f} ms, after the last "
                  f"{1000 * (t1 - steps[-1][1]):.1f} ms, between steps {1000 * sum(gaps):.1f} ms "
                  f"(longest {1000 * max(gaps, default=0):.1f})")
        threads = ", ".join(f"{c:.2f}" for _, c in sorted(cpu.items()) if c > 0.005)
        print(f"   CPU s: server threads (by id) {threads}; clients {client:.2f}")


if __name__ == "__main__":
    main()
