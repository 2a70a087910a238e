#!/usr/bin/env python3
"""How far one perplexity figure moves by chance: llmetal and llama-perplexity on equivalent copies of a model.

    python scripts/oracle/perplexity_spread.py qwen2.5-coder-0.5b [--seeds 4] [--llama fa_off|default|none]

Both engines quantize the activations of quantized matmuls to 8 bits. Which way each value
rounds depends on every bit before it, so any change of 1e-6 anywhere re-draws the rounding of
the whole network: one chunk's perplexity then moves by about 1%, a 12-chunk figure by about
0.15%. A single run of each engine is one draw. This script makes the draws: copy s (s = 1..N)
of the model has `blk.0.attn_norm.weight` (an F32 tensor) multiplied by 1 + 1e-6 * N(0, 1)
(seed s), a change far below the model's own quantization; copy 0 is the file itself. Each copy
runs through `python -m llmetal perplexity` and llama-perplexity with the settings of
make_perplexity_fixtures.py (GPL-3, -c 512, --chunks 12, -t 2); the script prints every final
estimate and, per engine, their mean and standard deviation. Compare the means (and the float64
model's figure, `python -m llmetal perplexity --reference`), not two single runs.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

import oracle_common as oc
from make_perplexity_fixtures import N_CHUNKS, N_CTX, RUNS, TEXT, THREADS

TENSOR, EPS = "blk.0.attn_norm.weight", 1e-6


def perturbed_copy(src: Path, dst: Path, seed: int) -> None:
    """dst = src with TENSOR multiplied by 1 + EPS * N(0, 1) (float64 product rounded to f32)."""
    sys.path.insert(0, str(oc.REPO / "python"))
    from llmetal.gguf_file import GGUFFile
    t = GGUFFile(src).tensors[TENSOR]
    if t.ggml_type != 0:
        sys.exit(f"error: {src.name}: {TENSOR} is not F32")
    shutil.copyfile(src, dst)
    n = int(np.prod(t.shape))
    w = np.memmap(dst, dtype=np.float32, mode="r+", offset=t.offset, shape=(n,))
    w[:] = (w.astype(np.float64) * (1 + EPS * np.random.default_rng(seed).standard_normal(n))).astype(np.float32)
    w.flush()


def final_ppl(cmd) -> float:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(oc.REPO / "python"), os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=oc.REPO, env=env)
    m = re.search(r"Final estimate: PPL = (\d+\.\d+)", r.stdout + r.stderr)
    if r.returncode != 0 or not m:
        sys.exit(f"error: {' '.join(map(str, cmd))} failed:\n{(r.stdout + r.stderr)[-2000:]}")
    return float(m.group(1))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--seeds", type=int, default=4, help="perturbed copies besides the file itself")
    ap.add_argument("--llama", choices=[*RUNS, "none"], default="fa_off")
    a = ap.parse_args(argv)
    src = oc.model_path(a.model)
    common = ["-f", TEXT, "-c", str(N_CTX), "--chunks", str(N_CHUNKS), "-t", str(THREADS)]
    res: dict[str, list[float]] = {"llmetal": [], "llama.cpp": []}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(a.seeds + 1):
            path = src
            if seed:
                path = Path(tmp) / src.name
                perturbed_copy(src, path, seed)
            res["llmetal"].append(final_ppl([sys.executable, "-m", "llmetal", "perplexity", "-m", str(path), *common]))
            line = f"copy {seed}: llmetal {res['llmetal'][-1]:.4f}"
            if a.llama != "none":
                res["llama.cpp"].append(final_ppl([str(oc.ORACLE_DIR / "bin" / "llama-perplexity"), "-m", str(path),
                                                   *common, *RUNS[a.llama]]))
                line += f"  llama.cpp ({a.llama}) {res['llama.cpp'][-1]:.4f}"
            print(line, flush=True)
    for engine, v in res.items():
        if len(v) > 1:
            print(f"{engine:10s} mean {statistics.mean(v):.4f}  std {statistics.stdev(v):.4f}  ({len(v)} runs)")


if __name__ == "__main__":
    main()
