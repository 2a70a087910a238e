"""The llama.cpp reference fixtures (tests/fixtures/llamacpp_*.npz) load and agree with themselves.

These tests check the fixture FILES only (shapes, dtypes, provenance, internal consistency), not
the engine; engine tests compare against them. See tests/fixtures/README.md for how they are made.
"""
import json
from pathlib import Path

import numpy as np
import pytest

FIX = Path(__file__).parent / "fixtures"
MODELS = {"smollm2": 49152, "gemma3": 262144}   # model -> vocabulary size


def _load(kind, model):
    path = FIX / f"llamacpp_{kind}_{model}.npz"
    assert path.exists(), f"missing fixture {path}; see tests/fixtures/README.md"
    f = np.load(path)
    return f, json.loads(str(f["meta"]))


def test_total_size_is_small():
    total = sum(p.stat().st_size for p in FIX.glob("llamacpp_*.npz"))
    assert 0 < total < 8.5e6, f"fixtures total {total / 1e6:.2f} MB"


@pytest.mark.parametrize("kind", ["logits", "greedy"])
@pytest.mark.parametrize("model", list(MODELS))
def test_provenance(kind, model):
    f, meta = _load(kind, model)
    assert meta["kind"] == kind and meta["model"] == model
    assert len(meta["llama_cpp_commit"]) == 40, "llama.cpp commit not recorded"
    assert meta["llama_cpp_python"] == "0.3.36"
    assert meta["n_vocab"] == MODELS[model]
    s = meta["settings"]
    assert (s["n_ctx"], s["n_threads"], s["logits_all"]) == (512, 2, True)
    assert list(f["prompts"]) == meta["prompts"]
    assert "AMX_INT8 = 1" not in meta["system_info"], "oracle was built with AMX"


@pytest.mark.parametrize("kind", ["logits", "greedy"])
@pytest.mark.parametrize("model", list(MODELS))
def test_prompt_ids_follow_gguf_bos_rule(kind, model):
    f, meta = _load(kind, model)
    key = "ids_{}" if kind == "logits" else "prompt_ids_{}"
    for i in range(len(meta["prompts"])):
        ids = f[key.format(i)]
        assert ids.dtype == np.int32 and ids.ndim == 1 and len(ids) >= 2
        assert ids.min() >= 0 and ids.max() < meta["n_vocab"]
        # BOS first exactly when the GGUF's add_bos_token says so (Gemma-3: yes, once). SmolLM2:
        # no BOS added; its BOS id is also <|im_start|>, so only chat-formatted text starts with it.
        if meta["add_bos"]:
            assert ids[0] == meta["bos_id"] and (ids[1:] != meta["bos_id"]).all()
        else:
            assert (ids[0] == meta["bos_id"]) == meta["prompts"][i].startswith("<|im_start|>")


def test_smollm2_logits_every_position():
    f, meta = _load("logits", "smollm2")
    assert len(meta["prompts"]) == 4
    for i in range(4):
        n = len(f[f"ids_{i}"])
        lg = f[f"logits_{i}"]
        assert lg.dtype == np.float16 and lg.shape == (n, MODELS["smollm2"])
        assert np.isfinite(lg).all()
        # rows differ (every position really stored, not one row repeated)
        assert len({row.tobytes() for row in lg}) == n


def test_gemma3_logits_topk_matches_last_row():
    f, meta = _load("logits", "gemma3")
    k = meta["topk"]
    for i in range(4):
        n = len(f[f"ids_{i}"])
        last = f[f"last_logits_{i}"]
        ti, tl = f[f"top_ids_{i}"], f[f"top_logits_{i}"]
        assert last.dtype == np.float16 and last.shape == (MODELS["gemma3"],)
        assert ti.shape == tl.shape == (n, k)
        assert (np.diff(tl, axis=1) <= 0).all(), "top-k not sorted best first"
        assert all(len(set(r)) == k for r in ti)
        # the stored top-k of the last position are the largest entries of the stored full row
        np.testing.assert_array_equal(last[ti[-1]], tl[-1].astype(np.float16))
        assert last.astype(np.float32).max() == np.float16(tl[-1, 0])
        kth = np.sort(last.astype(np.float32))[-k]
        assert (last[ti[-1]].astype(np.float32) >= kth).all()


@pytest.mark.parametrize("model", list(MODELS))
def test_greedy_consistent(model):
    f, meta = _load("greedy", model)
    n_gen, steps = meta["n_gen"], list(f["snapshot_steps"])
    assert len(meta["prompts"]) == 12 and n_gen == 32 and steps == [0, 8, 16]
    first = f["first_eog"]
    for i in range(12):
        gen, gap, eog = f[f"gen_ids_{i}"], f[f"gap_{i}"], f[f"eog_{i}"]
        assert gen.shape == gap.shape == eog.shape == (n_gen,)
        assert (gap >= 0).all()
        assert first[i] == (int(np.argmax(eog)) if eog.any() else -1)
        if model == "gemma3":
            ti, tl = f[f"step_top_ids_{i}"], f[f"step_top_logits_{i}"]
            assert ti.shape == tl.shape == (3, meta["snapshot_topk"])
            top1, top2 = ti[:, 0], tl[:, 0].astype(np.float32) - tl[:, 1].astype(np.float32)
        else:
            lg = f[f"step_logits_{i}"].astype(np.float32)
            assert lg.shape == (3, MODELS[model])
            srt = np.sort(lg, axis=1)
            top1, top2 = lg.argmax(axis=1), srt[:, -1] - srt[:, -2]
        for j, s in enumerate(steps):
            # the token chosen at a snapshot step is the argmax of the stored logits, unless the
            # float16 rounding merged a near tie
            if gap[s] > 0.05:
                assert top1[j] == gen[s], f"prompt {i} step {s}"
            # the recorded gap agrees with the stored logits within float16 rounding
            assert abs(top2[j] - gap[s]) < 0.05
