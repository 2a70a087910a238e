"""Where llmetal's greedy runs leave llama.cpp's, and how close each is to the float64 model.

    PYTHONPATH=python python scripts/oracle/greedy_divergences.py [--models smollm2,gemma3] [--no-reference]

For every prompt of tests/fixtures/llamacpp_greedy_<model>.npz: the step where llmetal's
free-running greedy run (prefill + replayed decode plan, as tests/test_parity_llamacpp.py runs it)
first differs from llama.cpp's, with llama.cpp's top-2 gap there -- the lines to paste into that
test's ACCEPTED_DIVERGENCES after a change of CPU rounding. Then, teacher-forced on llama.cpp's
tokens (prompt + 31 steps), llmetal's logits against the float64 model (llmetal.reference):
mean NMSE over the 12 x 32 steps, and the steps where the two argmaxes differ with float64's
own top-2 gap there -- the check that a new rounding is not worse, only different.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "python"))
import llmetal  # noqa: E402
from llmetal import reference as R  # noqa: E402

FIX = ROOT / "tests" / "fixtures"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="smollm2,gemma3")
    ap.add_argument("--no-reference", action="store_true", help="skip the float64 comparison")
    a = ap.parse_args()
    for name in a.models.split(","):
        m = llmetal.load(name, n_ctx=512, n_batch=64, n_out=32)
        z = np.load(FIX / f"llamacpp_greedy_{name}.npz", allow_pickle=False)
        meta = json.loads(str(z["meta"]))
        div, errs, flips = {}, [], []
        for i in range(len(z["prompts"])):
            prompt, want, gap = z[f"prompt_ids_{i}"].tolist(), z[f"gen_ids_{i}"].tolist(), z[f"gap_{i}"]
            logits = m.prefill(prompt, 0).copy()
            for s in range(len(want)):
                if int(np.argmax(logits)) != want[s]:
                    div[i] = s
                    print(f"{name} prompt {i} ({meta['labels'][i]}): leaves llama.cpp at step {s}, "
                          f"llama.cpp gap {gap[s]:.3f}")
                    break
                logits = m.decode_step(want[s], len(prompt) + s)
            if a.no_reference:
                continue
            seq = prompt + want[:-1]
            ours = [m.prefill(prompt, 0).copy()]
            for s in range(len(want) - 1):
                ours.append(m.decode_step(want[s], len(prompt) + s).copy())
            ref = R.forward(m.gguf, m.cfg, seq)[len(prompt) - 1:]
            for s, (o, r) in enumerate(zip(ours, ref)):
                errs.append(R.nmse(o, r))
                if int(np.argmax(o)) != int(np.argmax(r)):
                    top = np.sort(r)[-2:]
                    flips.append(float(top[1] - top[0]))
        print(f"{name}: ACCEPTED_DIVERGENCES entries: "
              + ", ".join(f'("{name}", {i}): {s}' for i, s in sorted(div.items())))
        if not a.no_reference:
            print(f"{name}: teacher-forced vs float64: mean logits NMSE {np.mean(errs):.3e} over {len(errs)} steps; "
                  f"argmax differs from float64's at {len(flips)} steps, float64 gaps there "
                  f"{', '.join(f'{g:.3f}' for g in sorted(flips))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
