"""Aggregate generated tokens/s and time-to-first-token of `python -m llmetal serve` at 1, 2, 4, 8
concurrent clients, optionally next to llama.cpp's `llama-server` under the same load.

    python bench/serve_bench.py -m smollm2 [--clients 1,2,4,8] [--max-tokens 64] [-t THREADS]
    python bench/serve_bench.py -m smollm2 -t 2 --llama-server /work/oracle/llama.cpp-build/bin/llama-server \\
        --rounds 2

Loopback only and bounded: every server is started by the script on a free 127.0.0.1 port with
-np = the largest client count and the same -c (the total context, split over the -np slots by
both servers, so each slot holds -c / -np positions), and stopped at the end. Each
client (a thread with its own httpx.Client, made before the clock starts; a connection per
request) sends --requests streaming chat requests one after another ("Tell me a story about the
number i.", greedy, ignore_eos, --max-tokens tokens); one warm-up request of 4 tokens precedes
the measured loads. The tokens counted are the usage's completion_tokens of each request.

With --llama-server both servers are started (one idles while the other is measured) and take
turns at each client count, --rounds times (llmetal at 1 client, llama-server at 1 client,
llmetal at 2, ...), so that a shared, noisy machine weighs on both alike; the table gives, per
server and client count, the best and the median aggregate t/s over the rounds and the median
TTFT.
Every request says `"cache_prompt": false` and llama-server runs with `--no-cache-prompt
--cache-ram 0`: both servers would otherwise reuse the chat template's prefix from a slot's
previous request, and the prompt work measured would depend on which slot a request lands in.
llama-server also runs with `--no-kv-unified` (one KV cache per slot, as llmetal's); add others
with --llama-args.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import shlex
import socket
import statistics
import subprocess
import sys
import threading
import time

import httpx

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOADS: list[float] = []     # the 1-minute load average after each measurement
CLIENTS: list = []          # every thread's httpx.Client, closed with its pool


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_local = threading.local()


def client() -> httpx.Client:
    """This thread's HTTP client, kept for all its requests (as the openai client keeps one):
    httpx.stream() builds a new client per request, ~20 ms of CPU for its TLS context alone,
    which 8 clients starting requests together spent in the measured time on 2 cores. Each
    request still opens its own connection, as before (no keep-alive: llama-server closed a
    kept connection under the next request)."""
    if getattr(_local, "client", None) is None or _local.client.is_closed:
        _local.client = httpx.Client(timeout=600, limits=httpx.Limits(max_keepalive_connections=0))
        CLIENTS.append(_local.client)
    return _local.client


def one(base, i, max_tokens):
    """One streaming request: (completion tokens, prompt tokens, seconds to the first text)."""
    body = {"messages": [{"role": "user", "content": f"Tell me a story about the number {i}."}],
            "max_tokens": max_tokens, "temperature": 0, "stream": True, "ignore_eos": True,
            "cache_prompt": False, "stream_options": {"include_usage": True}}
    t0, first, n, n_prompt, deltas = time.perf_counter(), None, None, 0, 0
    with client().stream("POST", base + "/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            ev = json.loads(line[6:])
            if ev.get("choices") and ev["choices"][0].get("delta", {}).get("content"):
                deltas += 1
                if first is None:
                    first = time.perf_counter() - t0
            if ev.get("usage"):
                n, n_prompt = ev["usage"]["completion_tokens"], ev["usage"]["prompt_tokens"]
    return (deltas if n is None else n), n_prompt, first or 0.0


class Server:
    """A server process on a free loopback port, up once /health answers 200."""

    def __init__(self, name, argv, env=None):
        self.name, self.port = name, free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(argv + ["--host", "127.0.0.1", "--port", str(self.port)], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def wait_healthy(self, timeout=300.0):
        t_end = time.monotonic() + timeout
        while time.monotonic() < t_end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with status {self.proc.returncode} before it was up")
            try:
                if httpx.get(self.base + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} did not answer /health within {timeout:.0f} s")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def llmetal_argv(a, n_slots):
    return [sys.executable, "-m", "llmetal", "serve", "-m", a.model, "-np", str(n_slots),
            "-c", str(a.ctx_size), "-t", str(a.threads), "--device", a.device]


def llama_server_argv(a, n_slots, path):
    from llmetal.models import resolve
    argv = [a.llama_server, "-m", str(resolve(a.model)), "-np", str(n_slots), "-c", str(a.ctx_size),
            "--no-kv-unified", "--no-cache-prompt", "--cache-ram", "0", "--no-webui"]
    if a.threads > 0:
        argv += ["-t", str(a.threads), "-tb", str(a.threads)]
    return argv + shlex.split(a.llama_args)


def measure(server, c, n_requests, max_tokens):
    """c clients, n_requests each one after another: (tokens, seconds, [ttft], median prompt tokens)."""
    with cf.ThreadPoolExecutor(c) as ex:
        ready = threading.Barrier(c)   # one client per thread, made before the clock starts
        list(ex.map(lambda _: (client(), ready.wait()), range(c)))
        t0 = time.perf_counter()
        res = list(ex.map(lambda i: one(server.base, i, max_tokens), range(c * n_requests)))
        dt = time.perf_counter() - t0
    for cl in CLIENTS:
        cl.close()
    CLIENTS.clear()
    out = (sum(r[0] for r in res), dt, [r[2] for r in res], statistics.median(r[1] for r in res))
    LOADS.append(os.getloadavg()[0])
    print(f"   {server.name}: {c} clients, {out[0]} tokens in {dt:.2f} s = {out[0] / dt:.1f} t/s "
          f"(load average {os.getloadavg()[0]:.2f})", file=sys.stderr, flush=True)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model", default="smollm2")
    ap.add_argument("--clients", default="1,2,4,8")
    ap.add_argument("--requests", type=int, default=2, help="requests per client")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("-t", "--threads", type=int, default=0)
    ap.add_argument("-c", "--ctx-size", type=int, default=4096,
                    help="total context of each server, split over -np = max(clients) slots")
    ap.add_argument("--device", default="cpu", help="llmetal's device")
    ap.add_argument("--llama-server", default=None, metavar="PATH",
                    help="also run llama.cpp's llama-server binary under the same load")
    ap.add_argument("--llama-args", default="", help="more arguments for llama-server (one string)")
    ap.add_argument("--rounds", type=int, default=1, help="times each server is measured (they alternate)")
    a = ap.parse_args()
    clients = [int(c) for c in a.clients.split(",")]
    n_slots = max(clients)
    sys.path.insert(0, os.path.join(REPO, "python"))
    env = dict(os.environ, PYTHONPATH=os.path.join(REPO, "python") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if a.llama_server:
        lib = os.path.dirname(os.path.abspath(a.llama_server))   # its shared libraries lie beside it
        llama_env = dict(os.environ, LD_LIBRARY_PATH=lib + os.pathsep + os.environ.get("LD_LIBRARY_PATH", ""))
    todo = [("llmetal", llmetal_argv(a, n_slots), env)]
    if a.llama_server:
        todo.append(("llama-server", llama_server_argv(a, n_slots, a.llama_server), llama_env))
    servers = []
    runs = {name: {c: [] for c in clients} for name, _, _ in todo}   # name -> clients -> rounds
    try:
        for name, argv, e in todo:
            servers.append(Server(name, argv, e))
        for s in servers:
            s.wait_healthy()
            one(s.base, 0, 4)       # warm-up: llmetal records its plans, llama-server its graphs
        for rnd in range(a.rounds):
            print(f"round {rnd + 1}/{a.rounds}", file=sys.stderr, flush=True)
            for c in clients:
                for s in servers:
                    runs[s.name][c].append(measure(s, c, a.requests, a.max_tokens))
    finally:
        for s in servers:
            s.stop()

    print(f"\n{a.model}, {a.threads or 'default'} threads, -np {n_slots} -c {a.ctx_size}, {a.requests} request(s) "
          f"per client of {a.max_tokens} tokens, {a.rounds} round(s), load average {min(LOADS):.2f}-"
          f"{max(LOADS):.2f}\n")
    print("| server | clients | tokens / round | prompt tokens | aggregate t/s best | median | vs 1 client "
          "(best) | TTFT median ms |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, by_c in runs.items():
        base = None
        for c in clients:
            rs = by_c[c]
            tps = [r[0] / r[1] for r in rs]
            ttft = statistics.median(t for r in rs for t in r[2])
            base = base or max(tps)
            print(f"| {name} | {c} | {rs[0][0]} | {rs[0][3]:.0f} | {max(tps):.1f} | "
                  f"{statistics.median(tps):.1f} | {max(tps) / base:.2f}x | {1000 * ttft:.0f} |")


if __name__ == "__main__":
    main()
