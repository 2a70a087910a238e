"""Tokenizer speed: encode 1 MB of mixed English and code, llmetal vs llama.cpp's llama-tokenize.

    PYTHONPATH=python python bench/tokenizer_bench.py [-m smollm2] [--bin path/to/llama-tokenize]

The text is made deterministically (English prose, Python/C/SQL code, some non-ASCII) and
written to a file that both tokenizers read. llmetal: median of --reps encodes (special
parsing on, as the CLI does), vocabulary load timed separately. llama-tokenize: wall time of
`llama-tokenize -m M -f FILE --ids --no-escape` minus the wall time of the same command on
an empty file (its vocabulary load), median of --reps runs. Both token counts are printed
and must agree.
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))

PROSE = ("The committee reviewed the proposal on Tuesday, and it's clear they'd prefer a smaller budget. "
         "Revenue grew 12.5% year-over-year to $3,456,789; analysts expected 11%. \"We're cautious,\" the "
         "CFO said. Meanwhile, naïve café owners in Zürich reported 1,024 visitors per day.\n")
CODE = ("def parse(line: str) -> dict:\n    key, _, value = line.partition('=')\n"
        "    return {key.strip(): int(value) if value.isdigit() else value.strip()}\n\n"
        "for (int i = 0; i < n; ++i) { sum += a[i] * b[i]; }  // dot product\n"
        "SELECT name, COUNT(*) FROM orders GROUP BY name HAVING COUNT(*) > 10;\n")


def make_text(n_bytes: int = 1 << 20, seed: int = 0) -> str:
    rng = random.Random(seed)
    parts, size = [], 0
    while size < n_bytes:
        p = PROSE if rng.random() < 0.6 else CODE
        parts.append(p)
        size += len(p.encode())
    return "".join(parts)


def time_llama(binary: str, model: str, path: str, reps: int) -> tuple[float, float, int]:
    def run(p):
        t = time.perf_counter()
        out = subprocess.run([binary, "-m", model, "-f", p, "--ids", "--no-escape", "--log-disable"],
                             capture_output=True, check=True).stdout
        return time.perf_counter() - t, out
    with tempfile.NamedTemporaryFile(delete=False) as f:
        empty = f.name
    try:
        load = statistics.median(run(empty)[0] for _ in range(reps))
        runs = [run(path) for _ in range(reps)]
    finally:
        os.unlink(empty)
    total = statistics.median(t for t, _ in runs)
    n = runs[0][1].count(b",") + 1
    return total, load, n


def main(argv=None):
    from llmetal.models import resolve
    from llmetal.tokenizer import Tokenizer
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-m", "--model", default="smollm2")
    ap.add_argument("--bin", default=os.path.join(os.environ.get("LLAMA_ORACLE_BIN", ""), "llama-tokenize"))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--size", type=int, default=1 << 20)
    args = ap.parse_args(argv)
    model = str(resolve(args.model))
    text = make_text(args.size)
    data = text.encode()
    with tempfile.NamedTemporaryFile(delete=False, suffix=".txt") as f:
        f.write(data)
        path = f.name
    try:
        t = time.perf_counter()
        tok = Tokenizer.from_gguf(model)
        t_load = time.perf_counter() - t
        times, ids = [], None
        for _ in range(args.reps):
            t = time.perf_counter()
            ids = tok.encode(data, parse_special=True)
            times.append(time.perf_counter() - t)
        t_ours = statistics.median(times)
        print(f"text: {len(data)} bytes, model {os.path.basename(model)}")
        print(f"llmetal        encode {t_ours * 1000:8.1f} ms  ({len(data) / t_ours / 1e6:.2f} MB/s), "
              f"{len(ids)} tokens; vocabulary load {t_load * 1000:.0f} ms")
        if os.path.exists(args.bin):
            total, load, n = time_llama(args.bin, model, path, args.reps)
            enc = total - load
            print(f"llama-tokenize encode {enc * 1000:8.1f} ms  ({len(data) / enc / 1e6:.2f} MB/s), "
                  f"{n} tokens; whole command {total * 1000:.0f} ms, of which load {load * 1000:.0f} ms")
            print(f"ratio llmetal / llama-tokenize (encode only): {t_ours / enc:.2f}")
            if n != len(ids):
                print("WARNING: token counts differ", file=sys.stderr)
        else:
            print(f"(llama-tokenize not found at {args.bin!r}; pass --bin)")
    finally:
        os.unlink(path)


if __name__ == "__main__":
    main()
