"""Micro benchmark of the CPU matmul stage (not a test): GB/s of weights read and GFLOP/s.

    PYTHONPATH=python python bench/matmul_bench.py [--threads 2] [--repeats 5] [--simd best]

Shapes are weight matrices [N rows (outputs), K columns (inputs)] of real models:
576x1536 (SmolLM2-135M's ffn_down) and 2048x8192 (Llama-3.2-1B's ffn_down), in Q4_1,
Q8_0 and Q4_K, for M = 1 token (decode: a mat-vec, bound by memory bandwidth) and M = 64
(prefill: bound by arithmetic).

To measure memory and not cache, each case cycles over enough copies of the weight to
exceed the 32+ MB of last-level cache (at least 96 MB of weights in all); the matmuls are
recorded into one command list and committed together, so Python's per-call overhead is
out of the timing. Each figure is the best of --repeats runs (the machine is shared and
noisy, and the best run is the least disturbed one).
"""
import argparse
import os
import tempfile
import time

import numpy as np

from llmetal import _engine as E

TYPES = {"Q4_1": 3, "Q8_0": 8, "Q4_K": 12}
SHAPES = [(576, 1536), (2048, 8192)]


def bench(dev, wtype, N, K, M, repeats, min_bytes=96 << 20, mapped=False):
    block, block_bytes = E.type_block(wtype)
    row_bytes = K // block * block_bytes
    w_bytes = N * row_bytes
    copies = max(1, -(-min_bytes // w_bytes))
    rng = np.random.default_rng(0)
    pool = E.BufferPool(dev)
    for c in range(copies if not mapped else 0):
        pool.declare(f"W{c}", wtype, [N, K])
    pool.declare("x", 0, [M, K])
    pool.declare("y", 0, [M, N])
    pool.reserve()
    weights = []
    tmp = tempfile.TemporaryDirectory() if mapped else None
    for c in range(copies):
        raw = rng.integers(0, 256, (N, row_bytes), dtype=np.uint8)
        # sane fp16 scales (d, and m / dmin) at the front of each block: values do not change
        # the speed, but NaN / inf scales would make the outputs meaningless
        raw = raw.reshape(N, K // block, block_bytes)
        raw[:, :, 0:4] = np.frombuffer(np.array([0.01, 0.001], np.float16).tobytes(), np.uint8)
        if mapped:   # as a model's weights are: a read-only file mapping (the CPU may repack)
            path = os.path.join(tmp.name, f"W{c}.bin")
            raw.tofile(path)
            weights.append(E.Tensor(dev.map_file(path), 0, wtype, [N, K]))
        else:
            pool.get(f"W{c}").upload(raw.reshape(N, row_bytes))
            weights.append(pool.get(f"W{c}"))
    x, y = pool.get("x"), pool.get("y")
    x.upload(rng.standard_normal((M, K)).astype(np.float32))
    # calls per run: sweep all copies at least twice, and at least ~50 MFLOP of work
    calls = max(2 * copies, int(5e7 // (2 * M * N * K)) + 1)
    enc = E.Encoder(dev, eager=False)
    best = float("inf")
    for r in range(repeats + 1):  # the first run warms up (page faults, thread start)
        for i in range(calls):
            enc.matmul(weights[i % copies], x, y)
        t0 = time.perf_counter()
        enc.commit()
        enc.wait()
        dt = (time.perf_counter() - t0) / calls
        if r > 0:
            best = min(best, dt)
    assert np.isfinite(y.to_numpy()).all()
    return best, w_bytes


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--simd", default="best", help="scalar, avx2, avx512, neon or best")
    ap.add_argument("--types", default=",".join(TYPES))
    ap.add_argument("--tokens", default="1,64")
    ap.add_argument("--mapped", action="store_true",
                    help="weights in mapped files, as a model's (the CPU device may repack them at first use)")
    args = ap.parse_args()
    if hasattr(E, "force_simd"):
        E.force_simd(args.simd)
    level = E.simd_level() if hasattr(E, "simd_level") else "?"
    dev = E.cpu_device(n_threads=args.threads)
    print(f"SIMD {level}, {args.threads} threads, best of {args.repeats}")
    print(f"{'type':5} {'N x K':>11} {'M':>3} {'us/call':>9} {'GB/s':>7} {'GFLOP/s':>8}")
    for name in args.types.split(","):
        for N, K in SHAPES:
            for M in (int(m) for m in args.tokens.split(",")):
                dt, wb = bench(dev, TYPES[name], N, K, M, args.repeats, mapped=args.mapped)
                print(f"{name:5} {f'{N}x{K}':>11} {M:>3} {dt * 1e6:9.1f} {wb / dt / 1e9:7.2f} "
                      f"{2 * M * N * K / dt / 1e9:8.2f}", flush=True)


if __name__ == "__main__":
    main()
