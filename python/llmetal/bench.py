"""`python -m llmetal bench`: prompt processing (ppN) and token generation (tgN) speed,
printed as llama-bench's markdown table so the numbers paste next to llama.cpp's.

As llama-bench does, tokenization and sampling are excluded. ppN runs N random tokens through
one batched prefill (in n_batch chunks) into a fresh context; tgN runs N decode steps from an
empty context through the same replayed plan `generate` uses -- the KV cache growing and the
last token's logits computed and downloaded each step. With `-d N` (llama-bench's depth) N
random tokens are prefilled into the cache, untimed, before each timed run. Each test runs once
to warm up, then `repetitions` times; t/s is reported as mean +- standard deviation.
"""
from __future__ import annotations

import json
import statistics
import time

import numpy as np

from gguf import Keys

from . import _engine as E
from .generate import peak_memory_bytes
from .gguf_file import file_type_name

def _model_label(model) -> tuple[str, int, int]:
    """llama-bench's model column: architecture, size label and the file type
    (`general.file_type`, e.g. Q4_K_M; the dominant weight type when the file names none)."""
    md = model.gguf.metadata
    size_label = md.get(Keys.General.SIZE_LABEL) or "?B"
    ftype = file_type_name(md.get(Keys.General.FILE_TYPE))
    if ftype is None:
        counts = {}
        for t in model.gguf.tensors.values():
            if t.ggml_type != E.F32:
                counts[t.ggml_type] = counts.get(t.ggml_type, 0) + t.n_elements
        main = max(counts, key=counts.get, default=E.F32)
        ftype = E.TYPE_NAMES.get(main, str(main))
    n_bytes = sum(t.nbytes for t in model.gguf.tensors.values())
    n_params = sum(t.n_elements for t in model.gguf.tensors.values())
    return f"{model.cfg.arch} {size_label} {ftype}", n_bytes, n_params


def _fill(model, depth_tokens):
    """Put `depth` tokens in the KV cache (untimed), as llama-bench's -d does."""
    if depth_tokens:
        model.prefill(depth_tokens, 0)


def _time_pp(model, tokens, depth_tokens) -> float:
    _fill(model, depth_tokens)
    t0 = time.perf_counter()
    model.prefill(tokens, len(depth_tokens))
    return time.perf_counter() - t0


def _time_tg(model, n, token, depth_tokens) -> float:
    model.plan()
    _fill(model, depth_tokens)
    d = len(depth_tokens)
    t0 = time.perf_counter()
    for pos in range(d, d + n):
        model.decode_step(token, pos)
    return time.perf_counter() - t0


def run_bench(model, n_prompt=512, n_gen=128, repetitions=5, n_threads=0, seed=1234, depth=0):
    """ppN and tgN rows (llama-bench's tests); with depth, N tokens are in the cache first."""
    if depth < 0:
        raise ValueError("the depth must be >= 0")
    if depth + max(n_prompt, n_gen) > model.n_ctx:
        raise ValueError(f"bench sizes (depth {depth} + {max(n_prompt, n_gen)}) exceed n_ctx {model.n_ctx}")
    rng = np.random.default_rng(seed)
    label, n_bytes, n_params = _model_label(model)
    depth_tokens = rng.integers(0, model.cfg.n_vocab, size=depth).tolist()
    at = f" @ d{depth}" if depth else ""
    results = []
    if n_prompt > 0:
        tokens = rng.integers(0, model.cfg.n_vocab, size=n_prompt).tolist()
        _time_pp(model, tokens, depth_tokens)  # warm-up
        ts = [n_prompt / _time_pp(model, tokens, depth_tokens) for _ in range(repetitions)]
        results.append({"test": f"pp{n_prompt}{at}", "n_prompt": n_prompt, "n_gen": 0, "n_depth": depth,
                        "samples_ts": ts})
    if n_gen > 0:
        token = int(rng.integers(0, model.cfg.n_vocab))
        _time_tg(model, min(n_gen, 16), token, [])  # warm-up (records the plan)
        ts = [n_gen / _time_tg(model, n_gen, token, depth_tokens) for _ in range(repetitions)]
        results.append({"test": f"tg{n_gen}{at}", "n_prompt": 0, "n_gen": n_gen, "n_depth": depth,
                        "samples_ts": ts})
    for r in results:
        r["avg_ts"] = statistics.fmean(r["samples_ts"])
        r["stddev_ts"] = statistics.stdev(r["samples_ts"]) if len(r["samples_ts"]) > 1 else 0.0
        r.update(model=label, model_filename=str(model.path), model_size=n_bytes, model_n_params=n_params,
                 backend=model.device_name.upper(), n_threads=n_threads, n_batch=model.n_batch,
                 peak_mem_bytes=peak_memory_bytes())
    return results


def format_markdown(results) -> str:
    lines = ["| model | size | params | backend | threads | test | t/s |",
             "| ------------------------------ | ---------: | ---------: | ---------- | ------: | --------------: | -------------------: |"]
    for r in results:
        size = f"{r['model_size'] / 2**20:.2f} MiB"
        p = r["model_n_params"]
        params = f"{p / 1e9:.2f} B" if p >= 1e9 else f"{p / 1e6:.2f} M"
        lines.append(f"| {r['model']:<30} | {size:>10} | {params:>10} | {r['backend']:<10} | "
                     f"{r['n_threads']:>7} | {r['test']:>15} | {r['avg_ts']:>12.2f} ± {r['stddev_ts']:.2f} |")
    return "\n".join(lines)


def format_json(results) -> str:
    return json.dumps(results, indent=2)
