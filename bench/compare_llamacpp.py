"""Side-by-side CPU speed: llama.cpp's llama-bench against `python -m llmetal bench`.

    python bench/compare_llamacpp.py                       # SmolLM2 Q4_1 + synthetic llama3-1b Q8_0
    python bench/compare_llamacpp.py --rounds 7 --models smollm2,gemma3,qwen2.5
    python bench/compare_llamacpp.py --json results.json   # also keep every sample
    python bench/compare_llamacpp.py -d 4096 -p 0 -n 64 --models smollm2,gemma3,qwen2.5   # decode, 4096 tokens cached
    python bench/compare_llamacpp.py --models llama3-1b,qwen3-0.6b --rounds 3      # the synthetic shapes

Both programs run on the same GGUF files with the same thread count (-t, default 2), the same
tests (pp512 = one 512-token prompt, tg128 = 128 generated tokens; with -d N, both after N
tokens already in the KV cache, llama-bench's depth) and one repetition per process. The two are interleaved round by round (llama.cpp, llmetal, llama.cpp, ...), so a
burst of load from the other tenants of a shared machine hits both alike; the load average
(1 min) is recorded before every run. Each process runs under /usr/bin/time -v, which gives
its peak resident memory.

The table reports, per model and test, the best and the median of the rounds for each program
and the ratio llmetal / llama.cpp of each. On a noisy machine the best is the better estimate
of what the code can do; the median says what a user would typically see.

llama-bench is looked up in $LLAMA_BENCH, then /work/oracle/llama.cpp-build/bin; when absent it
is built with scripts/oracle/build_llamacpp.sh (tools only, about 10 minutes on 2 cores).
The synthetic models are written once into /tmp with random weights: Llama-3-1B-shaped Q8_0
(/work/shared/tools/synth_gguf.py, SmolLM2's tokenizer) and Qwen3-0.6B-shaped Q8_0
(scripts/synth_gguf.py --arch qwen3, the Qwen2.5 GGUF's tokenizer).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "python"))


def find_llama_bench() -> str:
    """llama-bench from $LLAMA_BENCH, the oracle build, PATH, or a fresh oracle build."""
    cands = [os.environ.get("LLAMA_BENCH"), "/work/oracle/llama.cpp-build/bin/llama-bench",
             shutil.which("llama-bench")]
    for c in cands:
        if c and os.access(c, os.X_OK):
            return c
    print("llama-bench not found: building it with scripts/oracle/build_llamacpp.sh", file=sys.stderr)
    subprocess.run(["bash", str(ROOT / "scripts/oracle/build_llamacpp.sh")], check=True,
                   env={**os.environ, "SKIP_PY": "1"})
    oracle = Path(os.environ.get("ORACLE_DIR", "/work/oracle/llama.cpp-build")) / "bin/llama-bench"
    if not oracle.exists():
        sys.exit(f"error: the build did not produce {oracle}")
    return str(oracle)


def model_paths(names: list[str]) -> dict[str, str]:
    from llmetal.models import resolve
    smol = str(resolve("smollm2"))
    out = {}
    for n in names:
        if n == "smollm2":
            out["SmolLM2-135M Q4_1"] = smol
        elif n == "gemma3":
            out["Gemma-3-270M Q4_K_M"] = str(resolve("gemma3"))
        elif n == "qwen2.5":
            out["Qwen2.5-Coder-0.5B Q4_K_M"] = str(resolve("qwen2.5-coder-0.5b"))
        elif n == "llama3-1b":
            p = Path("/tmp/llmetal-synth-llama3-1b-q8_0.gguf")
            if not p.exists():
                tool = os.environ.get("SYNTH_GGUF", "/work/shared/tools/synth_gguf.py")
                subprocess.run([sys.executable, tool, "--tok", smol, "--shape", "llama3-1b",
                                "--qtype", "Q8_0", "-o", str(p)], check=True)
            out["llama3-1B-shape Q8_0 (synthetic)"] = str(p)
        elif n == "qwen3-0.6b":
            p = Path("/tmp/llmetal-synth-qwen3-0.6b-q8_0.gguf")
            if not p.exists():
                subprocess.run([sys.executable, str(ROOT / "scripts/synth_gguf.py"), "--arch", "qwen3",
                                "--shape", "qwen3-0.6b", "--qtype", "Q8_0", "--ctx", "40960",
                                "--tok", str(resolve("qwen2.5-coder-0.5b")), "-o", str(p)], check=True)
            out["qwen3-0.6B-shape Q8_0 (synthetic)"] = str(p)
        else:
            sys.exit(f"error: unknown model '{n}' (smollm2, gemma3, qwen2.5, llama3-1b, qwen3-0.6b)")
    return out


def load_avg() -> float:
    return os.getloadavg()[0]


def timed(cmd: list[str], env=None) -> tuple[str, int]:
    """Run cmd under /usr/bin/time -v; returns (stdout, peak RSS in bytes)."""
    r = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        sys.exit(f"error: {' '.join(cmd)} failed ({r.returncode}):\n{r.stderr[-2000:]}")
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr)
    return r.stdout, int(m.group(1)) * 1024 if m else 0


def run_llamacpp(bench: str, model: str, p: int, n: int, t: int, d: int = 0) -> tuple[dict, int]:
    out, rss = timed([bench, "-m", model, "-p", str(p), "-n", str(n), "-d", str(d), "-r", "1", "-t", str(t),
                      "-o", "json"])
    res = json.loads(out)
    at = f" @ d{d}" if d else ""   # llmetal's names for the tests: "tg64 @ d4096"
    return {("pp" if r["n_prompt"] else "tg") + str(r["n_prompt"] or r["n_gen"]) + at: r["avg_ts"] for r in res}, rss


def run_llmetal(model: str, p: int, n: int, t: int, d: int = 0) -> tuple[dict, int]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "python")}
    out, rss = timed([sys.executable, "-m", "llmetal", "bench", "-m", model, "-p", str(p), "-n", str(n),
                      "-d", str(d), "-r", "1", "-t", str(t), "-o", "json"], env=env)
    return {r["test"]: r["avg_ts"] for r in json.loads(out)}, rss


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="smollm2,llama3-1b",
                    help="comma list: smollm2, gemma3, qwen2.5, llama3-1b, qwen3-0.6b")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (one repetition each)")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("-p", "--n-prompt", type=int, default=512)
    ap.add_argument("-n", "--n-gen", type=int, default=128)
    ap.add_argument("-d", "--depth", type=int, default=0, help="tokens in the KV cache before each test")
    ap.add_argument("--json", help="write every sample to this file")
    args = ap.parse_args()

    bench = find_llama_bench()
    models = model_paths([m.strip() for m in args.models.split(",") if m.strip()])
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    print(f"# {cpu}, {os.cpu_count()} CPUs, threads={args.threads}, rounds={args.rounds}, depth={args.depth}")
    print(f"# llama-bench: {bench}")

    record = {}
    for label, path in models.items():
        samples = {"llama.cpp": {}, "llmetal": {}}
        rss = {"llama.cpp": 0, "llmetal": 0}
        loads = []
        for r in range(args.rounds):
            for prog in ("llama.cpp", "llmetal"):
                loads.append(load_avg())
                if prog == "llama.cpp":
                    ts, peak = run_llamacpp(bench, path, args.n_prompt, args.n_gen, args.threads, args.depth)
                else:
                    ts, peak = run_llmetal(path, args.n_prompt, args.n_gen, args.threads, args.depth)
                rss[prog] = max(rss[prog], peak)
                for test, v in ts.items():
                    samples[prog].setdefault(test, []).append(v)
                print(f"  {label} round {r + 1} {prog:9s} load {loads[-1]:.2f}: " +
                      "  ".join(f"{k} {v:.1f}" for k, v in ts.items()), file=sys.stderr, flush=True)
        record[label] = {"samples": samples, "peak_rss": rss, "load_avg": loads, "path": path}

    print()
    print("| model | test | llama.cpp best | llama.cpp median | llmetal best | llmetal median "
          "| ratio best | ratio median |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for label, rec in record.items():
        s = rec["samples"]
        for test in s["llama.cpp"]:
            a, b = s["llama.cpp"][test], s["llmetal"].get(test, [0.0])
            ab, am, bb, bm = max(a), statistics.median(a), max(b), statistics.median(b)
            print(f"| {label} | {test} | {ab:.1f} | {am:.1f} | {bb:.1f} | {bm:.1f} | "
                  f"{bb / ab:.2f}x | {bm / am:.2f}x |")
    print()
    print("| model | llama.cpp peak RSS | llmetal peak RSS | load avg (1 min) min / median / max |")
    print("|---|---:|---:|---|")
    for label, rec in record.items():
        la = rec["load_avg"]
        print(f"| {label} | {rec['peak_rss']['llama.cpp'] / 2**20:.0f} MiB | "
              f"{rec['peak_rss']['llmetal'] / 2**20:.0f} MiB | "
              f"{min(la):.2f} / {statistics.median(la):.2f} / {max(la):.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
