"""qwen2 / qwen3 against llama.cpp: the real Qwen2.5-Coder-0.5B-Instruct Q4_K_M and random-weight
GGUFs of the qwen2 and qwen3 layouts (rewritten here by scripts/synth_gguf.py with the arguments
the fixtures record, checked by sha256).

Fixtures (tests/fixtures/README.md, scripts/oracle/make_qwen_fixtures.py): llama.cpp's token ids,
the last prompt position's logits at 576 ids (its top 64 and 512 fixed ones), 16 greedy ids and
the top-1/top-2 gap of each step, with flash attention off (the reference) and on (its own noise).
Bounds: the logits' NMSE within max(1e-3, 3x llama.cpp's own FA on/off NMSE); teacher-forced
greedy steps pick llama.cpp's token, except where the two candidates are a near-tie: llama.cpp's
top-2 gap is under GAP_CLEAR and the float64 model (llmetal.reference.forward) puts the two
within REF_TIE of each other. llama.cpp flips its own greedy token (FA on vs off) at gaps up to
0.074 on these files (0.5 on SmolLM2, test_parity_llamacpp.py).
"""
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import llmetal
from llmetal import reference as R
from llmetal.tokenizer import Tokenizer

FIX = Path(__file__).parent / "fixtures"
REPO = Path(__file__).resolve().parents[1]
GAP_CLEAR = 0.6
REF_TIE = 0.1
MODELS = ["qwen2-synth", "qwen3-synth", "qwen2.5-coder-0.5b"]


def _fixture(name):
    z = np.load(FIX / f"llamacpp_qwen_{name}.npz")
    return z, json.loads(str(z["meta"]))


@pytest.fixture(scope="module")
def qwen_path():
    return llmetal.resolve("qwen2.5-coder-0.5b")


@pytest.fixture(scope="module")
def model_file(request, qwen_path, tmp_path_factory):
    name = request.param
    if name == "qwen2.5-coder-0.5b":
        return name, qwen_path
    _, meta = _fixture(name)
    out = tmp_path_factory.mktemp("synth") / f"{name}.gguf"
    subprocess.run([sys.executable, str(REPO / "scripts" / "synth_gguf.py"), *meta["synth_args"],
                    "--tok", str(qwen_path), "-o", str(out)], check=True, capture_output=True)
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    assert digest == meta["model_sha256"], f"{name}: synth_gguf.py wrote other bytes than the fixture's model"
    return name, out


@pytest.mark.parametrize("model_file", MODELS, indirect=True)
def test_logits_and_greedy_match_llamacpp(model_file):
    name, path = model_file
    z, meta = _fixture(name)
    m = llmetal.load(path, n_ctx=512, n_batch=512, n_out=1)
    tok = Tokenizer.from_gguf(m.gguf)
    assert m.cfg.arch == ("qwen3" if name == "qwen3-synth" else "qwen2")
    bound = max(1e-3, 3 * meta["nmse_fa_max"])
    for i, prompt in enumerate(meta["prompts"]):
        ids = z[f"ids_{i}"].tolist()
        assert tok.encode(prompt, parse_special=True) == ids, f"{name} prompt {i}: token ids differ"
        logits = m.prefill(ids, 0).copy()
        cols = np.concatenate([z[f"top_ids_{i}"], z["sample_ids"]])
        want = np.concatenate([z[f"top_logits_{i}"], z[f"sample_logits_{i}"]])
        e = R.nmse(logits[cols], want)
        print(f"{name} prompt {i}: NMSE {e:.2e} (llama.cpp FA on/off {float(z[f'nmse_fa_{i}']):.2e})")
        assert e <= bound, f"{name} prompt {i}: logits NMSE {e:.2e} > {bound:.2e}"
        # teacher-forced greedy: llama.cpp's tokens fed back, our argmax compared at clear choices
        gen, gap = z[f"gen_ids_{i}"].tolist(), z[f"gap_{i}"]
        for s in range(len(gen)):
            ours = int(np.argmax(logits))
            if ours != gen[s]:
                assert gap[s] < GAP_CLEAR, f"{name} prompt {i} step {s}: {ours} vs {gen[s]} at a clear gap {gap[s]:.3f}"
                ref = R.forward(m.gguf, m.cfg, ids + gen[:s])[-1]
                d = abs(ref[ours] - ref[gen[s]])
                print(f"{name} prompt {i} step {s}: {ours} vs llama.cpp's {gen[s]} (gap {gap[s]:.3f}); "
                      f"float64 puts them {d:.4f} apart")
                assert d < REF_TIE, f"{name} prompt {i} step {s}: not a near-tie for the float64 model ({d:.3f})"
            if s + 1 < len(gen):
                logits = m.decode_step(gen[s], len(ids) + s)
