"""Sampling: each stage on hand-made logits, the whole chain, seeds, GGUF defaults, bad input."""
import math
import warnings

import gguf
import numpy as np
import pytest

from llmetal.sampling import (Sampler, SamplerParams, apply_repeat_penalty, log_softmax, min_p,
                              top_k, top_p)

# Every filter off: sampling from the plain (tempered) softmax.
PLAIN = dict(top_k=0, top_p=1.0, min_p=0.0)


def f32(values):
    return np.asarray(values, dtype=np.float32)


def softmax(x):
    e = np.exp(np.asarray(x, dtype=np.float64) - np.max(x))
    return e / e.sum()


def frequencies(sampler, logits, n):
    counts = np.zeros(logits.shape[0])
    for _ in range(n):
        counts[sampler.sample(logits, [])[0]] += 1
    return counts


def chi_square(counts, probs):
    expected = counts.sum() * probs
    return float(((counts - expected) ** 2 / expected).sum())


# --------------------------------------------------------------------------- top-k

def test_top_k_keeps_exactly_the_k_largest_sorted():
    logits = f32([0.1, 5.0, -2.0, 3.0, 4.0, 2.9, 1.0])
    ids, vals = top_k(np.arange(7), logits, 3)
    assert ids.tolist() == [1, 4, 3]
    assert vals.tolist() == pytest.approx([5.0, 4.0, 3.0])


def test_top_k_on_a_large_random_vocab_matches_a_full_sort():
    logits = np.random.default_rng(3).standard_normal(50_000).astype(np.float32)
    ids, _ = top_k(np.arange(logits.size), logits, 40)
    assert ids.size == 40
    assert ids.tolist() == np.argsort(-logits, kind="stable")[:40].tolist()


def test_top_k_off_when_zero_or_not_smaller_than_the_vocab():
    logits = f32([1.0, 3.0, 2.0])
    for k in (0, 3, 10):
        ids, vals = top_k(np.arange(3), logits, k)
        assert ids.tolist() == [0, 1, 2] and vals.tolist() == logits.tolist()


def test_top_k_ties_go_to_the_lowest_ids():
    ids, _ = top_k(np.arange(5), f32([1.0, 2.0, 2.0, 2.0, 0.0]), 2)
    assert ids.tolist() == [1, 2]
    many_ties = np.random.default_rng(5).integers(0, 4, 2000).astype(np.float32)
    ids, _ = top_k(np.arange(2000), many_ties, 25)
    assert ids.tolist() == np.argsort(-many_ties, kind="stable")[:25].tolist()


# --------------------------------------------------------------------------- top-p

# probabilities 0.5, 0.3, 0.15, 0.05, deliberately not in order
TOP_P_PROBS = np.array([0.15, 0.5, 0.05, 0.3])
TOP_P_LOGITS = np.log(TOP_P_PROBS).astype(np.float32)


@pytest.mark.parametrize("p, kept", [(0.3, [1]), (0.7, [1, 3]), (0.9, [1, 3, 0]),
                                     (0.97, [1, 3, 0, 2]), (1.0, [0, 1, 2, 3])])
def test_top_p_keeps_the_smallest_set_reaching_p(p, kept):
    ids, _ = top_p(np.arange(4), TOP_P_LOGITS, p)
    assert ids.tolist() == kept


def _top_p_reference(logits, p):
    """Smallest set of most likely tokens whose probability reaches p, written plainly."""
    probs = softmax(logits)
    kept, mass = [], 0.0
    for i in np.argsort(-probs, kind="stable"):
        kept.append(int(i))
        mass += probs[i]
        if mass >= p:
            break
    return sorted(kept)


@pytest.mark.parametrize("scale, p", [(8.0, 0.9),    # peaked: the first 256 reach p
                                      (0.5, 0.9),    # flat: needs the full sort
                                      (2.0, 0.5)])
def test_top_p_on_a_large_vocab_matches_a_plain_reference(scale, p):
    logits = (np.random.default_rng(7).standard_normal(5000) * scale).astype(np.float32)
    ids, vals = top_p(np.arange(logits.size), logits, p)
    assert sorted(ids.tolist()) == _top_p_reference(logits, p)
    assert np.all(np.diff(vals) <= 0)  # returned most likely first


# --------------------------------------------------------------------------- min-p

def test_min_p_threshold_is_relative_to_the_largest_probability():
    probs = np.array([0.4, 0.2, 0.03, 0.019, 0.1, 0.251])
    logits = np.log(probs).astype(np.float32)
    ids, _ = min_p(np.arange(6), logits, 0.05)     # threshold 0.05 * 0.4 = 0.02
    assert ids.tolist() == [0, 1, 2, 4, 5]         # 0.019 dropped, order kept
    ids, _ = min_p(np.arange(6), logits, 0.5)      # threshold 0.2
    assert ids.tolist() == [0, 1, 5]
    ids, _ = min_p(np.arange(6), logits, 0.0)      # off
    assert ids.tolist() == list(range(6))


# --------------------------------------------------------------------------- temperature

def test_temperature_sharpens_and_flattens_the_distribution():
    logits = f32([2.0, 1.0, 0.0, -1.0])
    n = 20_000
    top_share = {}
    for temp in (0.5, 1.0, 2.0):
        s = Sampler(SamplerParams(temp=temp, seed=1234, **PLAIN), 4)
        counts = frequencies(s, logits, n)
        expected = softmax(logits / temp)
        # 3 degrees of freedom: chi-square above 25 has probability < 2e-5 by chance.
        assert chi_square(counts, expected) < 25, (temp, counts, expected)
        top_share[temp] = counts[0] / n
    assert top_share[0.5] > top_share[1.0] > top_share[2.0]
    assert top_share[0.5] > 0.8 and top_share[2.0] < 0.55


def test_sampled_tokens_come_only_from_what_the_filters_keep():
    logits = f32([3.0, 2.9, 2.8, 0.0, -1.0])
    s = Sampler(SamplerParams(temp=1.5, top_k=2, top_p=1.0, min_p=0.0, seed=5), 5)
    counts = frequencies(s, logits, 2000)
    assert counts[2:].sum() == 0 and counts[0] > 0 and counts[1] > 0


# --------------------------------------------------------------------------- penalties

def test_repeat_penalty_divides_positive_and_multiplies_negative_logits_once():
    logits = f32([2.0, -1.0, 0.0, 3.0, 1.0])
    out = apply_repeat_penalty(logits, [0, 1, 2, 0, 0], last_n=64, penalty=2.0)
    # token 0 occurs three times but is penalised once; 0.0 stays 0.0 (multiplied)
    assert out.tolist() == [1.0, -2.0, 0.0, 3.0, 1.0]
    assert logits.tolist() == [2.0, -1.0, 0.0, 3.0, 1.0]  # input left alone


def test_repeat_penalty_looks_only_at_the_last_n_tokens():
    logits = f32([2.0, 2.0, 2.0, 2.0])
    out = apply_repeat_penalty(logits, [3, 0, 1], last_n=2, penalty=1.25)
    assert out.tolist() == pytest.approx([1.6, 1.6, 2.0, 2.0])
    assert apply_repeat_penalty(logits, [3, 0, 1], last_n=0, penalty=1.25).tolist() == [2.0] * 4


def test_repeat_penalty_changes_the_greedy_choice():
    logits = f32([1.0, 1.2, -0.5])
    s = Sampler(SamplerParams(temp=0, repeat_penalty=1.5, repeat_last_n=4), 3)
    assert s.sample(logits, [])[0] == 1
    assert s.sample(logits, [1])[0] == 0              # 1.2 / 1.5 = 0.8 < 1.0
    assert s.sample(logits, [1, 2, 2, 2, 2])[0] == 1  # token 1 left the 4-token window


def test_history_token_outside_the_vocab_is_an_error():
    s = Sampler(SamplerParams(repeat_penalty=1.1), 4)
    with pytest.raises(ValueError, match="token id 7"):
        s.sample(f32([0, 1, 2, 3]), [1, 7])


# --------------------------------------------------------------------------- greedy

def test_greedy_is_the_argmax_with_its_plain_softmax_logprob():
    logits = np.random.default_rng(11).standard_normal(1000).astype(np.float32)
    for seed in (1, 2):
        token, logprob = Sampler(SamplerParams(temp=0.0, seed=seed), 1000).sample(logits, [])
        assert token == int(np.argmax(logits))
        assert logprob == pytest.approx(math.log(softmax(logits)[token]), abs=1e-6)


def test_greedy_ties_go_to_the_lowest_id():
    token, logprob = Sampler(SamplerParams(temp=0), 4).sample(f32([0.0, 5.0, 5.0, 1.0]), [])
    assert token == 1
    assert logprob == pytest.approx(math.log(softmax([0.0, 5.0, 5.0, 1.0])[1]))


def test_negative_temperature_is_greedy_as_in_llama_cpp():
    s = Sampler(SamplerParams(temp=-1.0), 3)
    assert s.params.greedy and s.sample(f32([0.0, 0.2, 0.1]), [])[0] == 1


def test_token_is_the_token_sample_picks():
    # token() skips the greedy log-probability; it must pick what sample() picks, penalties,
    # ties and seeded draws included, and refuse what sample() refuses
    rng = np.random.default_rng(5)
    logits = rng.standard_normal(300).astype(np.float32) * 2
    logits[[7, 9]] = logits.max() + 1                          # a tie: the lower id
    history = [7, 9] + list(rng.integers(0, 300, 40))          # the penalty moves the choice
    for params in (SamplerParams(temp=0), SamplerParams(temp=0, repeat_penalty=1.3, repeat_last_n=16),
                   SamplerParams(temp=0.9, seed=3), SamplerParams(temp=0.9, repeat_penalty=1.1, seed=3)):
        a, b = Sampler(params, 300), Sampler(params, 300)
        for i in range(20):
            assert a.token(logits, history[:i]) == b.sample(logits, history[:i])[0]
    g = Sampler(SamplerParams(temp=0), 4)
    for bad in (f32([0, np.nan, 1, 2]), f32([0, 1, np.inf, 2]), f32([np.nan] * 4)):
        with pytest.raises(ValueError, match="finite"):
            g.token(bad, [])
    with pytest.raises(ValueError, match="shape"):
        g.token(f32([0, 1, 2]), [])


# --------------------------------------------------------------------------- the chain

def test_logprob_is_that_of_the_final_distribution():
    logits = np.random.default_rng(2).standard_normal(500).astype(np.float32) * 3
    s = Sampler(SamplerParams(temp=0.7, top_k=20, top_p=0.9, min_p=0.01, seed=9), 500)
    ids, logprobs = s.distribution(logits, [])
    assert np.exp(logprobs).sum() == pytest.approx(1.0)
    # by hand: top-20, then top-p 0.9 over their softmax, then min-p, then temperature
    order = np.argsort(-logits)[:20]
    cum = np.cumsum(softmax(logits[order]))
    kept = order[:int(np.searchsorted(cum, 0.9)) + 1]
    kept = kept[logits[kept] >= logits[kept].max() + math.log(0.01)]
    assert ids.tolist() == kept.tolist()
    expected = dict(zip(kept.tolist(), np.log(softmax(logits[kept] / 0.7))))
    for _ in range(20):
        token, logprob = s.sample(logits, [])
        assert logprob == pytest.approx(expected[token], abs=1e-6)


def test_full_vocab_of_262144_with_default_chain():
    logits = np.random.default_rng(4).standard_normal(262_144).astype(np.float32) * 4
    s = Sampler(SamplerParams(seed=3), logits.size)
    top40 = set(np.argsort(-logits)[:40].tolist())
    for _ in range(5):
        token, logprob = s.sample(logits, [])
        assert token in top40 and logprob <= 0


# --------------------------------------------------------------------------- seeds

def _run(sampler, n=60):
    rng = np.random.default_rng(0)  # same logits every run
    history = []
    for _ in range(n):
        logits = rng.standard_normal(300).astype(np.float32)
        history.append(sampler.sample(logits, history)[0])
    return history


def test_same_seed_same_tokens_different_seed_different_tokens():
    params = SamplerParams(temp=1.0, top_k=0, top_p=0.99, min_p=0.0, repeat_penalty=1.1,
                           seed=42)
    first = _run(Sampler(params, 300))
    assert _run(Sampler(params, 300)) == first
    again = Sampler(params, 300)
    _run(again)
    again.reset()
    assert _run(again) == first
    assert _run(Sampler(SamplerParams(**{**params.__dict__, "seed": 43}), 300)) != first


def test_random_seed_is_recorded_and_replays():
    s = Sampler(SamplerParams(temp=1.0, top_k=0, seed=None), 300)
    assert isinstance(s.seed, int) and 0 <= s.seed < 2**32
    assert f"dist(seed {s.seed})" in s.describe()
    tokens = _run(s)
    assert _run(Sampler(SamplerParams(temp=1.0, top_k=0, seed=s.seed), 300)) == tokens
    fixed = SamplerParams(seed=None).with_seed()
    assert fixed.seed is not None and Sampler(fixed, 10).seed == fixed.seed


# --------------------------------------------------------------------------- describe

def test_describe_lists_the_active_stages_in_order():
    s = Sampler(SamplerParams(repeat_penalty=1.1, seed=42), 1000)
    assert s.describe() == ("penalties(last 64, repeat 1.10) -> top-k 40 -> top-p 0.95 -> "
                            "min-p 0.05 -> temp 0.80 -> dist(seed 42)")
    assert Sampler(SamplerParams(seed=1, **PLAIN), 10).describe() == "temp 0.80 -> dist(seed 1)"
    assert Sampler(SamplerParams(temp=0), 10).describe() == "greedy"


# --------------------------------------------------------------------------- GGUF defaults

def test_gguf_sampling_keys_are_used_and_flags_override(tmp_path):
    path = tmp_path / "tiny.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_sampling_top_k(20)
    w.add_sampling_top_p(0.9)
    w.add_sampling_temp(0.6)
    w.add_sampling_penalty_last_n(32)
    w.add_sampling_penalty_repeat(1.2)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    fields = gguf.GGUFReader(str(path)).fields

    p = SamplerParams.from_gguf_metadata(fields)
    assert (p.top_k, p.repeat_last_n) == (20, 32)
    assert (p.top_p, p.temp, p.repeat_penalty) == pytest.approx((0.9, 0.6, 1.2))
    assert p.min_p == 0.05  # not in the file: llama.cpp's default

    p = SamplerParams.from_gguf_metadata(fields, top_k=5, temp=None, seed=7)
    assert (p.top_k, p.seed) == (5, 7)        # explicit flags win
    assert p.temp == pytest.approx(0.6)       # None = flag not given


def test_gguf_values_as_plain_python_numpy_and_text():
    meta = {"general.sampling.top_k": np.int32(10), "general.sampling.min_p": "0.1",
            "general.sampling.penalty_last_n": -1, "general.architecture": "llama"}
    p = SamplerParams.from_gguf_metadata(meta)
    assert (p.top_k, p.min_p) == (10, 0.1)
    assert p.repeat_last_n == 0  # -1 clamped to "off", as llama.cpp's penalties sampler does
    assert SamplerParams.from_gguf_metadata({}) == SamplerParams()


def test_gguf_bad_values_and_unknown_settings():
    with pytest.raises(ValueError, match="general.sampling.top_k"):
        SamplerParams.from_gguf_metadata({"general.sampling.top_k": "many"})
    with pytest.raises(ValueError, match="general.sampling.top_k"):
        SamplerParams.from_gguf_metadata({"general.sampling.top_k": 2.5})
    with pytest.raises(ValueError, match="top_p must be in"):
        SamplerParams.from_gguf_metadata({"general.sampling.top_p": 1.5})
    with pytest.raises(ValueError, match="unknown sampling setting.*topk"):
        SamplerParams.from_gguf_metadata({}, topk=3)
    with pytest.warns(UserWarning, match="mirostat"):
        SamplerParams.from_gguf_metadata({"general.sampling.mirostat": 2})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SamplerParams.from_gguf_metadata({"general.sampling.mirostat": 0})


# --------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("bad, message", [
    (dict(top_k=-1), "top_k must be >= 0"),
    (dict(top_k=2.5), "top_k must be an integer"),
    (dict(top_p=0.0), r"top_p must be in \(0, 1\]"),
    (dict(top_p=1.01), r"top_p must be in \(0, 1\]"),
    (dict(min_p=-0.1), r"min_p must be in \[0, 1\]"),
    (dict(min_p=2.0), r"min_p must be in \[0, 1\]"),
    (dict(temp=float("nan")), "temp must be finite"),
    (dict(temp="hot"), "temp must be a number"),
    (dict(repeat_penalty=0.0), "repeat_penalty must be > 0"),
    (dict(repeat_last_n=-1), "repeat_last_n must be >= 0"),
    (dict(seed=-1), "seed must be an integer >= 0"),
])
def test_bad_params_are_refused_with_a_clear_message(bad, message):
    with pytest.raises(ValueError, match=message):
        SamplerParams(**bad)


def test_bad_logits_are_refused():
    s = Sampler(SamplerParams(), 4)
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        s.sample(f32([1, 2, 3]), [])
    with pytest.raises(ValueError, match="finite"):
        s.sample(f32([1, np.nan, 3, 4]), [])
    with pytest.raises(ValueError, match="floating point"):
        s.sample(np.arange(4), [])
    with pytest.raises(ValueError, match="vocab_size"):
        Sampler(SamplerParams(), 0)


def test_log_softmax_handles_masked_tokens():
    out = log_softmax(f32([0.0, -np.inf, 0.0]))
    assert out[1] == -np.inf and np.exp(out).sum() == pytest.approx(1.0)
