"""A minimal llama forward pass written with the engine's stages, for device tests and benches.

It drives the Encoder directly (embed, rmsnorm, matmul, rope, kv_store, attention, add,
swiglu, logits), so a device can be checked end to end on real weights before -- and
independently of -- the package's model runner. Weights stay in the GGUF's block formats,
addressed at their file offsets in the buffer that `device.map_file` returns.

    m = MiniLlama(device, "model.gguf", n_ctx=256, max_batch=16)
    logits = m.prefill(ids)          # [len(ids), vocab], positions 0..len-1
    plan = m.decode_plan()           # recorded once; a CUDA graph on the cuda device
    row = m.decode(plan, token, pos) # one token through the recorded plan
"""
from __future__ import annotations

import math

import gguf
import numpy as np

from llmetal import _engine as E

F32, F16, I32 = 0, 1, 26


class MiniLlama:
    def __init__(self, dev, path: str, n_ctx: int = 256, max_batch: int = 16):
        r = gguf.GGUFReader(path)
        f = lambda k: r.fields[k].contents()
        arch = f("general.architecture")
        if arch != "llama":
            raise ValueError(f"MiniLlama runs llama-architecture GGUFs, got {arch!r}")
        self.n_layer = f("llama.block_count")
        self.d = f("llama.embedding_length")
        self.n_head = f("llama.attention.head_count")
        self.n_kv = f("llama.attention.head_count_kv")
        self.d_ff = f("llama.feed_forward_length")
        self.eps = float(f("llama.attention.layer_norm_rms_epsilon"))
        self.base = float(f("llama.rope.freq_base"))
        self.hd = self.d // self.n_head
        self.kvd = self.n_kv * self.hd
        self.dev, self.n_ctx, self.max_batch = dev, n_ctx, max_batch

        buf = dev.map_file(path)
        self.w = {t.name: E.Tensor(buf, int(t.data_offset), int(t.tensor_type),
                                   [int(x) for x in reversed(t.shape)]) for t in r.tensors}
        self.out_w = self.w.get("output.weight", self.w["token_embd.weight"])   # tied output
        self.vocab = self.out_w.shape[0]

        p = self.pool = E.BufferPool(dev)
        B = max_batch
        for name, n in [("x", self.d), ("h", self.d), ("q", self.d), ("k", self.kvd), ("v", self.kvd),
                        ("att", self.d), ("o", self.d), ("g", self.d_ff), ("u", self.d_ff),
                        ("a", self.d_ff), ("logits", self.vocab)]:
            p.declare(name, F32, [B, n])
        p.declare("ids", I32, [B])
        for l in range(self.n_layer):
            p.declare(f"K{l}", F16, [n_ctx, self.kvd])
            p.declare(f"V{l}", F16, [n_ctx, self.kvd])
        p.reserve()
        self.enc = E.Encoder(dev, eager=False)

    def t(self, name, T):
        return self.pool.get(name).rows(0, T)

    def record(self, T):
        """The stage calls of one forward pass over T tokens, recorded as a plan."""
        e, t, w = self.enc, self.t, self.w
        e.begin_record(T)
        e.embed(w["token_embd.weight"], self.pool.get("ids").rows(0, T), t("x", T))
        for l in range(self.n_layer):
            b = f"blk.{l}."
            e.rmsnorm(t("x", T), w[b + "attn_norm.weight"], t("h", T), self.eps)
            e.matmul(w[b + "attn_q.weight"], t("h", T), t("q", T))
            e.matmul(w[b + "attn_k.weight"], t("h", T), t("k", T))
            e.matmul(w[b + "attn_v.weight"], t("h", T), t("v", T))
            e.rope(t("q", T), self.n_head, self.hd, E.ROPE_NORM, self.base)
            e.rope(t("k", T), self.n_kv, self.hd, E.ROPE_NORM, self.base)
            e.kv_store(t("k", T), self.pool.get(f"K{l}"))
            e.kv_store(t("v", T), self.pool.get(f"V{l}"))
            e.attention(t("q", T), self.pool.get(f"K{l}"), self.pool.get(f"V{l}"), t("att", T),
                        self.n_head, self.n_kv, 1.0 / math.sqrt(self.hd))
            e.matmul(w[b + "attn_output.weight"], t("att", T), t("o", T))
            e.add(t("x", T), t("o", T), t("x", T))
            e.rmsnorm(t("x", T), w[b + "ffn_norm.weight"], t("h", T), self.eps)
            e.matmul(w[b + "ffn_gate.weight"], t("h", T), t("g", T))
            e.matmul(w[b + "ffn_up.weight"], t("h", T), t("u", T))
            e.swiglu(t("g", T), t("u", T), t("a", T))
            e.matmul(w[b + "ffn_down.weight"], t("a", T), t("o", T))
            e.add(t("x", T), t("o", T), t("x", T))
        e.rmsnorm(t("x", T), w["output_norm.weight"], t("h", T), self.eps)
        e.logits(self.out_w, t("h", T), t("logits", T))
        return e.end_record()

    def prefill(self, ids, pos0=0):
        T = len(ids)
        plan = self.record(T)
        self.pool.get("ids").rows(0, T).upload(np.asarray(ids, np.int32))
        self.enc.replay(plan, pos0)
        return self.t("logits", T).to_numpy()

    def decode_plan(self):
        return self.record(1)

    def decode(self, plan, token, pos, read=True):
        self.enc.replay_token(plan, self.pool.get("ids").rows(0, 1), int(token), int(pos))
        return self.t("logits", 1).to_numpy()[0] if read else None

    def greedy(self, prompt, n_new):
        """Greedy ids and every step's logits row (prefill's last row, then each decode)."""
        rows = [self.prefill(prompt)[-1]]
        ids = [int(np.argmax(rows[-1]))]
        plan = self.decode_plan()
        for i in range(n_new - 1):
            rows.append(self.decode(plan, ids[-1], len(prompt) + i))
            ids.append(int(np.argmax(rows[-1])))
        return ids, np.stack(rows)
