"""Aggregate generated tokens/s and time-to-first-token of `python -m llmetal serve` at 1, 2, 4, 8
concurrent clients (loopback only, bounded: each client sends --requests streaming requests of
--max-tokens greedy tokens, ignore_eos).

    python bench/serve_bench.py -m smollm2 [--clients 1,2,4,8] [--max-tokens 64] [-t THREADS]

Starts the server itself on a free 127.0.0.1 port with -np = the largest client count and
prints a markdown table (clients | requests | tokens | seconds | aggregate t/s | TTFT median ms).
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import socket
import statistics
import subprocess
import sys
import time

import httpx

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one(base, i, max_tokens):
    body = {"messages": [{"role": "user", "content": f"Tell me a story about the number {i}."}],
            "max_tokens": max_tokens, "temperature": 0, "stream": True, "ignore_eos": True,
            "stream_options": {"include_usage": True}}
    t0, first, n = time.perf_counter(), None, 0
    with httpx.stream("POST", base + "/v1/chat/completions", json=body, timeout=600) as r:
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            ev = json.loads(line[6:])
            if ev["choices"] and ev["choices"][0]["delta"].get("content") and first is None:
                first = time.perf_counter() - t0
            if ev.get("usage"):
                n = ev["usage"]["completion_tokens"]
    return n, first or 0.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-m", "--model", default="smollm2")
    ap.add_argument("--clients", default="1,2,4,8")
    ap.add_argument("--requests", type=int, default=2, help="requests per client")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("-t", "--threads", type=int, default=0)
    ap.add_argument("-c", "--ctx-size", type=int, default=4096)
    a = ap.parse_args()
    clients = [int(c) for c in a.clients.split(",")]
    port = free_port()
    env = dict(os.environ, PYTHONPATH=os.path.join(REPO, "python") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "llmetal", "serve", "-m", a.model, "--port", str(port),
                             "-np", str(max(clients)), "-c", str(a.ctx_size), "-t", str(a.threads)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(base + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        one(base, 0, 4)   # warm-up: plans recorded
        print("| clients | requests | tokens | seconds | aggregate t/s | TTFT median ms |")
        print("|---:|---:|---:|---:|---:|---:|")
        for c in clients:
            n_req = c * a.requests
            t0 = time.perf_counter()
            with cf.ThreadPoolExecutor(c) as ex:
                res = list(ex.map(lambda i: one(base, i, a.max_tokens), range(n_req)))
            dt = time.perf_counter() - t0
            toks = sum(r[0] for r in res)
            print(f"| {c} | {n_req} | {toks} | {dt:.2f} | {toks / dt:.1f} | "
                  f"{1000 * statistics.median(r[1] for r in res):.0f} |", flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


if __name__ == "__main__":
    main()
