"""ModelConfig: the numbers a forward pass needs, read from a GGUF's metadata and checked
against its tensors.

Facts follow llama.cpp (src/llama-model.cpp, src/models/llama.cpp, gemma3.cpp, qwen2.cpp,
qwen3.cpp, src/llama-hparams.cpp, src/llama-context.cpp), so that a trace can be compared with it:

- head_dim is `{arch}.attention.key_length`, else n_embd / n_head; head_dim_v likewise with
  value_length. n_rot is `{arch}.rope.dimension_count`, else head_dim (llama requires them equal).
- rope: llama uses the "norm" layout (pairs of adjacent dims), gemma3 / qwen2 / qwen3 "neox"
  (dim i with i + n_rot/2). freq_base defaults to 10000. The scaling factor `rope.scaling.factor` (older
  files: `rope.scale_linear`) gives freq_scale = 1/factor; the type defaults to "linear", and
  "none" means freq_scale 1. yarn/longrope are not implemented here and are rejected.
- gemma3: sliding-window ("local") layers when `attention.sliding_window` > 0. Which layers:
  the per-layer bool array `attention.sliding_window_pattern` if the file has one, else the
  period n (that key as a number, default 6): layer il is local when il % n < n - 1. Local
  layers use `rope.freq_base_swa` (default 10000) and freq_scale 1; global layers the main base.
  Embeddings are scaled by sqrt(n_embd). Attention scale 1/sqrt(head_dim), except the 27B model
  (62 layers) which uses 1/sqrt(n_embd / n_head). Q and K get an RMSNorm per head before rope,
  and the outputs of attention and FFN get RMSNorms ("post" norms). The final logits are
  soft-capped when `final_logit_softcapping` is given; llama.cpp's gemma3 graph applies no
  attention-logit softcapping, so attn_softcap is 0 for gemma3 (it was a Gemma 2 feature).
- qwen2 (Qwen2, Qwen2.5): llama's layer with biases added to Q, K and V (`attn_q.bias`, ...),
  neox rope (the files give the base, 1e6 for Qwen2.5). qwen3 (dense): no biases, an RMSNorm
  of each head of Q and K before rope (`attn_q_norm`, `attn_k_norm`, as gemma3), neox rope.
  Both: tied or untied output, attention scale 1/sqrt(head_dim).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from gguf import MODEL_TENSOR, TENSOR_NAMES, GGUFValueType, Keys

from .gguf_file import GGUFError, GGUFFile, quoted

SUPPORTED_ARCHS = ("llama", "gemma3", "qwen2", "qwen3")


class UnsupportedArchitecture(GGUFError):
    """A GGUF whose architecture the forward pass does not implement: reading it (`inspect`) is
    fine, running it is not. The message lists the supported architectures."""

    def __init__(self, message: str, arch: str):
        super().__init__(message)
        self.arch = arch


_INT_TYPES = {GGUFValueType.UINT8, GGUFValueType.INT8, GGUFValueType.UINT16, GGUFValueType.INT16,
              GGUFValueType.UINT32, GGUFValueType.INT32, GGUFValueType.UINT64, GGUFValueType.INT64}
_FLOAT_TYPES = {GGUFValueType.FLOAT32, GGUFValueType.FLOAT64}


@dataclass
class ModelConfig:
    arch: str                 # "llama", "gemma3", "qwen2" or "qwen3"
    name: str                 # general.name (or the file name)
    n_layer: int              # transformer blocks
    n_embd: int               # residual stream width
    n_ff: int                 # feed-forward hidden width
    n_head: int               # query heads
    n_head_kv: int            # key/value heads (grouped-query attention when < n_head)
    head_dim: int             # per-head width of Q and K
    head_dim_v: int           # per-head width of V
    n_rot: int                # leading dims of each head that rope rotates
    rope_type: str            # "norm" (llama) or "neox" (gemma3, qwen2, qwen3)
    rope_freq_base: float     # theta base of the global (or only) layers
    rope_freq_base_swa: float  # theta base of sliding-window layers
    rope_freq_scale: float    # position scale: 1/linear factor, 1 when unscaled
    rms_eps: float
    n_ctx_train: int
    n_vocab: int
    tied_output: bool         # no output.weight: the logits reuse token_embd.weight
    sliding_window: int       # window of local layers in tokens, 0 if none
    layer_is_swa: list[bool] = field(default_factory=list)
    attn_scale: float = 1.0   # multiplies q.k before softmax
    embed_scale: float = 1.0  # multiplies the token embeddings
    attn_softcap: float = 0.0
    final_softcap: float = 0.0
    has_rope_freqs: bool = False   # rope_freqs.weight present (per-dim frequency factors)
    has_qk_norm: bool = False      # gemma3, qwen3: rmsnorm of each head of Q and K before rope
    has_post_norms: bool = False   # gemma3: rmsnorm of the attention and FFN outputs
    has_qkv_bias: bool = False     # qwen2: biases added to Q, K and V
    rope_scaling_type: str = "none"

    # ------------------------------------------------------------------ helpers
    def to_dict(self) -> dict:
        return asdict(self)

    def rope_freq_base_for(self, il: int) -> float:
        """The rope base layer il uses (sliding-window layers have their own)."""
        return self.rope_freq_base_swa if self.layer_is_swa[il] else self.rope_freq_base

    def rope_freq_scale_for(self, il: int) -> float:
        return 1.0 if self.layer_is_swa[il] else self.rope_freq_scale

    def window_for(self, il: int) -> int:
        return self.sliding_window if self.layer_is_swa[il] else 0

    def expected_tensors(self) -> dict[str, tuple[int, ...]]:
        """Every tensor the forward pass uses, name -> numpy-order shape."""
        return _expected_shapes(self)

    # ------------------------------------------------------------------ reading
    @classmethod
    def from_gguf(cls, gf: GGUFFile) -> "ModelConfig":
        return _build(gf)


class _Meta:
    """Typed reads of `{arch}.*` metadata, each failure naming the file and the key."""

    def __init__(self, gf: GGUFFile, arch: str):
        self.gf, self.arch = gf, arch

    def key(self, k: str) -> str:
        return k.format(arch=self.arch)

    def fail(self, k: str, problem: str):
        raise GGUFError(f"{self.gf.path}: metadata '{self.key(k)}': {problem}")

    def has(self, k: str) -> bool:
        return self.key(k) in self.gf.metadata

    def _typed(self, k, kinds, kind_name):
        vtype, etype = self.gf.value_types[self.key(k)]
        if vtype not in kinds:
            self.fail(k, f"must be {kind_name}, found "
                         f"{vtype.name if etype is None else f'ARRAY of {etype.name}'}")
        return self.gf.metadata[self.key(k)]

    def get_int(self, k: str, default=None, lo: int = 1, hi: int = 1 << 31, per_layer: bool = False):
        """An integer in [lo, hi]; with per_layer, an array with all values equal is accepted."""
        if not self.has(k):
            if default is None:
                self.fail(k, "missing (required)")
            return default
        vtype, etype = self.gf.value_types[self.key(k)]
        if per_layer and vtype == GGUFValueType.ARRAY and etype in _INT_TYPES:
            vals = self.gf.metadata[self.key(k)]
            if not vals or any(v != vals[0] for v in vals):
                self.fail(k, "per-layer values that differ between layers are not supported")
            v = vals[0]
        else:
            v = self._typed(k, _INT_TYPES, "an integer")
        if not lo <= v <= hi:
            self.fail(k, f"value {v} is out of range [{lo}, {hi}]")
        return v

    def get_float(self, k: str, default=None, positive: bool = True):
        if not self.has(k):
            if default is None:
                self.fail(k, "missing (required)")
            return float(default)
        v = float(self._typed(k, _FLOAT_TYPES | _INT_TYPES, "a number"))
        if not math.isfinite(v) or (positive and v <= 0) or v < 0:
            self.fail(k, f"value {v} must be a finite number {'> 0' if positive else '>= 0'}")
        return v

    def get_str(self, k: str, default: str) -> str:
        if not self.has(k):
            return default
        return self._typed(k, {GGUFValueType.STRING}, "a string")


def _build(gf: GGUFFile) -> ModelConfig:
    arch = gf.arch
    if arch is None:
        raise GGUFError(f"{gf.path}: metadata '{Keys.General.ARCHITECTURE}': missing (required)")
    if arch not in SUPPORTED_ARCHS:
        msg = (f"{gf.path}: metadata '{Keys.General.ARCHITECTURE}': unknown architecture "
               f"{quoted(arch)} (supported: {', '.join(SUPPORTED_ARCHS)})")
        if not isinstance(arch, str):           # not even a name: a malformed file
            raise GGUFError(msg)
        raise UnsupportedArchitecture(msg, arch)
    m = _Meta(gf, arch)
    L, A, R = Keys.LLM, Keys.Attention, Keys.Rope
    n_tensors = len(gf.tensors)

    # Every block has at least nine tensors, so a count beyond the tensors in the file is
    # bogus: checked before anything is sized by it.
    n_layer = m.get_int(L.BLOCK_COUNT, hi=max(1, n_tensors))
    n_embd = m.get_int(L.EMBEDDING_LENGTH)
    n_ff = m.get_int(L.FEED_FORWARD_LENGTH, per_layer=True)
    n_head = m.get_int(A.HEAD_COUNT, per_layer=True, hi=n_embd if not m.has(A.KEY_LENGTH) else 1 << 20)
    n_head_kv = m.get_int(A.HEAD_COUNT_KV, default=n_head, per_layer=True, hi=n_head)
    if n_head % n_head_kv:
        m.fail(A.HEAD_COUNT_KV, f"{n_head_kv} does not divide the head count {n_head}")
    if not m.has(A.KEY_LENGTH) and n_embd % n_head:
        m.fail(A.HEAD_COUNT, f"{n_head} heads do not divide the embedding length {n_embd}")
    head_dim = m.get_int(A.KEY_LENGTH, default=n_embd // n_head, hi=1 << 16)
    head_dim_v = m.get_int(A.VALUE_LENGTH, default=n_embd // n_head if not m.has(A.KEY_LENGTH)
                       else head_dim, hi=1 << 16)
    n_rot = m.get_int(R.DIMENSION_COUNT, default=head_dim, hi=head_dim)
    if n_rot % 2:
        m.fail(R.DIMENSION_COUNT, f"{n_rot} is odd (rope rotates pairs of dims)")
    if arch == "llama" and n_rot != head_dim:
        m.fail(R.DIMENSION_COUNT, f"{n_rot} must equal the head dim {head_dim} for llama")

    rope_freq_base = m.get_float(R.FREQ_BASE, default=10000.0)
    scaling_type = m.get_str(R.SCALING_TYPE, "linear")
    if scaling_type not in ("none", "linear"):
        m.fail(R.SCALING_TYPE, f"rope scaling {quoted(scaling_type)} is not supported (only none, linear)")
    factor = 0.0
    if m.has(R.SCALING_FACTOR):
        factor = m.get_float(R.SCALING_FACTOR, positive=False)
    elif m.has("{arch}.rope.scale_linear"):
        factor = m.get_float("{arch}.rope.scale_linear", positive=False)
    rope_freq_scale = 1.0 if (scaling_type == "none" or factor == 0.0) else 1.0 / factor
    if factor == 0.0:
        scaling_type = "none"

    rms_eps = m.get_float(A.LAYERNORM_RMS_EPS)
    n_ctx_train = m.get_int(L.CONTEXT_LENGTH, lo=1, hi=1 << 40)

    # Vocabulary size: the tokenizer's token list (what llama.cpp sizes the embedding by),
    # else {arch}.vocab_size, else the embedding matrix rows.
    tokens = gf.metadata.get(Keys.Tokenizer.LIST)
    emb = gf.tensors.get("token_embd.weight")
    if isinstance(tokens, list) and tokens:
        n_vocab = len(tokens)
    elif m.has(L.VOCAB_SIZE):
        n_vocab = m.get_int(L.VOCAB_SIZE, hi=1 << 31)
    elif emb is not None and len(emb.shape) == 2:
        n_vocab = emb.shape[0]
    else:
        raise GGUFError(f"{gf.path}: metadata '{Keys.Tokenizer.LIST}': missing, and no "
                        f"'{m.key(L.VOCAB_SIZE)}' or token_embd.weight to size the vocabulary")

    # Sliding-window layers (gemma3 only; llama.cpp's llama reads no window).
    sliding_window = 0
    layer_is_swa = [False] * n_layer
    rope_freq_base_swa = rope_freq_base   # no local layers: one base for all
    if arch == "gemma3":
        sliding_window = m.get_int(A.SLIDING_WINDOW, default=0, lo=0, hi=1 << 40)
        if sliding_window > 0:
            layer_is_swa = _swa_pattern(m, n_layer)
            rope_freq_base_swa = m.get_float(R.FREQ_BASE_SWA, default=10000.0)

    if arch == "gemma3":
        if n_layer == 62:   # Gemma 3 27B: query_pre_attn_scalar = n_embd / n_head
            attn_scale = 1.0 / math.sqrt(n_embd // n_head)
        else:
            attn_scale = 1.0 / math.sqrt(head_dim)
        embed_scale = math.sqrt(n_embd)
        final_softcap = m.get_float(L.FINAL_LOGIT_SOFTCAPPING, default=0.0, positive=False)
    else:
        attn_scale = 1.0 / math.sqrt(head_dim)
        embed_scale = 1.0
        final_softcap = 0.0

    cfg = ModelConfig(
        arch=arch,
        name=str(gf.metadata.get(Keys.General.NAME) or gf.path.stem),
        n_layer=n_layer, n_embd=n_embd, n_ff=n_ff, n_head=n_head, n_head_kv=n_head_kv,
        head_dim=head_dim, head_dim_v=head_dim_v, n_rot=n_rot,
        rope_type="norm" if arch == "llama" else "neox",
        rope_freq_base=rope_freq_base, rope_freq_base_swa=rope_freq_base_swa,
        rope_freq_scale=rope_freq_scale, rms_eps=rms_eps, n_ctx_train=n_ctx_train,
        n_vocab=n_vocab, tied_output="output.weight" not in gf.tensors,
        sliding_window=sliding_window, layer_is_swa=layer_is_swa,
        attn_scale=attn_scale, embed_scale=embed_scale, attn_softcap=0.0,
        final_softcap=final_softcap,
        has_rope_freqs="rope_freqs.weight" in gf.tensors,
        has_qk_norm=arch in ("gemma3", "qwen3"), has_post_norms=arch == "gemma3",
        has_qkv_bias=arch == "qwen2",
        rope_scaling_type=scaling_type,
    )
    _check_tensors(gf, cfg)
    return cfg


def _swa_pattern(m: _Meta, n_layer: int) -> list[bool]:
    """Which layers are sliding-window, as llama.cpp's load_swa_pattern(ml, 6) decides."""
    k = Keys.Attention.SLIDING_WINDOW_PATTERN
    if m.has(k):
        vtype, etype = m.gf.value_types[m.key(k)]
        if vtype == GGUFValueType.ARRAY:
            vals = m.gf.metadata[m.key(k)]
            if etype != GGUFValueType.BOOL:
                m.fail(k, f"must be a number or an ARRAY of BOOL, found ARRAY of {etype.name}")
            if len(vals) != n_layer:
                m.fail(k, f"has {len(vals)} entries for {n_layer} layers")
            return list(vals)
        period = m.get_int(k, lo=0, hi=1 << 31)
    else:
        period = 6
    if period == 0:       # llama.cpp: a period of 0 makes every layer sliding-window
        return [True] * n_layer
    return [il % period < period - 1 for il in range(n_layer)]


def _expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """name -> numpy-order shape (rows = outputs) of every tensor the forward pass reads."""
    def tn(t: MODEL_TENSOR, bid: int | None = None) -> str:
        return TENSOR_NAMES[t].format(bid=bid) + ".weight"

    def tb(t: MODEL_TENSOR, bid: int) -> str:
        return TENSOR_NAMES[t].format(bid=bid) + ".bias"

    T = MODEL_TENSOR
    d, hq, hkv = cfg.n_embd, cfg.n_head * cfg.head_dim, cfg.n_head_kv * cfg.head_dim
    hv, hkv_v = cfg.n_head * cfg.head_dim_v, cfg.n_head_kv * cfg.head_dim_v
    shapes = {tn(T.TOKEN_EMBD): (cfg.n_vocab, d), tn(T.OUTPUT_NORM): (d,)}
    if not cfg.tied_output:
        shapes[tn(T.OUTPUT)] = (cfg.n_vocab, d)
    if cfg.has_rope_freqs:
        shapes[tn(T.ROPE_FREQS)] = (cfg.n_rot // 2,)
    for il in range(cfg.n_layer):
        shapes[tn(T.ATTN_NORM, il)] = (d,)
        shapes[tn(T.ATTN_Q, il)] = (hq, d)
        shapes[tn(T.ATTN_K, il)] = (hkv, d)
        shapes[tn(T.ATTN_V, il)] = (hkv_v, d)
        shapes[tn(T.ATTN_OUT, il)] = (d, hv)
        shapes[tn(T.FFN_NORM, il)] = (d,)
        shapes[tn(T.FFN_GATE, il)] = (cfg.n_ff, d)
        shapes[tn(T.FFN_UP, il)] = (cfg.n_ff, d)
        shapes[tn(T.FFN_DOWN, il)] = (d, cfg.n_ff)
        if cfg.has_qkv_bias:
            shapes[tb(T.ATTN_Q, il)] = (hq,)
            shapes[tb(T.ATTN_K, il)] = (hkv,)
            shapes[tb(T.ATTN_V, il)] = (hkv_v,)
        if cfg.has_qk_norm:
            shapes[tn(T.ATTN_Q_NORM, il)] = (cfg.head_dim,)
            shapes[tn(T.ATTN_K_NORM, il)] = (cfg.head_dim,)
        if cfg.has_post_norms:
            shapes[tn(T.ATTN_POST_NORM, il)] = (d,)
            shapes[tn(T.FFN_POST_NORM, il)] = (d,)
    return shapes


def _check_tensors(gf: GGUFFile, cfg: ModelConfig):
    """Every tensor the config implies must exist with the implied shape."""
    for name, shape in _expected_shapes(cfg).items():
        t = gf.tensors.get(name)
        if t is None:
            raise GGUFError(f"{gf.path}: tensor '{name}': missing (expected shape {shape} for "
                            f"{cfg.arch} with the metadata's sizes)")
        if t.shape != shape:
            raise GGUFError(f"{gf.path}: tensor '{name}': shape {t.shape} does not match the "
                            f"expected {shape} (numpy order) implied by the metadata")
