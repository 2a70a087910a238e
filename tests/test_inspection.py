"""Inspection tools on the real model: hooks that patch, the logit lens, the error each stage
adds. Each runs eagerly on the device under test; the fast path is untouched (test_generate
counts allocations and forward calls there)."""
import numpy as np
import pytest

import llmetal
from llmetal import _engine as E
from llmetal import reference as R

from conftest import cuda_param  # noqa: E402

DEVICES = ["cpu"] + (["metal-emu"] if "metal-emu" in E.build_info()["devices"] else []) + [cuda_param()]
TOKENS = [504, 3575, 282, 4649, 314]     # SmolLM2: "The capital of France is"


@pytest.fixture(scope="module", params=DEVICES)
def model(request, smollm2_cut_or_full):
    return llmetal.load(smollm2_cut_or_full, device=request.param, n_ctx=64, n_batch=16, n_out=16)


@pytest.fixture(scope="module")
def smollm2_cut_or_full(smollm2_path, tmp_path_factory):
    """SmolLM2 cut to 4 layers (scripts/cut_gguf.py): metal-emu runs it in seconds."""
    import subprocess
    import sys
    out = tmp_path_factory.mktemp("cut") / "smollm2-4l.gguf"
    from pathlib import Path
    script = Path(__file__).resolve().parent.parent / "scripts" / "cut_gguf.py"
    subprocess.run([sys.executable, str(script), str(smollm2_path), str(out), "--layers", "4"],
                   check=True, capture_output=True)
    return out


def eager_logits(model, tokens):
    return model.run_eager(tokens, lambda *a: None, out_rows="all").to_numpy()


def test_identity_patch_is_bit_identical(model):
    seen = []

    def look(act, name):
        seen.append(name)
        return act.copy()
    got = model.run_with_hooks(TOKENS, {"blk.0.attn_norm": look, "blk.1.Qcur_rope": look, "blk.2.l_out": look})
    assert seen == ["blk.0.attn_norm", "blk.1.Qcur_rope", "blk.2.l_out"]
    assert np.array_equal(got, eager_logits(model, TOKENS))


def test_zeroing_a_stage_changes_logits_as_the_reference_predicts(model):
    def zero(act, name):
        return np.zeros_like(act)

    def zero_head(act, name):     # ablate query head 2 of layer 1 (64 values a head)
        act = act.copy()
        act[:, 2 * 64:3 * 64] = 0
        return act
    hooks = {"blk.0.attn_norm": zero, "blk.1.Qcur_rope": zero_head}
    got = model.run_with_hooks(TOKENS, hooks)
    want = R.forward(model.gguf, model.cfg, TOKENS, patch=lambda n, a: hooks[n](a, n) if n in hooks else a)
    plain = eager_logits(model, TOKENS)
    assert R.nmse(got, want) < 1e-3                     # the device's usual bound on this model
    assert R.nmse(plain, want) > 10 * R.nmse(got, want)  # ... and the patch made the difference


def test_hook_errors(model):
    with pytest.raises(KeyError, match="no stage named"):
        model.run_with_hooks(TOKENS, {"blk.0.Qkur": lambda a, n: None})
    with pytest.raises(ValueError, match="shape"):
        model.run_with_hooks(TOKENS, {"blk.0.Qcur": lambda a, n: a[:, :3]})
    with pytest.raises(ValueError, match="kv_store writes the KV cache"):
        model.run_with_hooks(TOKENS, {"blk.0.kv_store": lambda a, n: a})


def test_lens_last_layer_is_the_models_prediction(model):
    lz = llmetal.lens(model, TOKENS, k=3)
    assert lz.layers[0] == "inp_embd" and lz.layers[-1] == f"blk.{model.cfg.n_layer - 1}.l_out"
    assert lz.top_ids.shape == (model.cfg.n_layer + 1, len(TOKENS), 3)
    logits = eager_logits(model, TOKENS)
    assert np.array_equal(lz.top_ids[-1, :, 0], np.argmax(logits, axis=-1))
    _, cache = model.run_with_cache(TOKENS, names=[lz.layers[-1], "result_output"])
    assert np.array_equal(model.unembed(cache[lz.layers[-1]]), cache["result_output"])
    assert np.all(np.diff(lz.top_probs, axis=-1) <= 0) and np.all(lz.top_probs <= 1)


def test_compare_stages(model):
    rows = llmetal.compare_stages(model, TOKENS)
    keys = [r["stage"] if r["layer"] < 0 else f"blk.{r['layer']}.{r['stage']}" for r in rows]
    assert set(keys) == set(model.stage_names()) - {f"blk.{i}.kv_store" for i in range(model.cfg.n_layer)}
    for r in rows:
        bound = 1e-3 if r["weight_type"] not in (None, "F32") else 1e-6
        assert r["nmse"] < bound, r
    mm = [r for r in rows if r["stage"] == "Qcur"]
    assert all(r["weight_type"] == "Q4_1" for r in mm)


def test_attention_probabilities(model):
    """kq_soft_max, computed by the device when named: sums to 1 per query, zero above the
    diagonal, and the reference's probabilities from the same (f16-cached) keys."""
    c = model.cfg
    _, cache = model.run_with_cache(TOKENS, names=["blk.1.Qcur_rope", "blk.1.Kcur_rope", "blk.1.kq_soft_max"])
    p = cache["blk.1.kq_soft_max"]
    T = len(TOKENS)
    assert p.shape == (c.n_head, T, T)
    assert np.allclose(p.sum(-1), 1, atol=1e-5)
    assert np.all(p[:, np.triu_indices(T, 1)[0], np.triu_indices(T, 1)[1]] == 0)
    want = R.attention_probs(cache["blk.1.Qcur_rope"], cache["blk.1.Kcur_rope"].astype(np.float16), c.n_head,
                             c.n_head_kv, 0, c.attn_scale)
    assert R.nmse(p, want) < 1e-9
    with pytest.raises(ValueError, match="inspection output"):
        model.run_with_hooks(TOKENS, {"blk.0.kq_soft_max": lambda a, n: a})


def test_attention_probabilities_sliding_window(tmp_path):
    """gemma3's local layers attend to the last `sliding_window` keys only (16 in this file)."""
    from conftest import write_tiny_model
    m = llmetal.load(write_tiny_model(tmp_path / "g.gguf", arch="gemma3", quant=False), n_ctx=64, n_batch=32, n_out=32)
    toks = list(range(3, 27))                       # 24 tokens > the window of 16
    _, cache = m.run_with_cache(toks, names=["blk.0.kq_soft_max"])
    p = cache["blk.0.kq_soft_max"]
    assert m.cfg.window_for(0) == 16
    for t in range(len(toks)):
        assert np.all(p[:, t, :max(0, t - 15)] == 0) and np.all(p[:, t, t + 1:] == 0), t
        assert np.allclose(p[:, t].sum(-1), 1, atol=1e-5)
    assert "blk.0.kq_soft_max" not in m.run_with_cache(toks)[1]   # only when asked for


def test_lens_and_unembed_bad_input(model):
    with pytest.raises(ValueError, match="k must be"):
        llmetal.lens(model, TOKENS, k=0)
    with pytest.raises(ValueError, match="unembed takes"):
        model.unembed(np.zeros((2, model.cfg.n_embd + 1), np.float32))
    with pytest.raises(ValueError, match="unembed takes"):
        model.unembed(np.zeros((0, model.cfg.n_embd), np.float32))
