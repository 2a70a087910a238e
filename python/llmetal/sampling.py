"""Choosing the next token from the logits: greedy, or a chain of samplers as in llama.cpp.

The chain, in the order llama.cpp's default sampler chain applies them (common/common.h,
`common_params_sampling::samplers`, with the stages we do not implement -- DRY, top-n-sigma,
typical-p, XTC -- left out because they are off by default there):

    logits -> penalties -> top-k -> top-p -> min-p -> temperature -> dist

  penalties  repetition penalty over the *unique* tokens among the last `repeat_last_n`
             tokens of the history: a positive logit is divided by `repeat_penalty`, a
             logit <= 0 is multiplied by it (so a penalty > 1 always makes the token less
             likely).  Off when repeat_penalty == 1 or repeat_last_n == 0.  llama.cpp feeds
             the prompt tokens into this history too; the caller decides what `history` holds.
  top-k      keep the k tokens with the largest logits (0, or k >= vocab: off).
  top-p      softmax over the remaining tokens; keep the smallest set of most likely
             tokens whose probabilities add up to at least p (1.0: off).
  min-p      keep the tokens whose probability is at least min_p times the largest one,
             i.e. logit >= max_logit + log(min_p) (0.0: off).
  temp       divide the logits by the temperature.
  dist       softmax over what is left and draw one token with the seeded generator.

When temp <= 0 the choice is greedy, as in llama.cpp: the token with the largest logit after
the penalties (the filters in between never remove that token).  Ties go to the lowest token id.

`Sampler.sample` returns the token and its log-probability under the distribution it was
drawn from (for greedy: under the plain softmax of the penalised logits over the whole vocab).

Randomness comes from a numpy Generator seeded with `SamplerParams.seed` (a random 32-bit seed
is drawn and recorded when it is None), one uniform draw per sampled token: the same seed,
logits and history give the same tokens.  The stream is not llama.cpp's (mt19937), so seeded
runs match each other, not llama.cpp's seeded runs.

Speed: everything is whole-array numpy; top-k uses np.argpartition and sorts only the k
survivors, so a full sort of the vocabulary happens only when top-k is off and top-p needs
more than the 256 most likely tokens (the same shortcut llama.cpp's top-p takes).

GGUF files may carry the author's preferred settings as `general.sampling.*` keys;
`SamplerParams.from_gguf_metadata` reads them, and explicit settings override them.
"""
from __future__ import annotations

import math
import numbers
import secrets
import warnings
from dataclasses import dataclass, fields, replace
from typing import Any, Mapping, Sequence

import numpy as np

# GGUF metadata keys (gguf-py constants.py, Keys.General.SAMPLING_*) -> SamplerParams field
# and the kind of number stored there.
GGUF_SAMPLING_KEYS = {
    "general.sampling.top_k": ("top_k", int),
    "general.sampling.top_p": ("top_p", float),
    "general.sampling.min_p": ("min_p", float),
    "general.sampling.temp": ("temp", float),
    "general.sampling.penalty_last_n": ("repeat_last_n", int),
    "general.sampling.penalty_repeat": ("repeat_penalty", float),
}
# Keys that choose samplers we do not have; when they ask for something other than "off"
# we say so (a warning), since the output will differ from what the model's author intended.
_GGUF_UNSUPPORTED = {
    "general.sampling.mirostat": lambda v: float(v) != 0,
    "general.sampling.xtc_probability": lambda v: float(v) > 0,
    "general.sampling.sequence": lambda v: True,
}

# top-p looks at this many most likely tokens first and sorts the whole vocabulary only if
# their probabilities do not reach p (llama.cpp uses the same number).
_TOP_P_FIRST = 256


# --------------------------------------------------------------------------- parameters

def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


@dataclass(frozen=True)
class SamplerParams:
    """Sampling settings; defaults are llama.cpp's (common_params_sampling).

    temp            <= 0 means greedy (llama.cpp also treats a negative temperature so).
    top_k           0 = off.
    top_p           in (0, 1]; 1 = off.
    min_p           in [0, 1]; 0 = off.
    repeat_penalty  > 0; 1 = off.
    repeat_last_n   >= 0 tokens of history to penalise; 0 = off.
    seed            >= 0, or None for a random seed (the Sampler records the one it drew).
    """
    temp: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    seed: int | None = None

    def __post_init__(self):
        # Validate and normalise (numpy scalars -> Python numbers); frozen, hence setattr.
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        set_("temp", _check_float("temp", self.temp))
        set_("top_k", _check_int("top_k", self.top_k, 0))
        top_p = _check_float("top_p", self.top_p)
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1] (1 = off), got {top_p}")
        set_("top_p", top_p)
        min_p = _check_float("min_p", self.min_p)
        if not 0.0 <= min_p <= 1.0:
            raise ValueError(f"min_p must be in [0, 1] (0 = off), got {min_p}")
        set_("min_p", min_p)
        penalty = _check_float("repeat_penalty", self.repeat_penalty)
        if penalty <= 0.0:
            raise ValueError(f"repeat_penalty must be > 0 (1 = off), got {penalty}")
        set_("repeat_penalty", penalty)
        set_("repeat_last_n", _check_int("repeat_last_n", self.repeat_last_n, 0))
        if self.seed is not None:
            if isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral) \
                    or self.seed < 0:
                raise ValueError(f"seed must be an integer >= 0, or None for a random seed; "
                                 f"got {self.seed!r}")
            set_("seed", int(self.seed))

    def with_seed(self) -> "SamplerParams":
        """These settings with a concrete seed: a random 32-bit one drawn if seed is None.

        Build the Sampler from the result when the seed must be shown before sampling starts
        (a verbose CLI line), so the printed seed is the one used.
        """
        return self if self.seed is not None else replace(self, seed=secrets.randbits(32))

    @property
    def greedy(self) -> bool:
        return self.temp <= 0.0

    @classmethod
    def from_gguf_metadata(cls, metadata: Mapping[str, Any], **overrides) -> "SamplerParams":
        """Defaults, then the GGUF's `general.sampling.*` values, then `overrides`.

        `metadata` maps GGUF keys to values: Python or numpy numbers, 1-element arrays,
        numeric strings, or gguf.ReaderField objects.  An override whose value is None counts
        as not given, so CLI flags that default to None can be passed straight through.
        """
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ValueError(f"unknown sampling setting(s) {', '.join(unknown)}; "
                             f"known: {', '.join(sorted(names))}")
        values: dict[str, Any] = {}
        for key, (name, kind) in GGUF_SAMPLING_KEYS.items():
            if key in metadata:
                values[name] = _gguf_number(key, metadata[key], kind)
        # llama.cpp's penalties sampler clamps a negative history length (-1, "whole
        # context" elsewhere) to 0, i.e. off; do the same rather than refuse the file.
        if values.get("repeat_last_n", 0) < 0:
            values["repeat_last_n"] = 0
        for key, asks_for_it in _GGUF_UNSUPPORTED.items():
            if key in metadata:
                value = _scalar(metadata[key])
                try:
                    wanted = asks_for_it(value)
                except (TypeError, ValueError):
                    wanted = True
                if wanted:
                    warnings.warn(f"GGUF asks for {key} = {value!r}, which llmetal does not "
                                  f"implement; using the default sampler chain", stacklevel=2)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def _scalar(value: Any) -> Any:
    """A GGUF metadata value as one Python scalar (unwraps ReaderField and 1-element arrays)."""
    if hasattr(value, "contents") and callable(value.contents):  # gguf.ReaderField
        value = value.contents()
    if isinstance(value, (np.ndarray, list, tuple)):
        flat = np.asarray(value).ravel()
        if flat.size != 1:
            raise ValueError(f"expected a single value, got {flat.size} values")
        value = flat[0]
    if isinstance(value, np.generic):
        value = value.item()
    return value


def _gguf_number(key: str, value: Any, kind: type) -> int | float:
    """Read one numeric GGUF value; strings are parsed (llama.cpp reads them as text too)."""
    try:
        value = _scalar(value)
        if isinstance(value, bytes):
            value = value.decode()
        number = float(value)  # accepts numbers and numeric strings
        if kind is int:
            if number != int(number):
                raise ValueError("not an integer")
            return int(number)
        return number
    except (TypeError, ValueError) as e:
        raise ValueError(f"GGUF metadata {key} = {value!r} is not a valid "
                         f"{kind.__name__}: {e}") from None


# --------------------------------------------------------------------------- the stages
# Each filter takes the candidates as two parallel arrays (token ids, logits) and returns the
# survivors.  They are public so tests and `trace` can run one stage at a time.

def apply_repeat_penalty(logits: np.ndarray, history: Sequence[int], last_n: int,
                         penalty: float) -> np.ndarray:
    """Penalise the unique tokens among the last `last_n` of `history` (a new array).

    Positive logits are divided by `penalty`, logits <= 0 multiplied by it, once per token
    however often it occurs (llama.cpp's repeat penalty; frequency/presence penalties are
    separate there and not implemented here).
    """
    if last_n == 0 or penalty == 1.0 or len(history) == 0:
        return logits
    recent = np.unique(np.asarray(history[-last_n:], dtype=np.int64))
    if recent[0] < 0 or recent[-1] >= logits.shape[0]:
        bad = recent[(recent < 0) | (recent >= logits.shape[0])][0]
        raise ValueError(f"history holds token id {bad}, outside the vocabulary "
                         f"(0..{logits.shape[0] - 1})")
    out = logits.copy()
    picked = out[recent]
    out[recent] = np.where(picked <= 0, picked * penalty, picked / penalty)
    return out


def _sort_desc(ids: np.ndarray, vals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Order candidates by logit, largest first; equal logits by token id (deterministic)."""
    order = np.lexsort((ids, -vals))
    return ids[order], vals[order]


def top_k(ids: np.ndarray, vals: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Keep the k largest logits, sorted largest first.  k == 0 or k >= len: unchanged."""
    n = vals.shape[0]
    if k <= 0 or k >= n:
        return ids, vals
    part = np.argpartition(vals, n - k)[n - k:]  # the k largest, in no particular order
    # When more tokens tie with the k-th largest logit than fit, the partition picks among
    # them arbitrarily; pick instead those of lowest position (lowest id), reproducibly.
    kth = vals[part].min()
    if np.count_nonzero(vals == kth) > np.count_nonzero(vals[part] == kth):
        above = np.flatnonzero(vals > kth)
        tied = np.flatnonzero(vals == kth)[:k - above.shape[0]]
        part = np.concatenate([above, tied])
    return _sort_desc(ids[part], vals[part])


def top_p(ids: np.ndarray, vals: np.ndarray, p: float) -> tuple[np.ndarray, np.ndarray]:
    """Keep the smallest set of most likely candidates whose probabilities sum to >= p.

    Returns them sorted largest first.  p >= 1: unchanged.
    """
    if p >= 1.0:
        return ids, vals
    n = vals.shape[0]
    # Unnormalised probabilities; exp in float32 (fast), sums in float64 (accurate).
    weights = np.exp(vals - vals.max())
    total = weights.sum(dtype=np.float64)
    if n > 4 * _TOP_P_FIRST:
        # Large (top-k off): try the most likely few first, sort everything only when their
        # mass does not reach p.  Equal logits then come in the sort's (deterministic) order.
        part = np.argpartition(vals, n - _TOP_P_FIRST)[n - _TOP_P_FIRST:]
        order = part[np.argsort(-vals[part])]
        if weights[order].sum(dtype=np.float64) < p * total:
            order = np.argsort(-vals)
    else:
        # Small (after top-k, already sorted): a stable sort keeps equal logits in id order.
        order = np.argsort(-vals, kind="stable")
    cum = np.cumsum(weights[order], dtype=np.float64) / total
    # First position where the running sum reaches p; keep up to and including it.
    keep = min(int(np.searchsorted(cum, p, side="left")) + 1, order.shape[0])
    order = order[:keep]
    return ids[order], vals[order]


def min_p(ids: np.ndarray, vals: np.ndarray, p: float) -> tuple[np.ndarray, np.ndarray]:
    """Keep candidates with probability >= p * (largest probability); order kept.  p <= 0: off."""
    if p <= 0.0:
        return ids, vals
    keep = vals >= vals.max() + math.log(p)
    return ids[keep], vals[keep]


def log_softmax(vals: np.ndarray) -> np.ndarray:
    """log of the softmax, in float64 (exact enough for log-probabilities of rare tokens)."""
    v = vals.astype(np.float64)
    m = v.max()
    return v - (m + np.log(np.exp(v - m).sum()))


# --------------------------------------------------------------------------- the sampler

class Sampler:
    """Runs the chain on one logits vector at a time; holds the seeded generator.

        s = Sampler(SamplerParams(seed=42), vocab_size)
        token, logprob = s.sample(logits, history)
    """

    def __init__(self, params: SamplerParams, vocab_size: int):
        if not isinstance(params, SamplerParams):
            raise ValueError(f"params must be a SamplerParams, got {type(params).__name__}")
        # With the seed actually used, so a run started with seed=None can be repeated.
        self.params = params.with_seed()
        self.seed: int = self.params.seed
        self.vocab_size = _check_int("vocab_size", vocab_size, 1)
        # All token ids, made once: the starting candidate list of every call.
        self._all_ids = np.arange(self.vocab_size)
        self._all_ids.setflags(write=False)
        self.reset()

    def reset(self) -> None:
        """Restart the random stream from the seed (the next tokens repeat the first ones)."""
        self.rng = np.random.default_rng(self.seed)

    def describe(self) -> str:
        """The chain as one line, only the stages that do something, e.g.

            penalties(last 64, repeat 1.10) -> top-k 40 -> top-p 0.95 -> min-p 0.05
            -> temp 0.80 -> dist(seed 42)          (on one line)
        """
        p = self.params
        stages = []
        if p.repeat_last_n > 0 and p.repeat_penalty != 1.0:
            stages.append(f"penalties(last {p.repeat_last_n}, repeat {p.repeat_penalty:.2f})")
        if p.greedy:
            return " -> ".join(stages + ["greedy"])
        if 0 < p.top_k < self.vocab_size:
            stages.append(f"top-k {p.top_k}")
        if p.top_p < 1.0:
            stages.append(f"top-p {p.top_p:.2f}")
        if p.min_p > 0.0:
            stages.append(f"min-p {p.min_p:.2f}")
        stages.append(f"temp {p.temp:.2f}")
        stages.append(f"dist(seed {self.seed})")
        return " -> ".join(stages)

    @property
    def argmax_only(self) -> bool:
        """Whether the token this sampler picks is the plain argmax of the logits and nothing
        else is read from them: greedy, with the repeat penalty off. A caller may then take the
        argmax on the device (Model.step(ids=True)) instead of downloading the logits; the token
        is the same (the first maximum), and a NaN or infinity in the logits is an error there
        as it is in `token`."""
        p = self.params
        return p.greedy and (p.repeat_penalty == 1.0 or p.repeat_last_n == 0)

    def _check_shape(self, logits: np.ndarray) -> np.ndarray:
        logits = np.asarray(logits)
        if logits.shape != (self.vocab_size,):
            raise ValueError(f"logits must have shape ({self.vocab_size},), got {logits.shape}")
        if not np.issubdtype(logits.dtype, np.floating):
            raise ValueError(f"logits must be floating point, got {logits.dtype}")
        return logits

    @staticmethod
    def _check_top(top) -> None:
        if not np.isfinite(top):
            raise ValueError(f"logits must be finite with a finite maximum, got max {top}")

    def _check_logits(self, logits: np.ndarray) -> np.ndarray:
        logits = self._check_shape(logits)
        self._check_top(logits.max())   # NaN anywhere propagates into max; so does +inf
        return logits

    def distribution(self, logits: np.ndarray, history: Sequence[int] = ()
                     ) -> tuple[np.ndarray, np.ndarray]:
        """The candidates `sample` draws from and their log-probabilities.

        After penalties, top-k, top-p, min-p and temperature; for greedy, the single argmax
        with its log-probability under the softmax of the penalised logits.
        """
        p = self.params
        logits = apply_repeat_penalty(self._check_logits(logits), history,
                                      p.repeat_last_n, p.repeat_penalty)
        if p.greedy:
            best = int(np.argmax(logits))  # first maximum: ties go to the lowest id
            # log softmax at the max: -log(sum(exp(logits - max)))
            logprob = -math.log(np.exp(logits - logits[best]).sum(dtype=np.float64))
            return np.array([best]), np.array([logprob])
        ids, vals = top_k(self._all_ids, logits, p.top_k)
        ids, vals = top_p(ids, vals, p.top_p)
        ids, vals = min_p(ids, vals, p.min_p)
        return ids, log_softmax(vals / np.float32(p.temp))

    def token(self, logits: np.ndarray, history: Sequence[int] = ()) -> int:
        """The token `sample` picks, without its log-probability where that is extra work: for
        greedy, one argmax over the penalised logits instead of also a softmax over the whole
        vocabulary (a server samples every row of every step and returns no log-probabilities).
        The same checks, the same token, the same random draws as `sample`."""
        p = self.params
        if not p.greedy:
            return self.sample(logits, history)[0]
        logits = apply_repeat_penalty(self._check_shape(logits), history, p.repeat_last_n, p.repeat_penalty)
        best = int(np.argmax(logits))   # first maximum (ties: the lowest id); a NaN wins argmax
        self._check_top(logits[best])   # a NaN or +inf anywhere is at `best`: as sample's check
        return best

    def sample(self, logits: np.ndarray, history: Sequence[int] = ()) -> tuple[int, float]:
        """Pick the next token: (token id, its log-probability).  Does not modify `logits`."""
        ids, logprobs = self.distribution(logits, history)
        if self.params.greedy:
            return int(ids[0]), float(logprobs[0])
        # One uniform draw per token; the first candidate whose running sum exceeds it.
        cum = np.cumsum(np.exp(logprobs))
        i = int(np.searchsorted(cum, self.rng.random() * cum[-1], side="right"))
        i = min(i, ids.shape[0] - 1)
        return int(ids[i]), float(logprobs[i])
