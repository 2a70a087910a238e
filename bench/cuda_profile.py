"""Where a decode step's time goes on the CUDA device: the kernels of N replayed tokens.

    python bench/cuda_profile.py MODEL.gguf [--tokens 10] [--pos 520] [--trace out.json]
    python bench/cuda_profile.py MODEL.gguf --prefill 512      # one 512-token prompt instead
    python bench/cuda_profile.py MODEL.gguf --each 20          # and the first 20 kernels in order

Replays the recorded one-token plan (one CUDA graph launch per token) under torch.profiler,
which records every kernel the graph runs through CUPTI with its real start and end on the
GPU. Prints, per kernel name: launches per token, GPU microseconds per token, and the share
of the step; then the step's wall time on the GPU (first kernel start to last kernel end)
and the idle gaps between consecutive kernels. Set LLMETAL_CUDA_FUSE=0 to profile the split
stages.
"""
from __future__ import annotations

import argparse
import os
from collections import defaultdict

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

import llmetal


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--tokens", type=int, default=10)
    ap.add_argument("--pos", type=int, default=520)
    ap.add_argument("--ctx", type=int, default=0,
                    help="context size (default: 1024, or enough for --pos / --prefill; the decode "
                         "attention's splits are planned from it, as in `bench -d`)")
    ap.add_argument("--trace", default=None)
    ap.add_argument("--prefill", type=int, default=0, help="profile one prompt of this many tokens")
    ap.add_argument("--each", type=int, default=0,
                    help="also list the first N kernels of the last run in order, with their GPU times")
    a = ap.parse_args()
    torch.cuda.init()
    n_ctx = a.ctx or max(1024, a.prefill, a.pos + 4 + a.tokens + 8)
    m = llmetal.load(a.model, device="cuda", n_ctx=n_ctx, n_batch=512, n_out=1)
    rng = np.random.default_rng(0)
    if a.prefill:
        prompt = rng.integers(0, m.cfg.n_vocab, a.prefill).tolist()
        m.prefill(prompt)   # warm-up: scratch, module load
        m.device.wait()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for i in range(a.tokens):
                m.prefill(prompt)
            m.device.wait()
        report(prof, a, f"prefill {a.prefill}", a.prefill)
        return
    m.prefill(rng.integers(0, m.cfg.n_vocab, a.pos).tolist())
    plan = m.plan().plan
    ids = m.full["ids"].rows(0, 1)
    for i in range(4):   # graph capture and warm-up
        m.enc.replay_token(plan, ids, 1 + i, a.pos + i)
    m.device.wait()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for i in range(a.tokens):
            m.enc.replay_token(plan, ids, 1 + i, a.pos + 4 + i)
        m.device.wait()
    report(prof, a, f"pos {a.pos}", 1)


def report(prof, a, what, per):
    """Per kernel: launches, GPU us and share, per token (per prompt token for prefill)."""
    if a.trace:
        prof.export_chrome_trace(a.trace)
    kern = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    kern = [e for e in kern if "Memcpy" not in e.name and "Memset" not in e.name]
    kern.sort(key=lambda e: e.time_range.start)
    tot = defaultdict(float)
    cnt = defaultdict(int)
    for e in kern:
        name = e.name.split("(")[0].split("<")[0].replace("void ", "").replace("llmetal_cuda::", "")
        tot[name] += e.time_range.elapsed_us()
        cnt[name] += 1
    n = a.tokens   # replays (decode tokens, or prompts)
    span = (kern[-1].time_range.end - kern[0].time_range.start) / n
    busy = sum(tot.values()) / n
    gaps = [max(0.0, kern[i + 1].time_range.start - kern[i].time_range.end) for i in range(len(kern) - 1)]
    print(f"{os.path.basename(a.model)} fuse={os.environ.get('LLMETAL_CUDA_FUSE', '1')} "
          f"pdl={os.environ.get('LLMETAL_CUDA_PDL', '1')} {what}: {len(kern) / n:.0f} kernels/run, "
          f"GPU span {span:.0f} us/run ({per * 1e6 / span:.0f} t/s), kernels busy {busy:.0f} us, "
          f"median gap {np.median(gaps):.2f} us")
    print(f"  {'kernel':<28} {'n/run':>6} {'us/run':>8} {'us each':>8} {'share':>6}")
    for name in sorted(tot, key=tot.get, reverse=True):
        print(f"  {name:<28} {cnt[name] / n:6.0f} {tot[name] / n:8.1f} "
              f"{tot[name] / cnt[name]:8.2f} {100 * tot[name] / n / span:5.1f}%")
    if a.each:
        last = kern[-len(kern) // n:]   # the last run's kernels
        t0 = last[0].time_range.start
        print(f"  first {a.each} kernels of the last run: start (us from the first), GPU us, name")
        for e in last[:a.each]:
            name = e.name.split("(")[0].replace("void ", "").replace("llmetal_cuda::", "")
            print(f"  {e.time_range.start - t0:9.2f} {e.time_range.elapsed_us():8.2f}  {name}")


if __name__ == "__main__":
    main()
