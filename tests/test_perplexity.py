"""`perplexity`: llama-perplexity's method (chunks, BOS, second half scored, running estimate,
the +/- error), its CLI output, and bad input as one-line errors with exit status 2.
The comparison with llama.cpp's own figures is in tests/test_perplexity_llamacpp.py."""
from __future__ import annotations

import math
import re

import numpy as np
import pytest

from llmetal import perplexity as ppl

pytestmark = pytest.mark.timeout(300)

GPL3 = "/usr/share/common-licenses/GPL-3"


# ---------------------------------------------------------------------- the method, without a model

def test_token_nll_matches_log_softmax():
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((5, 300)).astype(np.float32) * 4
    targets = rng.integers(0, 300, 5)
    x = logits.astype(np.float64)
    want = -(x[np.arange(5), targets] - x.max(1) - np.log(np.exp(x - x.max(1, keepdims=True)).sum(1)))
    np.testing.assert_allclose(ppl.token_nll(logits, targets), want, rtol=1e-6)


def test_chunks_bos_and_scored_half():
    """What each chunk runs and which tokens are scored, with a fake model whose logits put
    probability p on the true next token."""
    n_ctx, vocab, bos = 8, 50, 49
    tokens = list(range(1, 30))                 # 29 tokens: 3 chunks of 8, 5 left over
    seen = []

    def fn(chunk, first):
        seen.append((list(chunk), first))
        rows = np.zeros((n_ctx - first, vocab), np.float32)
        for r, pos in enumerate(range(first, n_ctx - 1)):
            rows[r, chunk[pos + 1]] = math.log(3.0)     # p = 3 / (3 + vocab - 1)
        return rows

    results = list(ppl.perplexity(fn, tokens, n_ctx, add_bos=True, bos_id=bos))
    assert [c[0] for c, _ in seen] == [bos, bos, bos]           # first token replaced by BOS
    assert [c[1:] for c, _ in seen] == [tokens[1:8], tokens[9:16], tokens[17:24]]
    assert all(f == 4 for _, f in seen)
    res = results[-1]
    assert res.n_chunks == 3 and res.count == 3 * 3 and len(res.running) == 3
    p = 3 / (3 + vocab - 1)
    assert res.ppl == pytest.approx(1 / p) and res.running == pytest.approx([1 / p] * 3)
    assert math.isnan(res.error)                                   # every nll equal: no spread

    seen.clear()
    list(ppl.perplexity(fn, tokens, n_ctx, add_bos=False, bos_id=bos, max_chunks=2))
    assert [c for c, _ in seen] == [tokens[0:8], tokens[8:16]]


def test_error_formula():
    res = ppl.PerplexityResult(n_ctx=8, n_tokens=16, n_chunks=2)
    v = np.array([1.0, 2.0, 4.0])
    res.nll, res.nll2, res.count = float(v.sum()), float((v * v).sum()), 3
    assert res.ppl == pytest.approx(math.exp(7 / 3))
    assert res.error == pytest.approx(math.sqrt(((v * v).mean() - v.mean() ** 2) / 2) * math.exp(7 / 3))
    assert ppl.format_final(res) == f"Final estimate: PPL = {math.exp(7 / 3):.4f} +/- {res.error:.5f}"


@pytest.mark.parametrize("n_tokens, n_ctx, needle", [
    (100, 7, "even context"), (100, 2, "at least 4"), (100, 64, "only 100 tokens"),
])
def test_plan_refuses(n_tokens, n_ctx, needle):
    with pytest.raises(ppl.PerplexityError, match=needle):
        ppl.plan_chunks(n_tokens, n_ctx)


def test_read_text_drops_one_newline(tmp_path):
    p = tmp_path / "t.txt"
    p.write_bytes(b"a\n\n")
    assert ppl.read_text(p) == "a\n"


# ---------------------------------------------------------------------- SmolLM2, end to end

def test_engine_chunk_logits_equal_model_logits(smollm2_path):
    """The engine's scored rows (prefill of the first half, then every row) are Model.logits'."""
    import llmetal
    from llmetal.tokenizer import Tokenizer
    m = llmetal.load(smollm2_path, n_ctx=64, n_batch=64)
    ids = Tokenizer.from_gguf(m.gguf).encode(ppl.read_text(GPL3))[:64]
    np.testing.assert_array_equal(ppl.model_logits_fn(m)(ids, 32), m.logits(ids)[32:])


def test_cli_output_format(run_cli, smollm2_path):
    r = run_cli("perplexity", "-m", smollm2_path, "-f", GPL3, "-c", "64", "--chunks", "3")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 2, r.stdout
    m = re.fullmatch(r"\[1\](\d+\.\d{4}),\[2\](\d+\.\d{4}),\[3\](\d+\.\d{4}),", lines[0])
    assert m, lines[0]
    f = re.fullmatch(r"Final estimate: PPL = (\d+\.\d{4}) \+/- (\d+\.\d{5})", lines[1])
    assert f and f.group(1) == m.group(3), lines[1]          # the final estimate is the last running one
    assert 1 < float(f.group(1)) < 200 and 0 < float(f.group(2)) < float(f.group(1))
    assert "3 chunks of n_ctx=64" in r.stderr and "add_bos=False" in r.stderr


@pytest.mark.timeout(600)
def test_cli_reference(run_cli, smollm2_path):
    """--reference scores the same chunks with the float64 model: close to the engine's figure."""
    r = run_cli("perplexity", "-m", smollm2_path, "-f", GPL3, "-c", "32", "--chunks", "2", "--reference",
                timeout=600)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 4 and lines[2].startswith("reference (float64): [1]"), r.stdout
    engine = float(re.search(r"PPL = (\S+)", lines[1]).group(1))
    ref = float(re.search(r"PPL = (\S+)", lines[3]).group(1))
    assert lines[3].startswith("reference (float64): Final estimate: PPL = ")
    assert abs(engine - ref) / ref < 0.05, (engine, ref)   # 30 tokens: 8-bit activations show


@pytest.mark.parametrize("text, args, needle", [
    ("", [], "the text is empty"),
    ("  \n\n", [], "the text is empty"),
    ("Hello world, this is short.", [], "tokenizes to only"),
    ("word " * 100, ["-c", "63"], "even context"),
    ("word " * 100, ["-c", "2"], "at least 4"),
    ("word " * 100, ["--chunks", "0"], "--chunks must be >= 1"),
])
def test_cli_bad_input(run_cli, smollm2_path, tmp_path, text, args, needle):
    p = tmp_path / "text.txt"
    p.write_text(text)
    r = run_cli("perplexity", "-m", smollm2_path, "-f", p, "-c", "64", *args)
    assert r.returncode == 2 and r.stdout == "", (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("llmetal: error: ") and needle in lines[0], r.stderr


def test_cli_missing_file(run_cli, tmp_path):
    r = run_cli("perplexity", "-f", tmp_path / "nope.txt")
    assert r.returncode == 2 and "nope.txt" in r.stderr and "Traceback" not in r.stderr
