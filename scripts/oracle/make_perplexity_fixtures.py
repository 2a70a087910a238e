#!/usr/bin/env python3
"""Write tests/fixtures/llamacpp_perplexity_{model}.json: llama-perplexity's figures on the GPL-3 text.

    python scripts/oracle/make_perplexity_fixtures.py [smollm2] [gemma3] [qwen2.5-coder-0.5b]

Runs the llama-perplexity binary that scripts/oracle/build_llamacpp.sh built, twice:

    llama-perplexity -m MODEL -f /usr/share/common-licenses/GPL-3 -c 512 --chunks 12 -t 2
    llama-perplexity -m MODEL -f /usr/share/common-licenses/GPL-3 -c 512 --chunks 12 -t 2 -fa off -b 512

The first is llama.cpp's default ("default": -b 2048, so 4 chunks run together as 4 sequences;
flash attention "auto", which is on for the CPU); the second ("fa_off") runs one chunk at a time
without flash attention, as llmetal computes attention (f32 softmax over f16 K/V). The two are
equally valid runs of the same model; on SmolLM2 their first chunk differs by 1.7%, their
12-chunk figure by 0.05%. For each run the fixture keeps what llama-perplexity printed: the
running estimate after every chunk ([1]x,[2]y,...), the final estimate and its +/- error, and
the provenance (command, llama.cpp commit, model and text sha256).
tests/test_perplexity_llamacpp.py compares `python -m llmetal perplexity` with it.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import oracle_common as oc

TEXT = "/usr/share/common-licenses/GPL-3"   # Debian's base-files package: 35 KB of English
N_CTX, N_CHUNKS, THREADS = 512, 12, 2


RUNS = {"default": [], "fa_off": ["-fa", "off", "-b", "512"]}


def run_once(binary, model, extra) -> dict:
    cmd = [str(binary), "-m", str(model), "-f", TEXT, "-c", str(N_CTX), "--chunks", str(N_CHUNKS),
           "-t", str(THREADS), *extra]
    t0 = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"error: llama-perplexity failed ({r.returncode}):\n{r.stderr[-3000:]}")
    out = r.stdout + r.stderr
    running = [float(v) for v in re.findall(r"\[\d+\](\d+\.\d+),", out)]
    final = re.search(r"Final estimate: PPL = (\d+\.\d+) \+/- (\d+\.\d+)", out)
    info = re.search(r"calculating perplexity over (\d+) chunks, n_ctx=(\d+), batch_size=(\d+), n_seq=(\d+)", out)
    if len(running) != N_CHUNKS or not final or not info:
        sys.exit(f"error: could not parse llama-perplexity's output:\n{out[-3000:]}")
    return {
        "command": " ".join(["llama-perplexity"] + cmd[1:]).replace(str(model), model.name),
        "n_chunks": int(info.group(1)),
        "batch_size": int(info.group(3)),
        "n_seq": int(info.group(4)),
        "running": running,
        "ppl": float(final.group(1)),
        "error": float(final.group(2)),
        "seconds": round(time.time() - t0, 1),
    }


def run(name: str) -> dict:
    binary = oc.ORACLE_DIR / "bin" / "llama-perplexity"
    if not binary.exists():
        sys.exit(f"error: {binary} not found; run scripts/oracle/build_llamacpp.sh first")
    model = oc.model_path(name)
    commit = "unknown"
    try:
        commit = subprocess.run(["git", "-C", str(oc.LLAMA_SRC), "rev-parse", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
    except Exception:
        pass
    return {
        "what": "llama-perplexity on the GPL-3 text (running estimate per chunk, final estimate +/- error)",
        "model": name,
        "model_file": model.name,
        "model_sha256": oc.sha256(model),
        "text": TEXT,
        "text_sha256": oc.sha256(TEXT),
        "llama_cpp_commit": commit,
        "n_ctx": N_CTX,
        "runs": {k: run_once(binary, model, extra) for k, extra in RUNS.items()},
    }


def main(names):
    for name in names or ["smollm2", "gemma3", "qwen2.5-coder-0.5b"]:
        res = run(name)
        path = oc.FIXTURES / f"llamacpp_perplexity_{name}.json"
        path.write_text(json.dumps(res, indent=1) + "\n")
        print(f"wrote {path}: " + ", ".join(f"{k} PPL = {v['ppl']:.4f} +/- {v['error']:.5f} ({v['seconds']} s)"
                                            for k, v in res["runs"].items()))


if __name__ == "__main__":
    main(sys.argv[1:])
