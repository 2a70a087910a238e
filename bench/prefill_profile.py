"""Where a prompt's prefill time goes, stage by stage and by weight type (not a test).

    PYTHONPATH=python python bench/prefill_profile.py -m gemma3 -p 512 -t 2 [--repeats 3]

Runs the prompt (random tokens, as `bench`'s ppN) through Model.forward in eager mode, one
commit per stage, in chunks of n_batch (`-b`, default 256) with the last token's logits only,
as `Model.prefill` does, and takes the wall time from one stage's end to the next's. Each
stage of each layer keeps its best of --repeats runs (the machine is shared and noisy; the
best run is the least disturbed one); the table sums them by stage name, and the matmuls
also by weight type. The sum is close to, a little above, the bench's pp time: eager mode
adds a Python round trip per stage.

On a machine other processes share, `-t 1 --clock cpu` times each stage by the CPU time of
the one thread that runs it (time.thread_time): time spent descheduled is not counted.
"""
import argparse
import collections
import time

import numpy as np

import llmetal
import llmetal.model as model_mod
from llmetal import _engine as E


def profile_once(model, tokens, clock):
    """{(stage, layer, weight or None): seconds} of one prefill of `tokens` from position 0."""
    times = {}
    t_last = [0.0]

    def hook(name, il, out, weight):
        now = clock()
        times[(name, il, weight)] = times.get((name, il, weight), 0.0) + now - t_last[0]
        t_last[0] = clock()

    for i in range(0, len(tokens), model.n_batch):
        chunk = tokens[i:i + model.n_batch]
        t_last[0] = clock()
        model.run_eager(chunk, hook, "last", i)
    return times


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model", default="smollm2")
    ap.add_argument("-p", "--n-prompt", type=int, default=512)
    ap.add_argument("-b", "--batch-size", type=int, default=256)
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="cpu: the thread's CPU time (needs -t 1)")
    args = ap.parse_args()
    if args.clock == "cpu" and args.threads != 1:
        ap.error("--clock cpu times the calling thread only: use it with -t 1")
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter

    # The per-stage finite check belongs to inspection, not to prefill: kept out of the timing.
    model_mod._check_finite = lambda *a, **k: None
    model = llmetal.load(args.model, n_ctx=max(args.n_prompt, 512), n_threads=args.threads,
                         n_batch=args.batch_size)
    rng = np.random.default_rng(1234)
    tokens = rng.integers(0, model.cfg.n_vocab, size=args.n_prompt).tolist()
    model.prefill(tokens)   # warm-up: page faults, weight repacking, thread start
    t0 = clock()
    model.prefill(tokens)
    t_plain = clock() - t0

    best = None
    for _ in range(args.repeats):
        t = profile_once(model, tokens, clock)
        best = t if best is None else {k: min(v, t[k]) for k, v in best.items()}
    total = sum(best.values())

    types = {name: E.TYPE_NAMES.get(t.ggml_type, str(t.ggml_type)) for name, t in model.gguf.tensors.items()}
    by_stage = collections.defaultdict(float)
    by_type = collections.defaultdict(float)
    for (name, il, weight), s in best.items():
        by_stage[name] += s
        if weight is not None and weight.endswith(".weight") and not weight.endswith("norm.weight"):
            kind = weight.split(".")[-2] if weight.startswith("blk.") else weight
            by_type[f"{types[weight]:5} {kind}"] += s

    print(f"{model.path.name}: pp{args.n_prompt}, batch {model.n_batch}, {args.threads} threads, "
          f"SIMD {E.simd_level()}, {args.clock} clock; prefill {t_plain * 1e3:.1f} ms ({args.n_prompt / t_plain:.1f} t/s), "
          f"eager stage sum {total * 1e3:.1f} ms (best of {args.repeats} per stage)")
    print(f"\n{'stage':18} {'ms':>8} {'%':>6}")
    for name, s in sorted(by_stage.items(), key=lambda kv: -kv[1]):
        print(f"{name:18} {s * 1e3:8.1f} {100 * s / total:6.1f}")
    print(f"\n{'weight type / matrix':28} {'ms':>8} {'%':>6}")
    for name, s in sorted(by_type.items(), key=lambda kv: -kv[1]):
        print(f"{name:28} {s * 1e3:8.1f} {100 * s / total:6.1f}")


if __name__ == "__main__":
    main()
