#!/usr/bin/env python3
"""Per-token dispatches, barriers and memory traffic of the Metal device's decode step,
counted by the emulator (metal-emu's counting mode: cpp/metal_emu/runtime.h).

    python bench/metal_traffic.py [--models smollm2,qwen2.5-coder-0.5b] [--ctx 512,4096]
                                  [--pos 64] [--layers qwen2.5-coder-0.5b=4] [--kernels] [--json F]

For each model and context size: load on metal-emu, prefill `pos` fixed token ids, decode one
token (records the plan), then decode the token at position `pos` again with counting on, and
report what that one step did: command buffers, dispatches, barriers, and the bytes its kernels'
loads and stores moved in device memory (every access counted, no cache model), threadgroup
memory and constant memory (the kargs structs), next to the bytes of the weights a decode step
must read (every weight tensor, the token embedding only when it is also the output matrix).
`--layers NAME=N` cuts a model to its first N layers first (scripts/cut_gguf.py): the emulator
is slow, and a cut model's layers are the full model's. `--kernels` adds a per-kernel table.

No speed is measured here; the GPU's time is not the emulator's. The counts are the numbers
that speed work on the Metal kernels can be checked against without a Mac.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import gguf
import numpy as np

import llmetal
from llmetal import _engine as E
from llmetal import models

ROOT = Path(__file__).resolve().parent.parent


def weight_bytes(path: str) -> int:
    """Bytes of the weights one decode step reads: every tensor but the token embedding (one
    row of it is read), which counts only when no separate output matrix exists (tied)."""
    r = gguf.GGUFReader(path)
    names = {t.name: int(t.n_bytes) for t in r.tensors}
    total = sum(b for n, b in names.items() if n != "token_embd.weight")
    if "output.weight" not in names:
        total += names["token_embd.weight"]
    return total


def cut(src: str, layers: int, tmp: Path) -> str:
    out = tmp / f"{Path(src).stem}-{layers}l.gguf"
    subprocess.run([sys.executable, str(ROOT / "scripts/cut_gguf.py"), src, str(out), "--layers", str(layers)],
                   check=True, capture_output=True)
    return str(out)


def family(kernel: str) -> str:
    return kernel.removeprefix("kernel_")


def one_step(path: str, n_ctx: int, pos: int) -> dict:
    m = llmetal.load(path, device="metal-emu", n_ctx=n_ctx, n_batch=64, n_out=1)
    ids = [(17 * i + 100) % m.cfg.n_vocab for i in range(pos)]
    m.prefill(ids)
    m.decode_step(42, pos)                       # records the plan (not counted)
    c0 = E.metal_counters(m.device)
    was = E.metal_emu_counting(True)
    E.metal_emu_traffic()                        # drop anything recorded before
    try:
        logits = m.decode_step(42, pos).copy()
    finally:
        E.metal_emu_counting(was)
    recs = E.metal_emu_traffic()
    c1 = E.metal_counters(m.device)
    assert np.isfinite(logits).all(), "non-finite logits"
    tot = defaultdict(int)
    per = defaultdict(lambda: defaultdict(int))
    for r in recs:
        for k in ("device_read", "device_written", "threadgroup_read", "threadgroup_written", "constant_read"):
            tot[k] += r[k]
            per[family(r["kernel"])][k] += r[k]
        per[family(r["kernel"])]["dispatches"] += 1
    return {
        "n_layer": m.cfg.n_layer,
        "command_buffers": c1["command_buffers"] - c0["command_buffers"],
        "dispatches": c1["dispatches"] - c0["dispatches"],
        "barriers": c1["barriers"] - c0["barriers"],
        "records": len(recs),
        **tot,
        "kernels": {k: dict(v) for k, v in sorted(per.items())},
    }


def mb(x: int) -> str:
    return f"{x / 1e6:,.1f}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="smollm2,qwen2.5-coder-0.5b")
    ap.add_argument("--ctx", default="512,4096")
    ap.add_argument("--pos", type=int, default=64, help="the decode step's position (prefilled before it)")
    ap.add_argument("--layers", action="append", default=["qwen2.5-coder-0.5b=4"],
                    help="NAME=N: cut that model to its first N layers (N=0: the whole model)")
    ap.add_argument("--kernels", action="store_true", help="a per-kernel table too")
    ap.add_argument("--json", help="write the figures to this file")
    a = ap.parse_args(argv)
    if not E.build_info().get("metal_emu_counting"):
        sys.exit("this build has no counted build of the Metal kernels (metal-emu counting mode)")
    cuts = dict(x.split("=") for x in a.layers)
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.models.split(","):
            path = str(models.resolve(name))
            if int(cuts.get(name, 0)) > 0:
                path = cut(path, int(cuts[name]), Path(tmp))
            wb = weight_bytes(path)
            for n_ctx in (int(c) for c in a.ctx.split(",")):
                r = one_step(path, n_ctx, a.pos)
                r.update(model=name, layers=r["n_layer"], n_ctx=n_ctx, pos=a.pos, weight_bytes=wb)
                out.append(r)
                print(f"{name} ({r['layers']} layers) n_ctx {n_ctx} pos {a.pos}: {r['dispatches']} dispatches, "
                      f"{r['barriers']} barriers, {r['command_buffers']} command buffer(s); device "
                      f"{mb(r['device_read'])} MB read + {mb(r['device_written'])} MB written = "
                      f"{(r['device_read'] + r['device_written']) / wb:.2f}x the weights ({mb(wb)} MB); "
                      f"threadgroup {mb(r['threadgroup_read'] + r['threadgroup_written'])} MB; "
                      f"constant {mb(r['constant_read'])} MB", flush=True)
    print()
    print("| model | layers | n_ctx | dispatches | barriers | device read MB | device written MB "
          "| / weight bytes | threadgroup MB | constant MB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in out:
        print(f"| {r['model']} | {r['layers']} | {r['n_ctx']} | {r['dispatches']} | {r['barriers']} | "
              f"{mb(r['device_read'])} | {mb(r['device_written'])} | "
              f"{(r['device_read'] + r['device_written']) / r['weight_bytes']:.2f}x | "
              f"{mb(r['threadgroup_read'] + r['threadgroup_written'])} | {mb(r['constant_read'])} |")
    if a.kernels:
        for r in out:
            print(f"\n{r['model']} n_ctx {r['n_ctx']}:\n")
            print("| kernel | dispatches | device read MB | device written MB | threadgroup MB |")
            print("|---|---:|---:|---:|---:|")
            for k, v in r["kernels"].items():
                print(f"| {k} | {v['dispatches']} | {mb(v.get('device_read', 0))} | "
                      f"{mb(v.get('device_written', 0))} | "
                      f"{mb(v.get('threadgroup_read', 0) + v.get('threadgroup_written', 0))} |")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
