"""The host's share of a decode step on the CUDA device (or any device).

    python bench/cuda_host.py MODEL.gguf [--device cuda] [--plain]

Times 128 tokens of the recorded one-token plan three ways (best of 7 rounds, us a token):
  step         Model.decode_step: replay_token, then the logits downloaded (what generation does)
  replay+wait  replay_token, then wait() (no logits)
  GPU-bound    128 replay_token calls and one wait(): the launches queue up, so this is the
               device's own time a token, without the host in between
step minus GPU-bound is what the host adds per token. --plain downloads the logits into a
plain numpy array instead of the model's device.host_empty buffer (for comparing).
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import llmetal


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--plain", action="store_true", help="logits into np.empty, not host_empty")
    a = ap.parse_args()
    if a.tokens < 1:
        ap.error("--tokens must be at least 1")
    m = llmetal.load(a.model, device=a.device, n_ctx=1024, n_batch=512, n_out=1)
    plan = m.plan().plan
    ids = m.full["ids"].rows(0, 1)
    if a.plain:
        m._logits1 = np.empty(m.cfg.n_vocab, np.float32)
    for pos in range(16):   # warm-up (captures the graph)
        m.decode_step(1, pos)
    n = min(a.tokens, m.n_ctx)

    def best(f, reps=7):
        t = 1e9
        for _ in range(reps):
            t0 = time.perf_counter()
            f()
            t = min(t, time.perf_counter() - t0)
        return t / n * 1e6

    def step():
        for pos in range(n):
            m.decode_step(1, pos)

    def replay_wait():
        for pos in range(n):
            m.enc.replay_token(plan, ids, 1, pos)
            m.device.wait()

    def gpu_bound():
        for pos in range(n):
            m.enc.replay_token(plan, ids, 1, pos)
        m.device.wait()

    s, r, g = best(step), best(replay_wait), best(gpu_bound)
    print(f"{a.model}: us a token: step {s:.1f}  replay+wait {r:.1f}  GPU-bound {g:.1f}  "
          f"(host share {s - g:.1f})")


if __name__ == "__main__":
    main()
