"""Where a decode step's time goes on the CUDA device: the kernels of N replayed tokens.

    python bench/cuda_profile.py MODEL.gguf [--tokens 10] [--pos 520] [--trace out.json]

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
from llmetal.generate import Decoder


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--tokens", type=int, default=10)
    ap.add_argument("--pos", type=int, default=520)
    ap.add_argument("--trace", default=None)
    a = ap.parse_args()
    torch.cuda.init()
    m = llmetal.load(a.model, device="cuda", n_ctx=1024, n_batch=512, n_out=1)
    rng = np.random.default_rng(0)
    m.prefill(rng.integers(0, m.cfg.n_vocab, a.pos).tolist())
    dec = Decoder(m)
    plan = dec.record()
    ids = m.full["ids"].rows(0, 1)
    for i in range(4):   # graph capture and warm-up
        m.enc.replay_token(plan, ids, 1 + i, a.pos + i)
    m.device.wait()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for i in range(a.tokens):
            m.enc.replay_token(plan, ids, 1 + i, a.pos + 4 + i)
        m.device.wait()
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
    span = (kern[-1].time_range.end - kern[0].time_range.start) / a.tokens
    busy = sum(tot.values()) / a.tokens
    gaps = [max(0.0, kern[i + 1].time_range.start - kern[i].time_range.end) for i in range(len(kern) - 1)]
    print(f"{os.path.basename(a.model)} fuse={os.environ.get('LLMETAL_CUDA_FUSE', '1')} pos {a.pos}: "
          f"{len(kern) / a.tokens:.0f} kernels/token, GPU span {span:.0f} us/token, kernels busy {busy:.0f} us, "
          f"median gap {np.median(gaps):.2f} us")
    print(f"  {'kernel':<28} {'n/tok':>6} {'us/tok':>8} {'us each':>8} {'share':>6}")
    for name in sorted(tot, key=tot.get, reverse=True):
        print(f"  {name:<28} {cnt[name] / a.tokens:6.0f} {tot[name] / a.tokens:8.1f} "
              f"{tot[name] / cnt[name]:8.2f} {100 * tot[name] / a.tokens / span:5.1f}%")


if __name__ == "__main__":
    main()
