"""The qwen2 / qwen3 llama.cpp fixtures (tests/fixtures/llamacpp_qwen_*.npz, made by
scripts/oracle/make_qwen_fixtures.py) load and agree with themselves; no engine, no model.
The parity tests against them come with the qwen2 / qwen3 forward pass."""
import json
from pathlib import Path

import numpy as np
import pytest

FIX = Path(__file__).parent / "fixtures"
NAMES = ["qwen2-synth", "qwen3-synth", "qwen2.5-coder-0.5b"]
N_VOCAB = 151936


@pytest.mark.parametrize("name", NAMES)
def test_qwen_fixture(name):
    path = FIX / f"llamacpp_qwen_{name}.npz"
    f = np.load(path)
    meta = json.loads(str(f["meta"]))
    assert path.stat().st_size < 1e6
    assert meta["model"] == name and meta["n_vocab"] == N_VOCAB and meta["add_bos"] is False
    assert meta["settings"]["n_ctx"] == 512 and len(meta["model_sha256"]) == 64
    assert (meta["synth_args"] is not None) == name.endswith("-synth")
    k, n_gen = meta["top_k"], meta["n_gen"]
    sample = f["sample_ids"]
    assert sample.shape == (meta["n_sample"],) and np.all(np.diff(sample) > 0) and sample[-1] < N_VOCAB
    for i, _ in enumerate(meta["prompts"]):
        top_ids, top = f[f"top_ids_{i}"], f[f"top_logits_{i}"]
        assert top_ids.shape == (k,) and np.all(np.diff(top) <= 0)         # best first
        assert f[f"gen_ids_{i}"][0] == top_ids[0]                            # greedy step 0 = argmax
        assert f[f"gen_ids_{i}"].shape == f[f"gen_ids_fa_{i}"].shape == (n_gen,)
        assert np.all(f[f"gap_{i}"] >= 0) and f[f"gap_{i}"][0] == pytest.approx(top[0] - top[1])
        # the sampled ids never beat the top-k; logsumexp >= the max logit
        assert f[f"sample_logits_{i}"].max() <= top[0] and f[f"lse_{i}"] >= top[0]
        assert 0 <= f[f"nmse_fa_{i}"] < 1e-2
        inter = np.intersect1d(top_ids, sample)
        for t in inter:                                                      # the same row in both views
            assert f[f"top_logits_{i}"][top_ids == t][0] == f[f"sample_logits_{i}"][sample == t][0]
