"""The decode mat-vec alone: kernel_mmvq's GPU time and bandwidth per weight type and shape.

    python bench/cuda_mv_bench.py [--types Q4_0,Q8_0,...] [--reps 30]

For each weight type and each matrix shape of a Llama-3-8B layer (plus the output projection
of a 49152 vocabulary), runs `enc.matmul` for one token on the CUDA device in eager mode and
reads every kernel's GPU start and end through torch.profiler (CUPTI). The weights are random
bytes, several copies of the matrix laid end to end (together over 200 MB, four times the L2),
and consecutive calls take consecutive copies, so every call streams its weights from DRAM.
Prints the median kernel_mmvq time, the weight bytes over that time, and that as a share of a
measured device-to-device copy (bytes read + written over time, 1 GiB through torch).
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from llmetal import _engine as E

from cuda_bench import copy_roof_gbs   # bench/ is on sys.path when this script runs

TYPES = {"Q4_0": 2, "Q4_1": 3, "Q5_0": 6, "Q5_1": 7, "Q8_0": 8, "Q4_K": 12, "Q5_K": 13, "Q6_K": 14}
SHAPES = [(4096, 4096, "q/o"), (1024, 4096, "k/v"), (14336, 4096, "gate/up"), (4096, 14336, "down"),
          (49152, 4096, "output")]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--types", default="Q4_0,Q8_0,Q4_1,Q5_0,Q4_K,Q6_K")
    ap.add_argument("--reps", type=int, default=30)
    a = ap.parse_args()
    torch.cuda.init()
    roof = copy_roof_gbs()
    print(f"copy roof {roof:.0f} GB/s (device-to-device, read + write)")
    d = E.cuda_device(0)
    rng = np.random.default_rng(0)
    print(f"{'type':<5} {'matrix':<8} {'N x K':>12} {'MB':>7} {'us':>8} {'GB/s':>7} {'%roof':>6}")
    for tn in a.types.split(","):
        t = TYPES[tn]
        qk, bb = E.type_block(t)
        for N, K, what in SHAPES:
            mb = N * K // qk * bb
            R = max(2, -(-200_000_000 // mb))   # copies end to end: > 200 MB in all
            pool = E.BufferPool(d)
            pool.declare("W", t, [N * R, K]); pool.declare("x", 0, [1, K]); pool.declare("y", 0, [1, N])
            pool.reserve()
            pool.get("W").upload(rng.integers(0, 256, (N * R, K // qk * bb), dtype=np.uint8))
            pool.get("x").upload(rng.standard_normal((1, K)).astype(np.float32))
            W, x, y = pool.get("W"), pool.get("x"), pool.get("y")
            views = [W.rows(i * N, (i + 1) * N) for i in range(R)]
            d.set_step(0, 1)
            enc = E.Encoder(d, eager=True)
            for i in range(3):
                enc.matmul(views[i % R], x, y)
            enc.wait()
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for i in range(a.reps):
                    enc.matmul(views[i % R], x, y)
                enc.wait()
            us = [e.time_range.elapsed_us() for e in prof.events()
                  if e.device_type == torch.autograd.DeviceType.CUDA and "kernel_mmvq" in e.name]
            if not us:
                print(f"{tn:<5} {what:<8} no kernel_mmvq launches seen")
                continue
            med = float(np.median(us))
            gbs = mb / med / 1e3
            print(f"{tn:<5} {what:<8} {N:>6}x{K:<5} {mb / 1e6:7.1f} {med:8.2f} {gbs:7.0f} {100 * gbs / roof:5.1f}%")
            del views, W, x, y, enc, pool


if __name__ == "__main__":
    main()
