"""llmetal.reference: every engine stage written out in numpy, in float64.

This module is the ground truth that the device stages (cpu, cuda, metal) are tested
against. Each function here has the same meaning as the stage of the same name in
`cpp/kargs.h` (read the comment above each args struct there), but is written for
clarity, not speed: weights are dequantized with `gguf.quants.dequantize` (the gguf
package's own reading of the block formats, independent of this project's C++), and all
arithmetic happens in float64, so the reference's own rounding error is negligible next
to a device's float32 arithmetic.

Conventions (the same as the engine's):

* Activations are numpy arrays in numpy order, one token per row: ``x[t, :]``.
  Inputs may be float32 (as a device holds them); results come back as float64 arrays.
* Weights ``W`` are ``[n_out, n_in]`` (GGUF order: one output per row). A function that
  takes a weight accepts either floats (already dequantized) or the raw GGUF bytes
  together with the ggml type id (``wtype``), e.g. a uint8 ``[rows, row_bytes]`` array.
* The KV cache is ``[n_ctx, n_kv_heads * head_dim]`` float16; a batch of ``T`` tokens
  starting at position ``pos0`` writes cache rows ``pos0 .. pos0 + T - 1``.
* Heads are laid out contiguously inside a row: head ``h`` of token ``t`` is
  ``x[t, h*head_dim:(h+1)*head_dim]``.

The rope and attention conventions follow llama.cpp (ggml's ``rope`` "norm" and "neox"
modes, ``theta = pos * freq_scale * base^(-2i/n_rot) / factor_i``; a query at position
``p`` sees cache rows ``j <= p`` and, with a sliding window ``w``, only ``p - j < w``;
grouped-query attention maps query head ``h`` to KV head ``h // (n_heads // n_kv_heads)``).
"""
from __future__ import annotations

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize as _gguf_dequantize

__all__ = [
    "ROPE_NORM", "ROPE_NEOX", "dequantize", "embed", "rmsnorm", "matmul", "logits", "rope",
    "kv_store", "attention", "attention_probs", "add", "swiglu", "geglu", "argmax", "nmse",
]

ROPE_NORM = 0   # llama "norm" rope: rotate pairs (2i, 2i+1)
ROPE_NEOX = 2   # neox rope: rotate pairs (i, i + n_rot/2)

# ggml type id -> numpy dtype, for the float formats whose data may arrive as a float array
# instead of raw bytes.
_FLOAT_TYPES = {0: np.float32, 1: np.float16}


def _f64(a) -> np.ndarray:
    """An input as a float64 array (exact for float16/float32 inputs)."""
    return np.asarray(a, dtype=np.float64)


def nmse(a, b) -> float:
    """Normalised mean squared error sum((a-b)^2) / sum(b^2), with b the reference (float64).

    The one error measure the stage tests use. Returns 0 when both are all zero and
    inf when only the reference is zero.
    """
    a, b = _f64(a), _f64(b)
    den = float(np.sum(b * b))
    num = float(np.sum((a - b) ** 2))
    if den == 0.0:
        return 0.0 if num == 0.0 else float("inf")
    return num / den


# ---- weights ----------------------------------------------------------------------------
def dequantize(raw, ggml_type: int, shape=None) -> np.ndarray:
    """Weights in a GGUF format -> float32 array of `shape` (default: [rows, n]).

    `raw` holds the bytes of whole rows: a uint8 array ``[rows, row_bytes]`` (what
    ``Tensor.to_numpy()`` returns for block formats, or a slice of a mapped GGUF), a flat
    uint8 array together with `shape`, or, for F32/F16, a float32/float16 array, returned
    as float32. Decoding is gguf's (`gguf.quants.dequantize`), never this project's.
    """
    qtype = GGMLQuantizationType(int(ggml_type))
    a = np.ascontiguousarray(raw)
    if a.dtype != np.uint8:
        # a float array of the matching type is its own byte representation
        want = _FLOAT_TYPES.get(int(ggml_type))
        if want is None and int(ggml_type) == int(GGMLQuantizationType.BF16) and a.dtype == np.uint16:
            want = np.uint16
        if want is None or a.dtype != want:
            raise ValueError(f"dequantize: {qtype.name} data must be uint8 bytes"
                             + (f" or {np.dtype(want).name}" if want else "")
                             + f", got {a.dtype}")
        if shape is None:
            shape = a.shape
        a = np.atleast_1d(a).view(np.uint8)   # same bytes, last axis counted in bytes
    if shape is not None:
        shape = tuple(int(s) for s in shape)
        n = shape[-1]
        block, block_bytes = GGML_QUANT_SIZES[qtype]
        if n % block:
            raise ValueError(f"dequantize: row length {n} is not a multiple of the {qtype.name} "
                             f"block size {block}")
        rows = int(np.prod(shape[:-1], dtype=np.int64))
        need = rows * (n // block) * block_bytes
        if a.size != need:
            raise ValueError(f"dequantize: {qtype.name} {list(shape)} needs {need} bytes, got {a.size}")
        a = a.reshape(rows, (n // block) * block_bytes)
    elif a.ndim == 1:
        a = a.reshape(1, -1)
    out = np.asarray(_gguf_dequantize(a, qtype), dtype=np.float32)
    return out.reshape(shape) if shape is not None else out


def _weight(W, wtype, shape) -> np.ndarray:
    """A weight as float64: dequantize raw bytes when a type is given, else take floats."""
    if wtype is None:
        if np.asarray(W).dtype == np.uint8:
            raise ValueError("weight given as raw bytes: pass its ggml type as wtype")
        return _f64(W)
    return dequantize(W, wtype, shape).astype(np.float64)


# ---- stages -------------------------------------------------------------------------------
def embed(W, wtype, ids, scale: float = 1.0, shape=None) -> np.ndarray:
    """out[t, :] = dequantized row ids[t] of W [n_vocab, dim], times scale.

    `wtype` may be None when W is already floats. `scale` is 1, or sqrt(dim) for gemma3.
    """
    Wf = _weight(W, wtype, shape)
    ids = np.asarray(ids)
    if ids.ndim != 1:
        raise ValueError(f"embed: ids must be 1-D, got shape {ids.shape}")
    if ids.size and (ids.min() < 0 or ids.max() >= Wf.shape[0]):
        raise ValueError(f"embed: token id outside the vocabulary of {Wf.shape[0]}")
    return Wf[ids.astype(np.int64)] * float(np.float32(scale))


def rmsnorm(x, w, eps: float) -> np.ndarray:
    """out[r, :] = x[r, :] / sqrt(mean(x[r, :]^2) + eps) * w, over the last axis.

    Also the per-head Q/K norm: pass x as [tokens * heads, head_dim] and w of head_dim.
    """
    x, w = _f64(x), _f64(w)
    if w.shape[-1] != x.shape[-1] or w.size != x.shape[-1]:
        raise ValueError(f"rmsnorm: weight of {w.size} for rows of {x.shape[-1]}")
    ms = np.mean(x * x, axis=-1, keepdims=True)
    return x / np.sqrt(ms + float(np.float32(eps))) * w.reshape(-1)


def matmul(W, x, wtype=None, shape=None) -> np.ndarray:
    """y[t, n] = sum_k W[n, k] x[t, k]; W [n_out, n_in] as floats or raw bytes with `wtype`."""
    Wf, x = _weight(W, wtype, shape), _f64(x)
    if Wf.ndim != 2 or x.shape[-1] != Wf.shape[1]:
        raise ValueError(f"matmul: x rows of {x.shape[-1]} against weight {Wf.shape}")
    return x @ Wf.T


def logits(W, x, wtype=None, shape=None) -> np.ndarray:
    """The output projection: the same as matmul (output or tied embedding weight)."""
    return matmul(W, x, wtype, shape)


def rope_angles(n_rot: int, freq_base: float, freq_scale: float, positions,
                factors=None) -> np.ndarray:
    """theta[t, i] = positions[t] * freq_scale * freq_base^(-2i/n_rot) / factors[i].

    For i in [0, n_rot/2). This is ggml's rope without YaRN (ext_factor 0, attn_factor 1).
    """
    i = np.arange(n_rot // 2, dtype=np.float64)
    inv = float(np.float32(freq_base)) ** (-2.0 * i / n_rot)
    if factors is not None:
        f = _f64(factors).reshape(-1)
        if f.size < n_rot // 2:
            raise ValueError(f"rope: {f.size} freq factors for n_rot/2 = {n_rot // 2}")
        inv = inv / f[: n_rot // 2]
    pos = _f64(positions).reshape(-1, 1)
    return pos * float(np.float32(freq_scale)) * inv[None, :]


def rope(x, n_heads: int, n_rot: int, mode: int, freq_base: float, freq_scale: float = 1.0,
         positions=0, factors=None) -> np.ndarray:
    """Rotary position embedding of x [T, n_heads * head_dim] (or [T, n_heads, head_dim]).

    Token t sits at position positions[t]; an int `positions` means pos0, i.e. positions
    pos0, pos0+1, ... . In each head, the first n_rot dims are rotated, the rest pass through:
      mode 0 (norm, llama): pairs (2i, 2i+1);
      mode 2 (neox):        pairs (i, i + n_rot/2);
    pair i turned by theta_i (see `rope_angles`):
      (x0, x1) -> (x0 cos - x1 sin, x0 sin + x1 cos).
    Returns a new float64 array of x's shape (the engine's stage works in place).
    """
    x = _f64(x)
    T = x.shape[0]
    xr = x.reshape(T, n_heads, -1).copy()
    hd = xr.shape[-1]
    if n_rot <= 0 or n_rot % 2 or n_rot > hd:
        raise ValueError(f"rope: n_rot {n_rot} must be even and <= head_dim {hd}")
    if mode not in (ROPE_NORM, ROPE_NEOX):
        raise ValueError(f"rope: mode must be 0 (norm) or 2 (neox), got {mode}")
    if np.ndim(positions) == 0:
        positions = int(positions) + np.arange(T)
    positions = np.asarray(positions)
    if positions.shape != (T,):
        raise ValueError(f"rope: {positions.size} positions for {T} tokens")
    theta = rope_angles(n_rot, freq_base, freq_scale, positions, factors)   # [T, n_rot/2]
    c, s = np.cos(theta)[:, None, :], np.sin(theta)[:, None, :]
    half = n_rot // 2
    if mode == ROPE_NORM:
        i0, i1 = np.arange(0, n_rot, 2), np.arange(1, n_rot, 2)
    else:
        i0, i1 = np.arange(half), np.arange(half, n_rot)
    x0, x1 = xr[..., i0].copy(), xr[..., i1].copy()
    xr[..., i0] = x0 * c - x1 * s
    xr[..., i1] = x0 * s + x1 * c
    return xr.reshape(x.shape)


def kv_store(cache, src, pos0: int) -> np.ndarray:
    """cache[pos0 + t, :] = float16(src[t, :]); returns a new float16 cache (input untouched).

    float32 -> float16 rounds to nearest even, as numpy's astype does.
    """
    cache = np.array(cache, dtype=np.float16, copy=True)
    src = np.asarray(src, dtype=np.float32)
    src = src.reshape(src.shape[0], -1)
    T = src.shape[0]
    if src.shape[1] != cache.shape[1]:
        raise ValueError(f"kv_store: rows of {src.shape[1]} into a cache of rows of {cache.shape[1]}")
    if pos0 < 0 or pos0 + T > cache.shape[0]:
        raise ValueError(f"kv_store: positions {pos0}..{pos0 + T} exceed the context of {cache.shape[0]}")
    with np.errstate(over="ignore"):      # beyond 65504 becomes inf, as in the engine
        cache[pos0:pos0 + T] = src.astype(np.float16)
    return cache


def _attention_setup(stage, q, k_cache, n_heads, n_kv_heads, pos0):
    """q as [T, n_heads, head_dim] float64, K float64, and the KV head of each query head."""
    q, K = _f64(q), _f64(k_cache)
    T = q.shape[0]
    if n_heads % n_kv_heads:
        raise ValueError(f"{stage}: n_heads {n_heads} is not a multiple of n_kv_heads {n_kv_heads}")
    qh = q.reshape(T, n_heads, -1)
    hd = qh.shape[-1]
    if K.ndim != 2 or K.shape[1] != n_kv_heads * hd:
        raise ValueError(f"{stage}: K cache {K.shape} for {n_kv_heads} KV heads of {hd}")
    if pos0 < 0 or pos0 + T > K.shape[0]:
        raise ValueError(f"{stage}: positions {pos0}..{pos0 + T} exceed the context of {K.shape[0]}")
    return qh, K, np.arange(n_heads) // (n_heads // n_kv_heads)


def _attention_weights(qt, K, g, lo, p, scale, softcap):
    """softmax over the visible rows lo..p of the scores of one token's query heads qt
    [n_heads, head_dim]: [n_heads, p - lo + 1]. Only those rows of K are read."""
    hd = qt.shape[-1]
    Kt = K[lo:p + 1].reshape(p + 1 - lo, -1, hd)[:, g, :]     # [rows, n_heads, hd]
    s = np.einsum("hd,jhd->hj", qt, Kt) * float(np.float32(scale))
    if softcap > 0:
        c = float(np.float32(softcap))
        s = c * np.tanh(s / c)
    w = np.exp(s - s.max(axis=-1, keepdims=True))
    return w / w.sum(axis=-1, keepdims=True)


def attention(q, k_cache, v_cache, n_heads: int, n_kv_heads: int, pos0: int, scale: float,
              window: int = 0, softcap: float = 0.0) -> np.ndarray:
    """Causal multi-head attention of a batch of queries against the KV cache.

    q [T, n_heads * head_dim], query t at position p = pos0 + t; caches
    [n_ctx, n_kv_heads * head_dim]. For query head h (KV head g = h // (n_heads // n_kv_heads)):
      s_j = scale * q . K[j, g]                      for cache rows j <= p,
            and p - j < window when window > 0;
      s_j = softcap * tanh(s_j / softcap)            when softcap > 0 (after the scale);
      out = sum_j softmax(s)_j V[j, g].
    Returns float64 [T, n_heads * head_dim].
    """
    qh, K, g = _attention_setup("attention", q, k_cache, n_heads, n_kv_heads, pos0)
    V = _f64(v_cache)
    if V.shape != K.shape:
        raise ValueError(f"attention: caches {K.shape}/{V.shape} differ")
    T, hd = qh.shape[0], qh.shape[-1]
    out = np.empty((T, n_heads, hd))
    for t in range(T):
        p = pos0 + t
        lo = max(0, p - window + 1) if window > 0 else 0
        # only the visible rows lo..p are touched, so rows no query may see can hold anything
        w = _attention_weights(qh[t], K, g, lo, p, scale, softcap)
        Vt = V[lo:p + 1].reshape(-1, n_kv_heads, hd)[:, g, :]
        out[t] = np.einsum("hj,jhd->hd", w, Vt)
    return out.reshape(T, n_heads * hd)


def attention_probs(q, k_cache, n_heads: int, n_kv_heads: int, pos0: int, scale: float,
                    window: int = 0, softcap: float = 0.0, n_keys: int | None = None) -> np.ndarray:
    """The probabilities `attention` weights V with (llama.cpp's `kq_soft_max`).

    Returns float64 [n_heads, T, n_keys] (n_keys defaults to pos0 + T, every key the batch
    reads): out[h, t, j] = softmax(s)_j as in `attention` for the rows query t sees, exactly
    0 for every other j (later positions, and rows outside the window).
    """
    qh, K, g = _attention_setup("attention_probs", q, k_cache, n_heads, n_kv_heads, pos0)
    T = qh.shape[0]
    n_keys = pos0 + T if n_keys is None else n_keys
    if n_keys < pos0 + T:
        raise ValueError(f"attention_probs: n_keys {n_keys} < pos0 + T = {pos0 + T}")
    out = np.zeros((n_heads, T, n_keys))
    for t in range(T):
        p = pos0 + t
        lo = max(0, p - window + 1) if window > 0 else 0
        out[:, t, lo:p + 1] = _attention_weights(qh[t], K, g, lo, p, scale, softcap)
    return out


def _broadcast_b(a: np.ndarray, b: np.ndarray, stage: str) -> np.ndarray:
    """b of a's size, or one row broadcast over a's rows (the engine's rule)."""
    if b.size == a.size:
        return b.reshape(a.shape)
    if b.size == a.shape[-1]:
        return b.reshape(-1)
    raise ValueError(f"{stage}: b of {b.size} elements for a of shape {a.shape}")


def add(a, b) -> np.ndarray:
    """out = a + b; b has a's shape, or is one row added to every row of a."""
    a, b = _f64(a), _f64(b)
    return a + _broadcast_b(a, b, "add")


def silu(v) -> np.ndarray:
    """v * sigmoid(v), written to avoid overflow for large |v|."""
    v = _f64(v)
    return v * (0.5 * (1.0 + np.tanh(0.5 * v)))


def gelu_tanh(v) -> np.ndarray:
    """GELU, tanh approximation: 0.5 v (1 + tanh(sqrt(2/pi) (v + 0.044715 v^3)))."""
    v = _f64(v)
    return 0.5 * v * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (v + 0.044715 * v ** 3)))


def swiglu(gate, up) -> np.ndarray:
    """out = silu(gate) * up (llama FFN)."""
    return silu(gate) * _f64(up)


def geglu(gate, up) -> np.ndarray:
    """out = gelu_tanh(gate) * up (gemma FFN)."""
    return gelu_tanh(gate) * _f64(up)


# --------------------------------------------------------------------------- whole model

def argmax(x) -> np.ndarray:
    """Greedy sampling (the engine's argmax stage): ids [R] int32, the index of the first
    maximum of each row of x [R, n] (ties: the lowest index, as np.argmax; -0.0 and +0.0 are
    equal), or -1 for a row that holds a NaN or an infinity. Comparisons only: exact in any
    precision."""
    x = _f64(x)
    if x.ndim != 2 or x.shape[1] == 0:
        raise ValueError(f"argmax: x must be [R, n] with n > 0, got shape {x.shape}")
    ids = np.argmax(x, axis=1).astype(np.int32)
    ids[~np.isfinite(x).all(axis=1)] = -1
    return ids


def forward(gf, cfg, tokens, patch=None) -> np.ndarray:
    """The whole model in numpy float64, stage by stage as Model.forward does (fresh context).

    gf: a GGUFFile, cfg: its ModelConfig. Returns the logits [T, vocab] of every position.
    patch(name, array) -> array, if given, sees each named stage output ("blk.0.attn_norm", ...,
    as Model.run_with_hooks names them) and returns what the next stages read.
    Slow (seconds for the small test models) and meant as an independent check of the
    engine's composition of stages, not of llama.cpp's numerics (which quantizes the
    activations of quantized matmuls to 8 bits and rounds K/V to f16).
    """
    def W(name):
        info = gf.tensors[name]
        return dequantize(gf.tensor_array(name), info.ggml_type, info.shape)

    P = patch or (lambda name, a: a)
    c, T = cfg, len(tokens)
    info = gf.tensors["token_embd.weight"]
    x = P("inp_embd", embed(gf.tensor_array("token_embd.weight"), info.ggml_type, tokens, c.embed_scale,
                            shape=info.shape))
    mode = ROPE_NEOX if c.rope_type == "neox" else ROPE_NORM
    factors = W("rope_freqs.weight") if "rope_freqs.weight" in gf.tensors else None
    kvd = c.n_head_kv * c.head_dim
    for il in range(c.n_layer):
        L = f"blk.{il}."
        xn = P(L + "attn_norm", rmsnorm(x, W(L + "attn_norm.weight"), c.rms_eps))
        q, k, v = (matmul(W(L + f"attn_{n}.weight"), xn) for n in "qkv")
        if c.has_qkv_bias:
            q, k, v = (t + W(L + f"attn_{n}.bias") for t, n in zip((q, k, v), "qkv"))
        q, k, v = P(L + "Qcur", q), P(L + "Kcur", k), P(L + "Vcur", v)
        if c.has_qk_norm:
            q = P(L + "Qcur_normed", rmsnorm(q.reshape(-1, c.head_dim), W(L + "attn_q_norm.weight"),
                                             c.rms_eps).reshape(T, -1))
            k = P(L + "Kcur_normed", rmsnorm(k.reshape(-1, c.head_dim), W(L + "attn_k_norm.weight"),
                                             c.rms_eps).reshape(T, -1))
        base, fs = c.rope_freq_base_for(il), c.rope_freq_scale_for(il)
        q = P(L + "Qcur_rope", rope(q, c.n_head, c.n_rot, mode, base, fs, 0, factors))
        k = P(L + "Kcur_rope", rope(k, c.n_head_kv, c.n_rot, mode, base, fs, 0, factors))
        kc = kv_store(np.zeros((T, kvd), np.float16), k, 0)
        vc = kv_store(np.zeros((T, kvd), np.float16), v, 0)
        a = P(L + "kqv", attention(q, kc, vc, c.n_head, c.n_head_kv, 0, c.attn_scale, c.window_for(il),
                                   c.attn_softcap))
        o = P(L + "kqv_out", matmul(W(L + "attn_output.weight"), a))
        if c.has_post_norms:
            o = P(L + "attn_post_norm", rmsnorm(o, W(L + "post_attention_norm.weight"), c.rms_eps))
        x = P(L + "ffn_inp", x + o)
        xn = P(L + "ffn_norm", rmsnorm(x, W(L + "ffn_norm.weight"), c.rms_eps))
        g = P(L + "ffn_gate", matmul(W(L + "ffn_gate.weight"), xn))
        u = P(L + "ffn_up", matmul(W(L + "ffn_up.weight"), xn))
        h = P(L + "ffn_geglu", geglu(g, u)) if c.arch == "gemma3" else P(L + "ffn_swiglu", swiglu(g, u))
        o = P(L + "ffn_out", matmul(W(L + "ffn_down.weight"), h))
        if c.has_post_norms:
            o = P(L + "ffn_post_norm", rmsnorm(o, W(L + "post_ffw_norm.weight"), c.rms_eps))
        x = P(L + "l_out", x + o)
    xn = P("result_norm", rmsnorm(x, W("output_norm.weight"), c.rms_eps))
    return P("result_output", matmul(W("token_embd.weight" if c.tied_output else "output.weight"), xn))
