"""What a careless or hostile user does, and what llmetal must do about it: correct results or a
clear error, never silent corruption, a hang or a crash. (The loader's malformed-file corpus is
in test_gguf_malformed.py / test_gguf_fuzz.py; a plan kept past its model in test_plan.py.)"""
import importlib
import threading

import numpy as np
import pytest

import llmetal
from llmetal.sampling import SamplerParams
from llmetal.tokenizer import Tokenizer

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def smol(smollm2_path):
    m = llmetal.load(smollm2_path, n_ctx=256, n_batch=32)
    return m, Tokenizer.from_gguf(m.gguf)


def test_two_threads_on_one_model_get_the_single_thread_text(smol):
    """Each generation holds the model (its buffers and KV cache) until it ends; a second
    thread waits for it instead of interleaving its tokens into the same cache."""
    m, tok = smol
    want = llmetal.generate(m, tok, PROMPT, 24, SamplerParams(temp=0)).text
    got, errors = [None] * 4, []

    def run(i):
        try:
            got[i] = llmetal.generate(m, tok, PROMPT, 24, SamplerParams(temp=0)).text
        except Exception as e:   # noqa: BLE001 - reported below
            errors.append(e)
    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    assert got == [want] * 4, got


def test_two_models_in_two_threads(smollm2_path, smol):
    m, tok = smol
    want = llmetal.generate(m, tok, PROMPT, 16, SamplerParams(temp=0)).tokens
    other = llmetal.load(smollm2_path, n_ctx=256, n_batch=32)
    got = {}
    threads = [threading.Thread(target=lambda k=k, mm=mm: got.__setitem__(
        k, llmetal.generate(mm, tok, PROMPT, 16, SamplerParams(temp=0)).tokens)) for k, mm in (("a", m), ("b", other))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert got == {"a": want, "b": want}


def test_interleaved_generations_in_one_thread_are_an_error(smol):
    m, tok = smol
    first = llmetal.stream_generate(m, tok, PROMPT, 8, SamplerParams(temp=0))
    next(first)
    with pytest.raises(RuntimeError, match="already generating"):
        next(llmetal.stream_generate(m, tok, "Hello", 8, SamplerParams(temp=0)))
    first.close()     # ends the first generation: the model is free again
    assert len(llmetal.generate(m, tok, "Hello", 4, SamplerParams(temp=0)).tokens) == 4


def test_generate_works_after_the_submodule_is_imported(smol):
    m, tok = smol
    a = llmetal.generate(m, tok, PROMPT, 4, SamplerParams(temp=0))
    importlib.import_module("llmetal.generate")   # this used to rebind llmetal.generate to the module
    list(llmetal.stream_generate(m, tok, PROMPT, 2, SamplerParams(temp=0)))
    b = llmetal.generate(m, tok, PROMPT, 4, SamplerParams(temp=0))
    assert callable(llmetal.generate) and a.tokens == b.tokens


def test_decode_step_rejects_bad_tokens_and_positions(smol):
    m, _ = smol
    for token, pos in ((-1, 0), (m.cfg.n_vocab, 0), (1, -1), (1, m.n_ctx)):
        with pytest.raises(ValueError):
            m.decode_step(token, pos)
    assert np.isfinite(m.decode_step(1, 0)).all()
