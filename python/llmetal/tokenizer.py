"""Tokenizers read from a GGUF file, giving the same token ids as llama.cpp.

Two kinds, chosen by `tokenizer.ggml.model`:

- ``gpt2``: byte-level BPE. The text is first cut by a *pre-tokenizer* chosen by
  `tokenizer.ggml.pre` (which regex splits words, digits, punctuation and whitespace), then
  each piece is written in GPT-2's byte alphabet and merged pair by pair in the order of
  `tokenizer.ggml.merges` (lowest rank first, leftmost on ties).
- ``llama``: SentencePiece vocabulary with scores (Gemma, Llama 2, Mistral v0.1). Spaces
  become U+2581; adjacent pieces are merged while their concatenation is a vocabulary entry,
  highest score first; what is left over falls back to `<0xNN>` byte tokens.

Before either runs, *special tokens* are cut out of the text as whole tokens: user-defined
tokens always (e.g. Gemma's runs of spaces and HTML tags), control tokens such as
`<|im_start|>` only with ``parse_special=True``.

SentencePiece note: the `sentencepiece` library is not used. llama.cpp does not run
SentencePiece itself but its own merge loop over the GGUF vocabulary, and the two differ
where it matters for identical ids: llama.cpp lets any vocabulary entry (control, unused and
`<0xNN>` entries included) be formed by a merge, it cuts user-defined tokens out before
merging, and it prefixes a space after every special token when `add_space_prefix` is set.
So llama.cpp's algorithm is implemented (cpp/tokenizer/tokenizer.cpp).

Where the work happens: this module reads the metadata and decides every token's attributes
and the special ids, following llama.cpp's rules (including its text-based detection of
end-of-turn and fill-in-the-middle tokens); the engine (`_engine.Tokenizer`, C++) does the
special-token partition, the pre-tokenizer split, the merge loops and the token -> bytes
pieces, which is what makes encoding a megabyte take well under a second.
"""
from __future__ import annotations

import codecs
import os
from dataclasses import dataclass, field

# ggml token types (tokenizer.ggml.token_type) -> attribute bits (llama.cpp's llama_token_attr)
ATTR_UNKNOWN, ATTR_UNUSED, ATTR_NORMAL, ATTR_CONTROL = 1, 2, 4, 8
ATTR_USER_DEFINED, ATTR_BYTE, ATTR_LSTRIP, ATTR_RSTRIP = 16, 32, 128, 256
_TYPE_TO_ATTR = {0: 0, 1: ATTR_NORMAL, 2: ATTR_UNKNOWN, 3: ATTR_CONTROL, 4: ATTR_USER_DEFINED,
                 5: ATTR_UNUSED, 6: ATTR_BYTE}


class TokenizerError(ValueError):
    """A GGUF whose tokenizer cannot be used, or bad input; the message says what is wrong."""


@dataclass(frozen=True)
class _PreTokenizer:
    family: str               # the split rules the engine runs: default gpt2 smollm llama3 qwen2 tekken
    clean_spaces: bool = True  # decode removes the space before ?!., (clean_up_tokenization_spaces)
    ignore_merges: bool = False  # a pre-token that is itself a vocab entry is not merged
    add_bos: bool = False     # default for tokenizer.ggml.add_bos_token when the GGUF has none


# tokenizer.ggml.pre -> pre-tokenizer, as llama.cpp maps these names (llama-vocab.cpp).
PRE_TOKENIZERS: dict[str, _PreTokenizer] = {
    "default": _PreTokenizer("default"),
    "gpt-2": _PreTokenizer("gpt2"),
    "phi-2": _PreTokenizer("gpt2"),
    "smollm": _PreTokenizer("smollm", clean_spaces=False),
    "starcoder": _PreTokenizer("smollm"),
    "refact": _PreTokenizer("smollm"),
    "llama3": _PreTokenizer("llama3", ignore_merges=True, add_bos=True),
    "llama-v3": _PreTokenizer("llama3", ignore_merges=True, add_bos=True),
    "llama-bpe": _PreTokenizer("llama3", ignore_merges=True, add_bos=True),
    "falcon3": _PreTokenizer("llama3", ignore_merges=True, add_bos=True),
    "pixtral": _PreTokenizer("llama3", ignore_merges=True, add_bos=True),
    "dbrx": _PreTokenizer("llama3"),
    "smaug-bpe": _PreTokenizer("llama3"),
    "qwen2": _PreTokenizer("qwen2", clean_spaces=False),
    "deepseek-r1-qwen": _PreTokenizer("qwen2", clean_spaces=False),
    "stablelm2": _PreTokenizer("qwen2"),
    "tekken": _PreTokenizer("tekken", clean_spaces=False, ignore_merges=True, add_bos=True),
}

# Token texts llama.cpp treats as end of generation (and marks as control tokens).
_EOG_TEXTS = {
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
    "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
    "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
    "<｜end▁of▁sentence｜>", "[e~[",
}
# Texts by which llama.cpp finds special ids the GGUF does not name (first match wins).
DETECTED = {
    "eot": ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>",
            "<EOT>", "_<EOT>", "[EOT]", "<｜end▁of▁sentence｜>", "<end_of_utterance>"),
    "eom": ("<|eom_id|>",),
    "fim_pre": ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>", "▁<PRE>",
                "<|code_prefix|>", "<|prefix|>"),
    "fim_suf": ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>", "▁<SUF>",
                "<|code_suffix|>", "<|suffix|>"),
    "fim_mid": ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>", "▁<MID>",
                "<|code_middle|>", "<|middle|>"),
    "fim_pad": ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"),
    "fim_rep": ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
    "fim_sep": ("<|file_sep|>",),
}
# GGUF keys of special ids (note GGUF's spelling "seperator").
_ID_KEYS = {
    "bos": "tokenizer.ggml.bos_token_id", "eos": "tokenizer.ggml.eos_token_id",
    "eot": "tokenizer.ggml.eot_token_id", "eom": "tokenizer.ggml.eom_token_id",
    "unk": "tokenizer.ggml.unknown_token_id", "sep": "tokenizer.ggml.seperator_token_id",
    "pad": "tokenizer.ggml.padding_token_id", "mask": "tokenizer.ggml.mask_token_id",
    "fim_pre": "tokenizer.ggml.fim_pre_token_id", "fim_suf": "tokenizer.ggml.fim_suf_token_id",
    "fim_mid": "tokenizer.ggml.fim_mid_token_id", "fim_pad": "tokenizer.ggml.fim_pad_token_id",
    "fim_rep": "tokenizer.ggml.fim_rep_token_id", "fim_sep": "tokenizer.ggml.fim_sep_token_id",
}


def _read_vocab(src) -> dict:
    """The GGUF metadata (a dict key -> value) of a path, a GGUFFile or a gguf.GGUFReader."""
    if isinstance(src, (str, os.PathLike)):
        from .gguf_file import GGUFFile
        return GGUFFile(src).metadata
    if hasattr(src, "metadata") and isinstance(src.metadata, dict):  # llmetal GGUFFile
        return src.metadata
    if hasattr(src, "fields"):  # gguf.GGUFReader
        return {k: f.contents() for k, f in src.fields.items() if not k.startswith("GGUF.")}
    raise TokenizerError(f"Tokenizer.from_gguf: expected a path or an opened GGUF, got {type(src).__name__}")


@dataclass
class Vocab:
    """Everything decided from the metadata, before the engine builds its tables."""
    model: str                      # "bpe" or "spm"
    pre_name: str
    pre: _PreTokenizer
    tokens: list[str]
    attrs: list[int]
    scores: list[float]
    merges: list[str]
    ids: dict[str, int | None]
    add_bos: bool
    add_eos: bool
    add_space_prefix: bool
    eog: set[int] = field(default_factory=set)


def build_vocab(md: dict, where: str = "GGUF") -> Vocab:
    """Apply llama.cpp's rules to the tokenizer.* metadata."""
    kind = md.get("tokenizer.ggml.model")
    if kind is None:
        raise TokenizerError(f"{where}: no tokenizer.ggml.model in the metadata (no tokenizer)")
    tokens = md.get("tokenizer.ggml.tokens")
    if not tokens:
        raise TokenizerError(f"{where}: tokenizer.ggml.tokens is missing or empty")
    n = len(tokens)
    types = md.get("tokenizer.ggml.token_type")
    if types is not None and len(types) < n:
        raise TokenizerError(f"{where}: tokenizer.ggml.token_type has {len(types)} entries for {n} tokens")
    scores = md.get("tokenizer.ggml.scores")
    if scores is not None and len(scores) < n:
        raise TokenizerError(f"{where}: tokenizer.ggml.scores has {len(scores)} entries for {n} tokens")
    attrs = [_TYPE_TO_ATTR.get(int(t), 0) for t in types[:n]] if types is not None else [ATTR_NORMAL] * n
    scores = [float(s) for s in scores[:n]] if scores is not None else []

    pre_name = md.get("tokenizer.ggml.pre") or "default"
    if kind == "gpt2":
        model = "bpe"
        merges = md.get("tokenizer.ggml.merges")
        if merges is None:
            raise TokenizerError(f"{where}: BPE tokenizer without tokenizer.ggml.merges")
        pre = PRE_TOKENIZERS.get(pre_name)
        if pre is None:
            raise TokenizerError(f"{where}: unknown pre-tokenizer tokenizer.ggml.pre = {pre_name!r} "
                                 f"(supported: {', '.join(sorted(PRE_TOKENIZERS))})")
        ids = {"bos": 11, "eos": 11}
        add_bos, add_space_prefix = pre.add_bos, False
    elif kind == "llama":
        model, merges = "spm", []
        pre = _PreTokenizer("default", clean_spaces=False)  # not used by SPM; only clean_spaces matters
        ids = {"bos": 1, "eos": 2, "unk": 0}
        add_bos, add_space_prefix = True, True
    else:
        raise TokenizerError(f"{where}: tokenizer.ggml.model = {kind!r} is not supported "
                             "(supported: 'gpt2' byte-level BPE, 'llama' SentencePiece)")

    # Special ids: defaults, dropped when out of range, then the GGUF's own (when in range).
    ids = {k: (v if v is not None and 0 <= v < n else None) for k, v in ids.items()}
    for name, key in _ID_KEYS.items():
        v = md.get(key)
        if v is not None and 0 <= int(v) < n:
            ids[name] = int(v)
        else:
            ids.setdefault(name, None)
    add_bos = bool(md.get("tokenizer.ggml.add_bos_token", add_bos))
    add_eos = bool(md.get("tokenizer.ggml.add_eos_token", False))
    add_space_prefix = bool(md.get("tokenizer.ggml.add_space_prefix", add_space_prefix))

    v = Vocab(model, pre_name, pre, list(tokens), attrs, scores, list(merges), ids, add_bos, add_eos,
              add_space_prefix)
    _fix_special_tokens(v)
    return v


def _fix_special_tokens(v: Vocab) -> None:
    """llama.cpp's text-based fix-ups of special ids, attributes and the end-of-generation set."""
    text_to_id = {t: i for i, t in enumerate(v.tokens)}  # a repeated text maps to its last id
    by_id = sorted(text_to_id.items(), key=lambda kv: kv[1])

    def mark_control(i):
        v.attrs[i] |= ATTR_CONTROL

    # ids the GGUF does not name, found by their text; the token becomes a control token
    for name, texts in DETECTED.items():
        if v.ids.get(name) is None:
            for t, i in by_id:
                if t in texts:
                    v.ids[name] = i
                    mark_control(i)
                    break
    # control tokens named like "<unused12>" are unused
    for t, i in by_id:
        if v.attrs[i] & ATTR_CONTROL and "unused" in t:
            v.attrs[i] |= ATTR_UNUSED
    # end of generation: fill-in-the-middle pad/repo/separator, the usual end-of-turn texts,
    # and eos / eot / eom
    eog = {v.ids[k] for k in ("fim_pad", "fim_rep", "fim_sep") if v.ids.get(k) is not None}
    for t, i in by_id:
        if t in _EOG_TEXTS:
            eog.add(i)
            mark_control(i)
    for t in ("<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"):  # gpt-oss: always rendered
        if t in text_to_id:
            v.attrs[text_to_id[t]] = ATTR_USER_DEFINED
    eog |= {v.ids[k] for k in ("eos", "eot", "eom") if v.ids.get(k) is not None}
    texts = {v.tokens[i]: i for i in eog}
    # gpt-oss / solar-open: "<|end|>" ends a message, not the generation
    if "<|end|>" in texts and (("<|return|>" in texts and "<|call|>" in texts) or
                               ("<|calls|>" in texts and "<|flush|>" in texts)):
        eog.discard(texts["<|end|>"])
        v.attrs[texts["<|end|>"]] = ATTR_USER_DEFINED
    # gemma4 / plamo: "</s>" is a normal token there
    if "</s>" in texts and ("<|tool_response>" in texts or "<|plamo:eos|>" in texts):
        eog.discard(texts["</s>"])
        v.attrs[texts["</s>"]] = ATTR_NORMAL
    v.eog = eog


class IncrementalDecoder:
    """Turns token ids into text as they are generated, never emitting half a UTF-8 character.

    ``add(id)`` returns the text that became complete with this token (possibly ""),
    ``flush()`` the rest (an incomplete trailing sequence comes out as U+FFFD). Control
    tokens produce no text unless ``special=True``. Like llama.cpp's streaming output, the
    pieces are concatenated as they are: the space clean-up of `decode` is not applied.
    """

    def __init__(self, tok: "Tokenizer", special: bool = False):
        self._tok = tok
        self._special = special
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._first = True

    def add(self, token_id: int) -> str:
        tok = self._tok
        piece = tok._engine.piece(int(token_id))
        if not self._special and tok._engine.attr(int(token_id)) & (ATTR_CONTROL | ATTR_UNKNOWN):
            piece = b""
        if self._first:
            self._first = False
            # SentencePiece with add_space_prefix: the first token's leading space is not text
            if tok.vocab.add_space_prefix and piece.startswith(b" "):
                piece = piece[1:]
        return self._utf8.decode(piece)

    def flush(self) -> str:
        return self._utf8.decode(b"", final=True)


class Tokenizer:
    """A GGUF model's tokenizer. Build with `Tokenizer.from_gguf(path_or_gguf)`."""

    def __init__(self, vocab: Vocab, chat_template: str | None = None, name: str = "GGUF"):
        from . import _engine
        self.vocab = vocab
        self.chat_template = chat_template
        self.name = name
        ids = vocab.ids
        self._engine = _engine.Tokenizer(
            vocab.model, vocab.pre.family, [t.encode("utf-8") for t in vocab.tokens], vocab.attrs,
            vocab.scores, [m.encode("utf-8") for m in vocab.merges],
            -1 if ids["bos"] is None else ids["bos"], -1 if ids["eos"] is None else ids["eos"],
            vocab.add_bos, vocab.add_eos, vocab.add_space_prefix, vocab.pre.ignore_merges,
            vocab.pre.clean_spaces)

    @classmethod
    def from_gguf(cls, src) -> "Tokenizer":
        """The tokenizer of a GGUF file (a path, a `GGUFFile` or a `gguf.GGUFReader`)."""
        md = _read_vocab(src)
        where = str(src) if isinstance(src, (str, os.PathLike)) else str(getattr(src, "path", "GGUF"))
        return cls(build_vocab(md, where), md.get("tokenizer.chat_template"), where)

    # ------------------------------------------------------------------ properties
    @property
    def vocab_size(self) -> int:
        return len(self.vocab.tokens)

    @property
    def bos_id(self) -> int | None:
        return self.vocab.ids["bos"]

    @property
    def eos_id(self) -> int | None:
        return self.vocab.ids["eos"]

    @property
    def eog_ids(self) -> frozenset[int]:
        """Tokens that end generation: eos, eot, eom and the usual end-of-turn texts."""
        return frozenset(self.vocab.eog)

    @property
    def add_bos(self) -> bool:
        """Whether the model wants BOS prepended (tokenizer.ggml.add_bos_token or its default)."""
        return self.vocab.add_bos

    def is_eog(self, token_id: int) -> bool:
        return token_id in self.vocab.eog

    def token_text(self, token_id: int) -> str:
        """The text a token stands for, as llama-tokenize prints it (control tokens included;
        a lone byte of a multi-byte character shows as U+FFFD)."""
        return self._engine.piece(int(token_id)).decode("utf-8", errors="replace")

    def token_bytes(self, token_id: int) -> bytes:
        """The exact bytes a token stands for."""
        return self._engine.piece(int(token_id))

    def vocab_text(self, token_id: int) -> str:
        """The token's entry in tokenizer.ggml.tokens (e.g. 'Ġthe' or '▁the')."""
        return self.vocab.tokens[self._check_id(token_id)]

    def _check_id(self, token_id) -> int:
        i = int(token_id)
        if not 0 <= i < self.vocab_size:
            raise TokenizerError(f"token id {i} is out of range (vocabulary has {self.vocab_size} tokens)")
        return i

    # ------------------------------------------------------------------ encode / decode
    def encode(self, text: str | bytes, add_bos: bool | None = None, parse_special: bool = False,
               add_eos: bool | None = None) -> list[int]:
        """Token ids of `text`.

        add_bos / add_eos: None = what the GGUF metadata says (like llama-tokenize without
        --no-bos); True / False force it. parse_special: match control-token texts such as
        "<|im_start|>" as single tokens (user-defined tokens are matched either way).
        """
        if isinstance(text, str):
            try:
                data = text.encode("utf-8")
            except UnicodeEncodeError as e:
                raise TokenizerError(f"encode: text is not valid Unicode ({e.reason} at index {e.start})") from None
        elif isinstance(text, (bytes, bytearray, memoryview)):
            data = bytes(text)
        else:
            raise TokenizerError(f"encode: expected str or bytes, got {type(text).__name__}")
        bos = self.vocab.add_bos if add_bos is None else bool(add_bos)
        eos = self.vocab.add_eos if add_eos is None else bool(add_eos)
        if bos and self.bos_id is None:
            raise TokenizerError("encode: add_bos requested but the model has no BOS token")
        if eos and self.eos_id is None:
            raise TokenizerError("encode: add_eos requested but the model has no EOS token")
        return self._engine.encode(data, bos, eos, bool(parse_special))

    def decode_bytes(self, ids, special: bool = False) -> bytes:
        """llama.cpp's detokenize: the pieces joined (control tokens only if `special`), with
        the model's space clean-up."""
        return self._engine.detokenize([self._check_id(i) for i in ids], False, bool(special))

    def decode(self, ids, special: bool = False) -> str:
        """Text of `ids` (invalid UTF-8, e.g. a cut multi-byte character, becomes U+FFFD)."""
        return self.decode_bytes(ids, special).decode("utf-8", errors="replace")

    def decoder(self, special: bool = False) -> IncrementalDecoder:
        """A streaming decoder: `.add(id) -> str`, `.flush() -> str`."""
        return IncrementalDecoder(self, special)

    def split(self, text: str) -> list[str]:
        """The pre-tokenizer's pieces of `text` (BPE; no special-token handling)."""
        return [w.decode("utf-8") for w in self._engine.split(text.encode("utf-8"))]

    # ------------------------------------------------------------------ chat
    def apply_chat_template(self, messages, add_generation_prompt: bool = True, template: str | None = None,
                            **extra) -> str:
        """Render the GGUF's chat template (or `template`) for `messages`."""
        from .chat import render_chat
        tmpl = template if template is not None else self.chat_template
        if tmpl is None:
            raise TokenizerError(f"{self.name}: the model has no tokenizer.chat_template; pass template=...")
        return render_chat(tmpl, messages, bos_token=self._special_text("bos"),
                           eos_token=self._special_text("eos"), add_generation_prompt=add_generation_prompt,
                           **extra)

    def encode_chat(self, messages, add_generation_prompt: bool = True, template: str | None = None,
                    **extra) -> list[int]:
        """Render the chat template and tokenize it (special tokens parsed). The BOS that the
        tokenizer adds is not doubled when the template writes one itself."""
        text = self.apply_chat_template(messages, add_generation_prompt, template, **extra)
        bos_text, eos_text = self._special_text("bos"), self._special_text("eos")
        # as llama.cpp's common_chat_templates_apply: strip the template's own BOS / EOS when
        # the tokenizer adds them
        if self.vocab.add_bos and bos_text and text.startswith(bos_text):
            text = text[len(bos_text):]
        if self.vocab.add_eos and eos_text and text.endswith(eos_text):
            text = text[:-len(eos_text)]
        return self.encode(text, parse_special=True)

    def _special_text(self, name: str) -> str:
        i = self.vocab.ids.get(name)
        return "" if i is None else self.token_text(i)

    def __repr__(self):
        return (f"Tokenizer({self.vocab.model}, pre={self.vocab.pre_name!r}, vocab={self.vocab_size}, "
                f"bos={self.bos_id}, eos={self.eos_id}, add_bos={self.vocab.add_bos})")
