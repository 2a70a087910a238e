"""Decode by plan replay: recorded once, forward never called while decoding, nothing
allocated per token, and the same numbers as the eager path."""
import numpy as np
import pytest

import llmetal
from llmetal import _engine as E

PROMPT = [504, 3458, 282, 4649, 314, 1345, 30, 378, 2012, 3112]   # SmolLM2 ids


@pytest.fixture(scope="module")
def model(smollm2_path):
    return llmetal.load(smollm2_path, n_ctx=320, n_batch=64)


def greedy_eager(model, prompt, n):
    logits = model.prefill(prompt, 0)
    ids, outs = [], []
    for i in range(n):
        tok = int(np.argmax(logits))
        ids.append(tok)
        logits = model.forward([tok], len(prompt) + i, "last").to_numpy()[-1]
        outs.append(logits.copy())
    return ids, outs


def greedy_replay(model, prompt, n):
    logits = model.prefill(prompt, 0)
    ids, outs = [], []
    for i in range(n):
        tok = int(np.argmax(logits))
        ids.append(tok)
        logits = model.decode_step(tok, len(prompt) + i)
        outs.append(logits.copy())
    return ids, outs


def test_replay_matches_eager(model):
    ids_e, out_e = greedy_eager(model, PROMPT, 12)
    ids_r, out_r = greedy_replay(model, PROMPT, 12)
    assert ids_e == ids_r
    for a, b in zip(out_r, out_e):
        nmse = float(np.sum((a.astype(np.float64) - b) ** 2) / np.sum(b.astype(np.float64) ** 2))
        assert nmse < 1e-10, nmse
        assert np.max(np.abs(a - b)) <= 1e-5 * max(1.0, float(np.max(np.abs(b))))


def test_plan_recorded_once_no_forward_no_alloc(smollm2_path):
    model = llmetal.load(smollm2_path, n_ctx=320, n_batch=64)
    logits = model.prefill(PROMPT, 0)
    tok = int(np.argmax(logits))
    assert model.n_recorded == 0
    model.decode_step(tok, len(PROMPT))              # first step records the plan
    assert model.n_recorded == 1
    calls, allocs = model.n_forward_calls, E.alloc_count()
    pos = len(PROMPT) + 1
    for _ in range(200):
        tok = int(np.argmax(model.decode_step(tok, pos)))
        pos += 1
    assert model.n_forward_calls == calls, "forward() ran during decode"
    assert model.n_recorded == 1, "the plan was recorded again"
    assert E.alloc_count() == allocs, f"{E.alloc_count() - allocs} engine allocations in 200 decode steps"


def test_decode_context_overflow_is_an_error(model):
    with pytest.raises(ValueError, match="context overflow"):
        model.decode_step(1, model.n_ctx)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model.decode_step(model.cfg.n_vocab, 0)
    with pytest.raises(ValueError, match="context overflow"):
        model.prefill(list(range(model.n_ctx + 1)), 0)


def test_prefill_reports_progress(model):
    from llmetal.tokenizer import Tokenizer
    seen = []
    tok = Tokenizer.from_gguf(model.gguf)
    prompt = list(range(100, 250))                     # 150 tokens: 3 chunks of n_batch 64
    recs = list(llmetal.stream_generate(model, tok, prompt, 2, progress=lambda d, t: seen.append((d, t))))
    assert seen == [(0, 150), (64, 150), (128, 150)] and len(recs) == 2
