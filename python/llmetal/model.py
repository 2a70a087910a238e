"""The model: weights in place, buffers reserved once, and ONE readable forward pass.

    model = llmetal.load("smollm2", device="cpu", n_ctx=2048)
    logits = model.logits(tokens)                       # [T, vocab], fresh context
    logits, cache = model.run_with_cache(tokens, names=["blk.0.attn_norm", "result_output"])

    model = llmetal.load("smollm2", n_ctx=1024, n_seq=4)  # KV cache for 4 sequences of 1024
    logits = model.step([(0, tok_a, 17), (2, tok_b, 5)])  # [2, vocab]: one step, two sequences
    ids = model.step([(0, tok_a, 17), (2, tok_b, 5)], ids=True)   # [2] int32: greedy, on the device

`Model.forward` calls the engine's stages in order, under llama.cpp's stage names
(`attn_norm`, `Qcur`, `Kcur`, `Vcur`, `kqv_out`, `ffn_inp`, `ffn_norm`, `ffn_out`, `l_out`,
`result_norm`, `result_output`) so that a trace can be laid next to llama.cpp's
`llama-eval-callback`. Four families share it: llama (SmolLM2, Llama 2/3, Mistral), gemma3,
qwen2 and qwen3, whose differences are the few config-flag branches below (ModelConfig says
which family has what).
"""
from __future__ import annotations

import copy
import functools
import os
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import _engine as E
from .config import ModelConfig
from .generate import NonFiniteError   # noqa: F401  (raised here; generate.py raises it too)
from .gguf_file import GGUFFile
from .models import resolve

F32, F16, I32 = E.F32, E.F16, E.I32


def cpu_threads(n_threads: int) -> int:
    """A thread count for the CPU device: 0 is the default (the cores this process may use);
    more than the machine's CPUs only slows every step, so it is clamped to them, with a warning."""
    if isinstance(n_threads, bool) or not isinstance(n_threads, int) or n_threads < 0:
        raise ValueError(f"n_threads must be an integer >= 0 (0: the default), got {n_threads!r}")
    n_cpu = os.cpu_count() or 1
    if n_threads > n_cpu:
        warnings.warn(f"{n_threads} threads asked for, this machine has {n_cpu} CPUs: using {n_cpu}",
                      stacklevel=3)
        return n_cpu
    return n_threads


def make_device(device: str | None = "cpu", n_threads: int = 0):
    """The engine device by name: "cpu" (everywhere), "cuda" (NVIDIA builds), "metal" (Apple
    builds), "metal-emu" / "metal-emu:reverse" (the Metal device's plan run by a CPU emulator
    of Metal; builds with LLMETAL_METAL_EMU=ON)."""
    device = device or "cpu"
    if device == "cpu":
        return E.cpu_device(cpu_threads(n_threads))
    if device == "cuda":
        return E.cuda_device(0)
    if device == "metal":
        return E.metal_device()
    if device.startswith("metal-emu"):
        return E.metal_emu_device(device.partition(":")[2] or "forward")
    raise ValueError(f"unknown device '{device}' (cpu, cuda, metal, metal-emu)")


@dataclass
class Activations:
    """Views of the pool's activation buffers for a batch of T tokens (rows 0..T)."""
    ids: E.Tensor     # [T] i32        token ids
    x: E.Tensor       # [T, d]         residual stream
    xn: E.Tensor      # [T, d]         normed input of attention / FFN / output
    q: E.Tensor       # [T, H*hd]      queries
    k: E.Tensor       # [T, Hkv*hd]    keys of this batch (before the cache)
    v: E.Tensor       # [T, Hkv*hd]    values of this batch
    attn: E.Tensor    # [T, H*hd]      attention output, heads concatenated
    o: E.Tensor       # [T, d]         attention / FFN output projection
    gate: E.Tensor    # [T, ff]        FFN gate projection
    up: E.Tensor      # [T, ff]        FFN up projection
    h: E.Tensor       # [T, ff]        gated activation
    logits: E.Tensor  # [R, vocab]     logits of the rows asked for (R <= n_out)
    argmax: E.Tensor  # [R] i32        first maximum of each logits row (greedy ids), -1: not finite


def _check_finite(what: str, a: np.ndarray, weight: str | None = None):
    bad = np.flatnonzero(~np.isfinite(a))
    if bad.size:
        where = np.unravel_index(bad[0], a.shape)
        raise NonFiniteError(f"{what} produced {bad.size} non-finite value(s) (first {a.flat[bad[0]]} at "
                             f"index {tuple(int(i) for i in where)})"
                             + (f"; it read {weight}" if weight else ""))


def finite_head(logits: np.ndarray) -> bool:
    """Whether the first 256 logits are finite: the fast paths' per-step check. A NaN or inf in
    any stage's output reaches every logit through the final norm, so a prefix shows it without
    reading the whole row (a full read of 150k floats just copied from a GPU costs a decode step
    ~15 us); a damaged row of the output matrix itself is caught where the row is sampled."""
    return bool(np.isfinite(logits[:256]).all())


def serialized(method):
    """One user of a model at a time: the method runs holding the model's lock (a second
    thread waits), since every call shares the model's buffers and KV cache."""
    @functools.wraps(method)
    def run(self, *args, **kw):
        with self.lock:
            return method(self, *args, **kw)
    return run


class Weights(dict):
    """The model's weights by GGUF name. It remembers the first name a stage looked up, so that
    the stage's hook learns which weight the stage used from the call itself."""
    last: str | None = None

    def __getitem__(self, name):
        if self.last is None:     # a stage's first lookup is its weight (a bias comes after)
            self.last = name
        return dict.__getitem__(self, name)

    def take(self) -> str | None:
        name, self.last = self.last, None
        return name


@dataclass
class PlanStep:
    """One named stage of the recorded decode step: commands [first, end) of the plan."""
    name: str             # llama.cpp's stage name (attn_norm, Qcur, ...)
    layer: int            # -1 outside the layers
    weight: str | None    # the GGUF tensor the stage read
    first: int
    end: int

    @property
    def key(self) -> str:
        return self.name if self.layer < 0 else f"blk.{self.layer}.{self.name}"


class DecodePlan:
    """The recorded one-token forward pass as the device runs it: the named stages, the engine
    commands each issued, and the kernels the device launches for them (`Device.describe`:
    one a command on cpu, the fused kernels of the CUDA planner, the Metal dispatches)."""

    def __init__(self, model, plan, steps: list[PlanStep]):
        self.plan = plan                   # the engine's Plan (replayed by Model.decode_step)
        self.steps = steps
        self.device = model.device_name
        self.model_name = model.cfg.name
        self.ops = list(plan.stages)       # engine stage of each command
        self.kernels = [(k, first, count, fusion) for k, first, count, fusion in model.device.describe(plan)]

    @property
    def n_commands(self) -> int:
        return len(self.ops)

    def with_kernels(self, kernels, device: str) -> "DecodePlan":
        """The same stages and commands with another device's kernel list, e.g. the CUDA
        planner's launches for this plan (E.cuda_plan), to read the CUDA program without a GPU."""
        p = copy.copy(self)
        p.kernels = [(k["kernel"], k["first"], k["count"], k["fusion"]) if isinstance(k, dict) else tuple(k)
                     for k in kernels]
        p.device = device
        return p

    def rows(self):
        """(step, command index, op, kernels starting at this command) for every command."""
        starts: dict[int, list] = {}
        for k in self.kernels:
            starts.setdefault(k[1], []).append(k)
        for st in self.steps:
            for i in range(st.first, st.end):
                yield st, i, self.ops[i], starts.get(i, [])

    def format(self, layers=None) -> str:
        """The listing; `layers` (an iterable of layer numbers) limits the per-layer rows."""
        keep = None if layers is None else set(layers)
        owner = {}                                   # command -> the kernel that runs it
        for k in self.kernels:
            for i in range(k[1], k[1] + k[2]):
                owner.setdefault(i, k)
        step_of = {i: st for st in self.steps for i in range(st.first, st.end)}
        fused = sum(1 for k in self.kernels if k[3])
        lines = [f"decode step of {self.model_name} on {self.device}: {len(self.steps)} stages, "
                 f"{self.n_commands} commands, {len(self.kernels)} kernels ({fused} fused)",
                 f"{'stage':<22} {'op':<10} {'weight':<28} kernel"]
        hidden, shown_last = 0, -1
        for st, i, op, ks in self.rows():
            if keep is not None and st.layer >= 0 and st.layer not in keep:
                hidden += 1
                continue
            if hidden:
                lines.append(f"  ... {hidden} commands of other layers")
                hidden = 0
            first = i == st.first
            label = st.key if first else ""
            weight = (st.weight or "") if first else ""
            if ks:
                kern = " + ".join(k[0] + (f" [{k[3]}" + (f": {k[2]} commands" if k[2] > 1 else "") + "]"
                                          if k[3] else "") for k in ks)
            elif i in owner and owner[i][1] <= shown_last:
                kern = "  (in the kernel above)"
            elif i in owner:
                kern = f"  (in {owner[i][0]} of {step_of[owner[i][1]].key})"
            else:
                kern = "  (no kernel)"
            lines.append(f"{label:<22} {op:<10} {weight:<28} {kern}")
            shown_last = i
        if hidden:
            lines.append(f"  ... {hidden} commands of other layers")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()

    def __repr__(self) -> str:
        return (f"<DecodePlan {self.model_name} on {self.device}: {self.n_commands} commands, "
                f"{len(self.kernels)} kernels>")


class Model:
    def __init__(self, path, device: str | None = "cpu", n_ctx: int = 4096, n_threads: int = 0,
                 n_batch: int = 256, n_out: int = 32, n_seq: int = 1):
        self.path = Path(resolve(path))
        self.gguf = GGUFFile(self.path)
        self.cfg = c = ModelConfig.from_gguf(self.gguf)
        if c.final_softcap:
            raise ValueError(f"{self.path.name}: final logit softcapping ({c.final_softcap}) is not "
                             "implemented by llmetal's forward pass")
        for name, v in (("n_ctx", n_ctx), ("n_batch", n_batch), ("n_out", n_out), ("n_seq", n_seq)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise ValueError(f"{name} must be an integer, got {v!r}")
        if n_ctx < 0 or n_batch <= 0 or n_out <= 0 or n_seq <= 0:
            raise ValueError(f"n_ctx must be >= 0 (0: the training context), n_batch, n_out and n_seq > 0; "
                             f"got {n_ctx}, {n_batch}, {n_out}, {n_seq}")
        if n_ctx == 0:
            n_ctx = c.n_ctx_train
        if n_ctx > c.n_ctx_train:
            raise ValueError(f"n_ctx {n_ctx} exceeds the model's training context {c.n_ctx_train}")
        # a batch or output block larger than the context could never fill: sized to it
        self.n_ctx, self.n_batch, self.n_out = int(n_ctx), int(min(n_batch, n_ctx)), int(min(n_out, n_ctx))
        self.n_seq = int(n_seq)   # sequences the KV cache holds, n_ctx positions each (Model.step)
        self.device = make_device(device, n_threads)
        self.device_name = self.device.name

        # Weights: views into the mapped file, in their GGUF block format (no copy on CPU).
        self.file = self.device.map_file(str(self.path))
        self.w = Weights((name, E.Tensor(self.file, t.offset, t.ggml_type, list(t.shape)))
                         for name, t in self.gguf.tensors.items())
        self.output_name = "token_embd.weight" if c.tied_output else "output.weight"

        # Every activation and the KV cache, reserved once for (n_ctx, n_batch).
        B, d, ff = self.n_batch, c.n_embd, c.n_ff
        qd, kvd = c.n_head * c.head_dim, c.n_head_kv * c.head_dim
        self.pool = p = E.BufferPool(self.device)
        p.declare("ids", I32, [B])
        for name, width in (("x", d), ("xn", d), ("q", qd), ("k", kvd), ("v", kvd), ("attn", qd),
                            ("o", d), ("gate", ff), ("up", ff), ("h", ff)):
            p.declare(name, F32, [B, width])
        p.declare("logits", F32, [self.n_out, c.n_vocab])
        p.declare("argmax", I32, [self.n_out])
        # KV cache: sequence s at rows [s * n_ctx, (s + 1) * n_ctx); with several sequences, one
        # more row that the padding rows of a step's batch write and read (self.scratch_row)
        self.scratch_row = self.n_seq * n_ctx
        cache_rows = self.n_seq * n_ctx + (1 if self.n_seq > 1 else 0)
        for il in range(c.n_layer):
            p.declare(f"blk.{il}.k_cache", F16, [cache_rows, kvd])   # [rows, Hkv*hd] f16
            p.declare(f"blk.{il}.v_cache", F16, [cache_rows, kvd])
        p.reserve()
        self.full = {n: p.get(n) for n in p.names()}

        self.lock = threading.RLock()   # see serialized(); generate holds it for a whole generation
        self.generating = False         # a stream_generate of this model is under way
        self.enc = E.Encoder(self.device, eager=False)
        self.hook = None          # called after each stage in eager inspection mode
        self.probs_layers = None  # layers whose attention probabilities (kq_soft_max) an eager run keeps
        self._probs_buf = None
        self.n_forward_calls = 0
        # decode: the one-token plan (recorded on first use) and the buffers each step reuses;
        # the same plan ending with the argmax of the logits (decode_step(ids=True))
        self._plan: DecodePlan | None = None
        self._plan_ids: DecodePlan | None = None
        self._argmax1, self._id1 = self.full["argmax"].rows(0, 1), np.empty(1, np.int32)
        self._plan_steps: list[PlanStep] | None = None   # filled while a plan is recorded
        self.n_recorded = 0
        self._step_plans: dict[tuple[int, int, bool], DecodePlan] = {}   # (rows, logit rows, ids) -> plan
        self._ids1, self._out1 = self.full["ids"].rows(0, 1), self.full["logits"].rows(0, 1)
        self._logits1 = self.device.host_empty(c.n_vocab)   # page-locked on cuda: one DMA a step
        self._logits_n = None   # Model.step's logits rows, reused by every step (made at first use)

    # ---- helpers ------------------------------------------------------------------------
    def acts(self, T: int, n_rows_out: int) -> Activations:
        f = self.full
        return Activations(ids=f["ids"].rows(0, T), logits=f["logits"].rows(0, n_rows_out),
                           argmax=f["argmax"].rows(0, n_rows_out),
                           **{n: f[n].rows(0, T) for n in ("x", "xn", "q", "k", "v", "attn", "o",
                                                           "gate", "up", "h")})

    def _stage(self, name, il, out):
        """After each stage: note it in a plan being recorded; in eager mode, commit, check that
        `out` is finite (NonFiniteError names the first stage that is not) and let the hook look
        at it (hook(name, layer, out, weight name or None))."""
        weight = self.w.take()
        if self._plan_steps is not None:
            first = self._plan_steps[-1].end if self._plan_steps else 0
            self._plan_steps.append(PlanStep(name, il, weight, first, self.enc.n_pending))
        if self.hook is not None:
            self.enc.commit()
            self.enc.wait()
            _check_finite(f"stage {name if il < 0 else f'blk.{il}.{name}'}", out.to_numpy(), weight)
            self.hook(name, il, out, weight)

    # ---- the forward pass ---------------------------------------------------------------
    @serialized
    def forward(self, tokens, pos0: int, out_rows: str | int = "last", rows=None, ids: bool = False):
        """Run T tokens at positions pos0..pos0+T-1 through the model, filling the KV cache.

        out_rows: "last" computes the logits of the last token only, "all" of every token
        (T <= n_out), a number R those of the last R tokens. rows (a batch of several
        sequences, see step): int32 [T, 2], token t at position rows[t, 0] of the sequence whose
        cache rows start at rows[t, 1]; then rope, kv_store and attention read each row's own
        position and sequence (by_row) and pos0 is unused. ids: greedy sampling on the device,
        the argmax stage after the logits (the first maximum of each row, -1 for a row that
        is not finite).
        Returns the logits tensor view, or with ids the argmax ids [R] int32 (download with
        .to_numpy()).
        """
        c, w, enc, st = self.cfg, self.w, self.enc, self._stage
        T = len(tokens)
        R = T if out_rows == "all" else 1 if out_rows == "last" else int(out_rows)
        a = self.acts(T, R)
        self.n_forward_calls += 1
        by_row = rows is not None
        if by_row:
            self.device.set_step_rows(np.ascontiguousarray(rows, dtype=np.int32))
        else:
            self.device.set_step(pos0, T)
        a.ids.upload(np.asarray(tokens, dtype=np.int32))

        enc.embed(w["token_embd.weight"], a.ids, a.x, c.embed_scale); st("inp_embd", -1, a.x)
        for il in range(c.n_layer):
            L = f"blk.{il}."
            base, fscale = c.rope_freq_base_for(il), c.rope_freq_scale_for(il)   # gemma3: local vs global
            factors = w.get("rope_freqs.weight")

            # attention block
            enc.rmsnorm(a.x, w[L + "attn_norm.weight"], a.xn, c.rms_eps); st("attn_norm", il, a.xn)
            enc.matmul(w[L + "attn_q.weight"], a.xn, a.q)
            if c.has_qkv_bias: enc.add(a.q, w[L + "attn_q.bias"], a.q)     # qwen2
            st("Qcur", il, a.q)
            enc.matmul(w[L + "attn_k.weight"], a.xn, a.k)
            if c.has_qkv_bias: enc.add(a.k, w[L + "attn_k.bias"], a.k)
            st("Kcur", il, a.k)
            enc.matmul(w[L + "attn_v.weight"], a.xn, a.v)
            if c.has_qkv_bias: enc.add(a.v, w[L + "attn_v.bias"], a.v)
            st("Vcur", il, a.v)
            if c.has_qk_norm:  # gemma3, qwen3: rmsnorm over each head's vector
                qh = a.q.view(0, [T * c.n_head, c.head_dim])
                kh = a.k.view(0, [T * c.n_head_kv, c.head_dim])
                enc.rmsnorm(qh, w[L + "attn_q_norm.weight"], qh, c.rms_eps); st("Qcur_normed", il, a.q)
                enc.rmsnorm(kh, w[L + "attn_k_norm.weight"], kh, c.rms_eps); st("Kcur_normed", il, a.k)
            mode = E.ROPE_NEOX if c.rope_type == "neox" else E.ROPE_NORM
            enc.rope(a.q, c.n_head, c.n_rot, mode, base, fscale, factors, by_row);    st("Qcur_rope", il, a.q)
            enc.rope(a.k, c.n_head_kv, c.n_rot, mode, base, fscale, factors, by_row); st("Kcur_rope", il, a.k)
            kc, vc = self.full[L + "k_cache"], self.full[L + "v_cache"]
            enc.kv_store(a.k, kc, by_row)
            enc.kv_store(a.v, vc, by_row);                                               st("kv_store", il, a.v)
            if self.probs_layers is not None and il in self.probs_layers:   # eager inspection only
                probs = self._probs(T, pos0)
                enc.attention_probs(a.q, kc, probs, c.n_head, c.n_head_kv, c.attn_scale,
                                    c.window_for(il), c.attn_softcap);                  st("kq_soft_max", il, probs)
            enc.attention(a.q, kc, vc, a.attn, c.n_head, c.n_head_kv, c.attn_scale,
                          c.window_for(il), c.attn_softcap, by_row);               st("kqv", il, a.attn)
            enc.matmul(w[L + "attn_output.weight"], a.attn, a.o);                       st("kqv_out", il, a.o)
            if c.has_post_norms:
                enc.rmsnorm(a.o, w[L + "post_attention_norm.weight"], a.o, c.rms_eps);  st("attn_post_norm", il, a.o)
            enc.add(a.x, a.o, a.x);                                                      st("ffn_inp", il, a.x)

            # feed-forward block
            enc.rmsnorm(a.x, w[L + "ffn_norm.weight"], a.xn, c.rms_eps);               st("ffn_norm", il, a.xn)
            enc.matmul(w[L + "ffn_gate.weight"], a.xn, a.gate);                         st("ffn_gate", il, a.gate)
            enc.matmul(w[L + "ffn_up.weight"], a.xn, a.up);                             st("ffn_up", il, a.up)
            if c.arch == "gemma3":
                enc.geglu(a.gate, a.up, a.h);                                            st("ffn_geglu", il, a.h)
            else:
                enc.swiglu(a.gate, a.up, a.h);                                           st("ffn_swiglu", il, a.h)
            enc.matmul(w[L + "ffn_down.weight"], a.h, a.o);                             st("ffn_out", il, a.o)
            if c.has_post_norms:
                enc.rmsnorm(a.o, w[L + "post_ffw_norm.weight"], a.o, c.rms_eps);        st("ffn_post_norm", il, a.o)
            enc.add(a.x, a.o, a.x);                                                      st("l_out", il, a.x)

        # output: final norm and logits of the rows asked for
        xr, xnr = a.x.rows(T - R, T), a.xn.rows(T - R, T)
        enc.rmsnorm(xr, w["output_norm.weight"], xnr, c.rms_eps);                       st("result_norm", -1, xnr)
        enc.logits(w[self.output_name], xnr, a.logits);                                 st("result_output", -1, a.logits)
        if ids:   # greedy sampling: llama.cpp has no such tensor, the stage is this engine's own
            enc.argmax(a.logits, a.argmax);                                             st("argmax", -1, a.argmax)
        enc.commit()
        enc.wait()
        return a.argmax if ids else a.logits

    # ---- decode: one token through the recorded plan ---------------------------------------
    @serialized
    def plan(self, ids: bool = False) -> DecodePlan:
        """The decode step as the device runs it (recorded on first use, then replayed by
        decode_step): print it to list every stage, engine command and kernel. ids: the plan of
        decode_step(ids=True), which ends with the argmax stage."""
        if (self._plan_ids if ids else self._plan) is None:
            self.enc.begin_record(1)
            self._plan_steps = []
            try:
                self.forward([0], 0, "last", ids=ids)   # token and position come from buffers at replay
            finally:
                plan, steps, self._plan_steps = self.enc.end_record(), self._plan_steps, None
            if ids:
                self._plan_ids = DecodePlan(self, plan, steps)
            else:
                self._plan = DecodePlan(self, plan, steps)
            self.n_recorded += 1
        return self._plan_ids if ids else self._plan

    def stage_names(self) -> list[str]:
        """Every stage output's name ("inp_embd", "blk.0.attn_norm", ..., "result_output"), as
        the forward pass names them."""
        return [s.key for s in self.plan().steps]

    @serialized
    def decode_step(self, token: int, pos: int, ids: bool = False) -> np.ndarray | int:
        """Run one token at position pos (the KV cache holds positions < pos) by replaying the
        recorded plan; returns the logits [vocab] in a buffer the next step reuses (copy to keep).
        ids=True: the greedy next token instead (the argmax of the logits, taken on the device:
        4 bytes downloaded, not the logits), an int."""
        if not 0 <= pos < self.n_ctx:
            raise ValueError(f"context overflow: position {pos} >= n_ctx {self.n_ctx}")
        if isinstance(token, (bool, np.bool_)) or not isinstance(token, (int, np.integer)):
            raise ValueError(f"token ids must be integers, got {token!r}")
        if not 0 <= token < self.cfg.n_vocab:
            raise ValueError(f"token id {token} outside the vocabulary of {self.cfg.n_vocab}")
        if ids:
            self.enc.replay_token(self.plan(ids=True).plan, self._ids1, int(token), int(pos))
            self._argmax1.download_into(self._id1)
            if self._id1[0] < 0:   # the logits hold a NaN or an infinity
                self._diagnose([int(token)], int(pos))
            return int(self._id1[0])
        self.enc.replay_token(self.plan().plan, self._ids1, int(token), int(pos))
        self._out1.download_into(self._logits1)
        if not finite_head(self._logits1):
            self._diagnose([int(token)], int(pos))
        return self._logits1

    # ---- several sequences in one step ---------------------------------------------------
    def _bucket(self, n: int, cap: int) -> int:
        """The rows a step of n rows runs as, so that a few recorded plans serve every batch: the
        next power of two (capped); on the CPU, past 16, the next multiple of 16 (a CPU plan is
        only a command list, cheap to keep many of, while each padding row costs a real row's
        work: a 41-token prompt ran as 64 rows). A single-sequence model (no padding row) runs n."""
        if self.n_seq == 1:
            return n
        b = 1
        while b < n:
            b *= 2
        if self.device_name == "cpu" and b > 16:
            b = (n + 15) // 16 * 16
        return max(n, min(b, cap))

    def _step_plan(self, T: int, R: int, ids: bool = False) -> DecodePlan:
        """The recorded forward pass of a step of T rows of several sequences whose last R rows
        give logits (and, with ids, their argmax; recorded once per (T, R, ids), then replayed)."""
        key = (T, R, ids)
        if key not in self._step_plans:
            rows = np.zeros((T, 2), dtype=np.int32)
            rows[:, 1] = self.scratch_row if self.n_seq > 1 else 0
            self.enc.begin_record(T)
            self._plan_steps = []
            try:
                self.forward([0] * T, 0, R, rows=rows, ids=ids)   # tokens and rows come from buffers at replay
            finally:
                plan, steps, self._plan_steps = self.enc.end_record(), self._plan_steps, None
            self._step_plans[key] = DecodePlan(self, plan, steps)
            self.n_recorded += 1
        return self._step_plans[key]

    def step_rows_max(self) -> int:
        """The most rows one step takes."""
        return min(self.n_batch, E.STEP_MAX_ROWS)

    def _check_rows(self, rows):
        """Model.step's rows, one by one: the first bad value named."""
        seen = set()
        for seq, tok, pos in rows:
            for name, v in (("sequence", seq), ("token", tok), ("position", pos)):
                if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
                    raise ValueError(f"the {name} of a row must be an integer, got {v!r}")
            if not 0 <= seq < self.n_seq:
                raise ValueError(f"sequence {seq} outside 0..{self.n_seq - 1} (n_seq {self.n_seq})")
            if not 0 <= pos < self.n_ctx:
                raise ValueError(f"context overflow: position {pos} >= n_ctx {self.n_ctx} of sequence {seq}")
            if not 0 <= tok < self.cfg.n_vocab:
                raise ValueError(f"token id {tok} outside the vocabulary of {self.cfg.n_vocab}")
            if (seq, pos) in seen:
                raise ValueError(f"sequence {seq} has two rows at position {pos}")
            seen.add((seq, pos))

    @serialized
    def step(self, rows, want=None, eager: bool = False, ids: bool = False) -> np.ndarray:
        """One forward pass over a batch that mixes sequences: rows = [(seq, token, pos), ...]
        (decode rows of several sequences, prompt chunks of others; a sequence's rows before pos
        must be in the cache or earlier in this batch). Each row attends only to its own
        sequence's positions <= pos. want: the indices of the rows whose logits to return
        (default: all rows; at most n_out; [] for none). Returns the logits [len(want), vocab]
        in a buffer the next step reuses, as decode_step does (copy to keep; eager=True returns
        a new array): a new array of a few MB every step cost more than the copy itself, in page
        faults.

        Runs a plan recorded for the batch size (the next power of two when n_seq > 1, padded
        with rows that write only a scratch cache row); eager=True runs the same forward pass
        stage by stage (for checking).

        ids=True: greedy sampling on the device instead: the plan ends with the argmax of each
        wanted row's logits, and the step returns those ids, int32 [len(want)] (R int32s
        downloaded, not R rows of logits); a row whose logits hold a NaN or an infinity raises
        NonFiniteError, as the logits check does.
        """
        n = len(rows)
        if not 0 < n <= self.step_rows_max():
            raise ValueError(f"a step takes 1..{self.step_rows_max()} rows, got {n}")
        want = list(range(n)) if want is None else [int(i) for i in want]
        if len(want) > self.n_out or any(not 0 <= i < n for i in want) or len(set(want)) < len(want):
            raise ValueError(f"want must name at most {self.n_out} distinct rows of the {n}")
        # The common case on arrays: rows of three plain ints, all in range. Anything else goes
        # through _check_rows, which names the culprit (its Python loop costs ~5 us a row).
        a = None
        if all(len(r) == 3 and type(r[0]) is int and type(r[1]) is int and type(r[2]) is int for r in rows):
            try:
                a = np.array(rows, dtype=np.int64)
            except OverflowError:   # an int past 64 bits: out of range, named below
                a = np.zeros((n, 3), dtype=np.int64) - 1
            sq, tk, ps = a[:, 0], a[:, 1], a[:, 2]
            if not ((sq >= 0).all() and (sq < self.n_seq).all() and (ps >= 0).all() and (ps < self.n_ctx).all()
                    and (tk >= 0).all() and (tk < self.cfg.n_vocab).all()
                    and len(np.unique(sq * self.n_ctx + ps)) == n):
                a = None
        if a is None:
            self._check_rows(rows)
            a = np.array(rows, dtype=np.int64).reshape(n, 3)
        # Padding rows first, then the rows without logits, then the wanted ones: the plan
        # computes the logits of its last R rows (rows of a batch may come in any order: every
        # row's K/V is stored before any row attends).
        wanted = set(want)
        order = np.array([i for i in range(n) if i not in wanted] + want, dtype=np.int64)
        T = self._bucket(n, self.step_rows_max())
        nw = max(len(want), 1)     # a step of prompt rows only still computes one row's logits
        R = max(min(self._bucket(nw, self.n_out), T) if self.n_seq > 1 else nw, nw)
        pad = T - n
        tokens = np.zeros(T, dtype=np.int32)
        rr = np.zeros((T, 2), dtype=np.int32)
        rr[:pad, 1] = self.scratch_row
        tokens[pad:] = a[order, 1]
        rr[pad:, 0] = a[order, 2]
        rr[pad:, 1] = a[order, 0] * self.n_ctx
        if ids:   # greedy on the device: the wanted rows' ids, not their logits
            return self._step_ids(tokens, rr, T, R, len(want), eager)
        if eager:
            self.hook = lambda *a: None
            try:
                out = self.forward(tokens.tolist(), 0, R, rows=rr).to_numpy()
            finally:
                self.hook = None
        else:
            plan = self._step_plan(T, R)
            self.enc.replay_rows(plan.plan, self.full["ids"].rows(0, T), tokens, rr)
            if self._logits_n is None:
                self._logits_n = self.device.host_empty(self.n_out * self.cfg.n_vocab)
            out = self._logits_n[:len(want) * self.cfg.n_vocab].reshape(len(want), self.cfg.n_vocab)
            self.full["logits"].rows(R - len(want), R).download_into(out)   # only the wanted rows
        if eager:
            out = out[R - len(want):]   # to_numpy downloads into a new array: a view of it is the caller's
        if not np.isfinite(out[:, :256]).all():   # per row, as finite_head
            raise NonFiniteError("the logits of a step of several sequences are not finite "
                                 "(run the sequences alone, or step(eager=True), to name the stage)")
        return out

    def _step_ids(self, tokens, rr, T: int, R: int, n_want: int, eager: bool) -> np.ndarray:
        """step(ids=True) once its batch is laid out (tokens [T], rows rr [T, 2], the wanted rows
        last): the forward pass ending with the argmax stage, planned or eager; returns the ids
        of the last n_want rows, int32 [n_want] (a new array)."""
        if eager:
            self.hook = lambda *a: None
            try:
                out = self.forward(tokens.tolist(), 0, R, rows=rr, ids=True).to_numpy()[R - n_want:]
            finally:
                self.hook = None
        else:
            self.enc.replay_rows(self._step_plan(T, R, True).plan, self.full["ids"].rows(0, T), tokens, rr)
            out = self.full["argmax"].rows(R - n_want, R).to_numpy()
        if (out < 0).any():   # the argmax met a NaN or an infinity in those rows' logits
            raise NonFiniteError(f"the logits of a step of several sequences are not finite ({int((out < 0).sum())} "
                                 f"of {n_want} rows hold a NaN or an infinity; run the sequences alone, or "
                                 "step(eager=True), to name the stage)")
        return out

    def step_plan(self, n_rows: int, n_logits: int = 1, ids: bool = False) -> DecodePlan:
        """The recorded step of n_rows rows of several sequences (its last n_logits with logits;
        ids: and their argmax, step(ids=True)), as the device runs it: the same stages and names
        as plan()."""
        with self.lock:
            T = self._bucket(n_rows, self.step_rows_max())
            return self._step_plan(T, n_logits, ids)

    def _diagnose(self, tokens, pos0):
        """Logits came out non-finite: run the same tokens again eagerly (the KV cache rows they
        write are rewritten with the same values) so that NonFiniteError names the first stage."""
        self.run_eager(tokens, lambda *a: None, "last", pos0)
        raise NonFiniteError(f"the logits of positions {pos0}..{pos0 + len(tokens) - 1} are not finite, "
                             "though every stage was when run again eagerly")

    # ---- convenience ----------------------------------------------------------------------
    def _check_tokens(self, tokens, pos0=0):
        ids = np.asarray(tokens)
        if ids.ndim != 1 or (ids.size and ids.dtype.kind not in "iu"):   # bools, floats, strings
            bad = next((t for t in np.ravel(ids) if isinstance(t, (bool, np.bool_)) or
                        not isinstance(t, (int, np.integer))), ids)
            raise ValueError(f"token ids must be integers, got {bad!r}")
        if not ids.size:
            raise ValueError("no tokens to run")
        if pos0 + ids.size > self.n_ctx:
            raise ValueError(f"context overflow: {pos0 + ids.size} tokens > n_ctx {self.n_ctx}")
        if ids.min() < 0 or ids.max() >= self.cfg.n_vocab:
            bad = ids[(ids < 0) | (ids >= self.cfg.n_vocab)][0]
            raise ValueError(f"token id {bad} outside the vocabulary of {self.cfg.n_vocab}")
        return ids.tolist()

    @serialized
    def prefill(self, tokens, pos0: int = 0, progress=None) -> np.ndarray:
        """Run a prompt in chunks of n_batch; returns the last token's logits [vocab].
        progress(done, total) is called after each chunk."""
        tokens = self._check_tokens(tokens, pos0)
        for i in range(0, len(tokens), self.n_batch):
            if progress is not None:
                progress(i, len(tokens))
            chunk = tokens[i:i + self.n_batch]
            last = self.forward(chunk, pos0 + i, "last").to_numpy()[-1]
            if not finite_head(last):
                self._diagnose(chunk, pos0 + i)
        return last

    @serialized
    def logits(self, tokens) -> np.ndarray:
        """Logits [T, vocab] of every position of `tokens` in a fresh context."""
        tokens = self._check_tokens(tokens)
        step = min(self.n_batch, self.n_out)
        rows = []
        for i in range(0, len(tokens), step):
            rows.append(self.forward(tokens[i:i + step], i, "all").to_numpy())
            if not np.isfinite(rows[-1]).all():
                self._diagnose(tokens[i:i + step], i)
        return np.concatenate(rows, axis=0)

    def _probs(self, T, pos0):
        """The kq_soft_max output [n_head, T, pos0 + T] (inspection only: a buffer of its own,
        grown as needed, never part of the pool the fast path uses)."""
        shape = [self.cfg.n_head, T, pos0 + T]
        nbytes = 4 * shape[0] * shape[1] * shape[2]
        if self._probs_buf is None or self._probs_buf.bytes < nbytes:
            self._probs_buf = self.device.alloc(nbytes, "kq_soft_max")
        return E.Tensor(self._probs_buf, 0, F32, shape)

    def inspection_names(self) -> list[str]:
        """stage_names() plus the eager-only outputs: blk.N.kq_soft_max, the attention
        probabilities [head, query, key] (computed only when asked for by name)."""
        return self.stage_names() + [f"blk.{il}.kq_soft_max" for il in range(self.cfg.n_layer)]

    def _probs_for(self, names):
        layers = {int(n.split(".")[1]) for n in names if n.endswith(".kq_soft_max")}
        return layers or None

    @serialized
    def run_with_cache(self, tokens, names=None):
        """Logits of every position and copies of the named intermediate activations.

        names: e.g. ["blk.0.attn_norm", "blk.3.Qcur", "blk.3.kq_soft_max", "result_output"];
        None keeps every stage of stage_names() (kq_soft_max only when named).
        Runs eagerly (one commit per stage) in one batch of len(tokens) <= min(n_batch, n_out).
        """
        tokens = self._check_tokens(tokens)
        if len(tokens) > min(self.n_batch, self.n_out):
            raise ValueError(f"run_with_cache takes at most {min(self.n_batch, self.n_out)} tokens")
        want = None if names is None else set(names)
        if want is not None:
            missing = want - set(self.inspection_names())
            if missing:
                raise KeyError(f"no stage named {sorted(missing)[0]!r} in this model")
        cache = {}

        def keep(name, il, out, weight):
            key = name if il < 0 else f"blk.{il}.{name}"
            if want is None or key in want:
                cache[key] = out.to_numpy()
        self.probs_layers = self._probs_for(want or ())
        try:
            logits = self.run_eager(tokens, keep, out_rows="all").to_numpy()
        finally:
            self.probs_layers = None
        return logits, cache

    @serialized
    def run_with_hooks(self, tokens, hooks: dict) -> np.ndarray:
        """Logits [T, vocab] of `tokens` (a fresh context, one eager batch) with hooks on named
        stage outputs: hooks={"blk.3.Qcur": fn, ...}, fn(act, name) -> None (look only) or an
        array of act's shape that replaces the output before the next stage reads it (stages that
        work in place -- rope, the Q/K norms, post-norms, adds -- are patched after they ran).
        kv_store's output is the KV cache: patch Kcur_rope or Vcur instead."""
        tokens = self._check_tokens(tokens)
        if len(tokens) > min(self.n_batch, self.n_out):
            raise ValueError(f"run_with_hooks takes at most {min(self.n_batch, self.n_out)} tokens")
        unknown = sorted(set(hooks) - set(self.inspection_names()))
        if unknown:
            raise KeyError(f"no stage named {unknown[0]!r} in this model")

        def patch(name, il, out, weight):
            key = name if il < 0 else f"blk.{il}.{name}"
            fn = hooks.get(key)
            if fn is None:
                return
            act = out.to_numpy()
            new = fn(act, key)
            if new is None:
                return
            if name == "kv_store":
                raise ValueError(f"{key}: kv_store writes the KV cache; patch Kcur_rope or Vcur instead")
            if name == "kq_soft_max":
                raise ValueError(f"{key}: the attention probabilities are an inspection output; "
                                 "patch Qcur_rope or Kcur_rope instead")
            new = np.asarray(new, dtype=np.float32)
            if new.shape != act.shape:
                raise ValueError(f"{key}: the patch has shape {new.shape}, the activation {act.shape}")
            out.upload(np.ascontiguousarray(new))
        self.probs_layers = self._probs_for(hooks)
        try:
            return self.run_eager(tokens, patch, out_rows="all").to_numpy()
        finally:
            self.probs_layers = None

    @serialized
    def unembed(self, resid: np.ndarray) -> np.ndarray:
        """Logits [R, vocab] of residual-stream rows [R, n_embd] put through the final norm and
        the output projection on the device (the model's own result_norm / result_output
        kernels; the logit lens)."""
        resid = np.ascontiguousarray(resid, dtype=np.float32)
        R = resid.shape[0]
        if resid.ndim != 2 or resid.shape[1] != self.cfg.n_embd or not 0 < R <= min(self.n_batch, self.n_out):
            raise ValueError(f"unembed takes [R, {self.cfg.n_embd}] rows, R <= {min(self.n_batch, self.n_out)}; "
                             f"got {resid.shape}")
        a = self.acts(R, R)
        a.x.upload(resid)
        self.enc.rmsnorm(a.x, self.w["output_norm.weight"], a.xn, self.cfg.rms_eps)
        self.enc.logits(self.w[self.output_name], a.xn, a.logits)
        self.w.take()
        self.enc.commit()
        self.enc.wait()
        return a.logits.to_numpy()

    @serialized
    def run_eager(self, tokens, hook, out_rows="last", pos0=0, ids: bool = False):
        """One forward pass committing after every stage, calling hook(name, layer, out, weight);
        ids: ending with the argmax stage (forward's ids)."""
        self.hook = hook
        try:
            return self.forward(tokens, pos0, out_rows, ids=ids)
        finally:
            self.hook = None


def load(model=None, device: str | None = "cpu", n_ctx: int = 4096, n_threads: int = 0, **kw) -> Model:
    """Load a GGUF model (a path, a known name such as "smollm2", or None for the default)."""
    return Model(model, device=device, n_ctx=n_ctx, n_threads=n_threads, **kw)
