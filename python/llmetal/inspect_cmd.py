"""`python -m llmetal inspect MODEL`: what a GGUF file holds, as tables (rich) or JSON.

Shows the model family and name, file type, tensor count, parameter count, size, the
architecture values the forward pass will use (ModelConfig), the tokenizer (kind, vocab size,
special tokens) and, with --tensors, every tensor (name, type, shape, bytes).
The file is fully validated first (GGUFFile + ModelConfig): a defect raises GGUFError, which
the CLI reports as one `llmetal: error: ...` line with exit status 2. A valid GGUF of an
architecture llmetal cannot run (ModelConfig raises UnsupportedArchitecture) is shown all the
same: its `{arch}.*` metadata as it is, the tokenizer and tensors, and a line saying it cannot
run here and which architectures can.
"""
from __future__ import annotations

import json
from collections import Counter

from gguf import Keys

from .config import SUPPORTED_ARCHS, ModelConfig, UnsupportedArchitecture
from .gguf_file import GGUFFile, file_type_name, quoted
from .models import resolve
from .tokenizer import DETECTED, TokenizerError, build_vocab

# tokenizer.ggml.model -> the kind of tokenizer llama.cpp builds from it
_TOKENIZER_KINDS = {
    "llama": "SPM (SentencePiece)",
    "gpt2": "BPE (byte-level, GPT-2 style)",
    "bert": "WPM (WordPiece)",
    "t5": "UGM (Unigram)",
    "rwkv": "RWKV",
    "no_vocab": "none",
}
# Special-token ids given by metadata keys
_SPECIAL_KEYS = {
    "bos": Keys.Tokenizer.BOS_ID, "eos": Keys.Tokenizer.EOS_ID, "eot": Keys.Tokenizer.EOT_ID,
    "pad": Keys.Tokenizer.PAD_ID, "unk": Keys.Tokenizer.UNK_ID,
}
def _tokenizer_info(gf: GGUFFile) -> dict:
    md = gf.metadata
    tokens = md.get(Keys.Tokenizer.LIST)
    tokens = tokens if isinstance(tokens, list) else []
    model = md.get(Keys.Tokenizer.MODEL)

    def text(i):
        if isinstance(i, int) and 0 <= i < len(tokens):
            return tokens[i]
        return None

    # the tokenizer's own rules (llama.cpp's) decide the ids the metadata does not name
    try:
        vocab = build_vocab(md, str(gf.path))
    except TokenizerError:
        vocab = None   # a tokenizer llmetal cannot build: the metadata's ids only
    special = {}
    for role, key in _SPECIAL_KEYS.items():
        i = md.get(key)
        if isinstance(i, int) and not isinstance(i, bool):
            special[role] = {"id": i, "text": text(i), "source": "metadata"}
        elif vocab is not None and vocab.ids.get(role) is not None:
            i = vocab.ids[role]
            special[role] = {"id": i, "text": text(i), "source": "by text" if role in DETECTED else "default"}
    merges = md.get(Keys.Tokenizer.MERGES)
    return {
        "model": model,
        "kind": _TOKENIZER_KINDS.get(model, f"unknown ({model})") if model else None,
        "pre": md.get(Keys.Tokenizer.PRE),
        "vocab_size": len(tokens),
        "n_merges": len(merges) if isinstance(merges, list) else 0,
        "has_scores": isinstance(md.get(Keys.Tokenizer.SCORES), list),
        "add_bos": md.get(Keys.Tokenizer.ADD_BOS),
        "add_eos": md.get(Keys.Tokenizer.ADD_EOS),
        "add_space_prefix": md.get(Keys.Tokenizer.ADD_PREFIX),
        "special": special,
        "eog": sorted(vocab.eog) if vocab is not None else None,
        "chat_template": isinstance(md.get(Keys.Tokenizer.CHAT_TEMPLATE), str),
    }


def _json_value(v):
    """A metadata value for JSON: bytes never occur in GGUFFile's values, long arrays do."""
    if isinstance(v, list) and len(v) > 64:
        return {"array_len": len(v), "head": v[:8]}
    return v


def describe(gf: GGUFFile, cfg: ModelConfig | None, tensors: bool = False,
             unsupported: str | None = None) -> dict:
    """Everything `inspect` shows, as a JSON-ready dict.

    cfg None: an architecture llmetal cannot run (`unsupported` says why); "architecture" is
    then the file's own `{arch}.*` metadata, keys without the prefix.
    """
    ft = gf.metadata.get(Keys.General.FILE_TYPE)
    if cfg is not None:
        arch = cfg.to_dict()
    else:
        prefix = f"{gf.arch}."
        arch = {k[len(prefix):]: _json_value(v) for k, v in gf.metadata.items() if k.startswith(prefix)}
    info = {
        "path": str(gf.path),
        "family": cfg.arch if cfg is not None else gf.arch,
        "name": cfg.name if cfg is not None else str(gf.metadata.get(Keys.General.NAME) or gf.path.stem),
        "runnable": cfg is not None,
        "unsupported": unsupported,
        "file_type": file_type_name(ft),
        "gguf_version": gf.version,
        "file_size": gf.file_size,
        "alignment": gf.alignment,
        "data_offset": gf.data_offset,
        "n_tensors": len(gf.tensors),
        "n_params": gf.n_params,
        "tensor_bytes": gf.tensor_data_bytes,
        "bits_per_weight": round(8 * gf.tensor_data_bytes / max(1, gf.n_params), 3),
        "tensor_types": dict(Counter(t.type_name for t in gf.tensors.values()).most_common()),
        "n_metadata": len(gf.metadata),
        "architecture": arch,
        "tokenizer": _tokenizer_info(gf),
    }
    if tensors:
        info["tensors"] = [{"name": t.name, "type": t.type_name, "shape": list(t.shape),
                            "bytes": t.nbytes, "offset": t.offset}
                           for t in gf.tensors.values()]
    return info


def _human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024


def _human_count(n: int) -> str:
    for div, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.2f}{suffix}"
    return str(n)


def _swa_summary(flags: list[bool]) -> str:
    if not any(flags):
        return "none"
    glob = [i for i, f in enumerate(flags) if not f]
    return f"{sum(flags)} of {len(flags)} sliding-window; global: {glob}"


def print_rich(info: dict, console=None):
    """Print describe()'s dict as tables. Every value is passed as rich Text, never parsed as
    markup: names and token texts come from the file and may contain '[...]'."""
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = console or Console()
    arch, tok = info["architecture"], info["tokenizer"]

    def kv_table(title):
        t = Table(title=title, box=box.SIMPLE, show_header=False, title_justify="left",
                  title_style="bold")
        t.add_column(style="cyan", no_wrap=True)
        t.add_column()
        add = t.add_row
        t.add_row = lambda *cells: add(*(Text(str(c)) for c in cells))
        return t

    t = kv_table("Model")
    t.add_row("file", info["path"])
    t.add_row("family", info["family"])
    t.add_row("name", str(info["name"]))
    t.add_row("file type", str(info["file_type"]))
    t.add_row("GGUF version", str(info["gguf_version"]))
    t.add_row("tensors", str(info["n_tensors"]))
    t.add_row("parameters", f"{info['n_params']:,} ({_human_count(info['n_params'])})")
    t.add_row("size", f"{info['file_size']:,} bytes ({_human_bytes(info['file_size'])}), "
                      f"{info['bits_per_weight']} bits/weight")
    t.add_row("tensor types", ", ".join(f"{k} x{v}" for k, v in info["tensor_types"].items()))
    t.add_row("runs in llmetal", "yes" if info["runnable"] else f"no: {info['unsupported']}")
    console.print(t)

    t = kv_table("Architecture" if info["runnable"] else f"Architecture ({info['family']}.* metadata)")
    for k, v in arch.items():
        if k in ("arch", "name"):
            continue
        if k == "layer_is_swa":
            v = _swa_summary(v)
        elif isinstance(v, dict) and "array_len" in v:
            v = f"array of {v['array_len']}: {v['head']} ..."
        elif isinstance(v, float):
            v = f"{v:.7g}"
        t.add_row(k, str(v))
    console.print(t)

    t = kv_table("Tokenizer")
    t.add_row("model", f"{tok['model']} -> {tok['kind']}" if tok["model"] else "(none)")
    t.add_row("pre-tokenizer", str(tok["pre"]))
    t.add_row("vocab size", str(tok["vocab_size"]))
    if tok["n_merges"]:
        t.add_row("merges", str(tok["n_merges"]))
    for flag in ("add_bos", "add_eos", "add_space_prefix"):
        t.add_row(flag, "(not set)" if tok[flag] is None else str(tok[flag]))
    for role in ("bos", "eos", "eot", "pad", "unk"):
        s = tok["special"].get(role)
        if s is None:
            t.add_row(role, "(none)")
        else:
            extra = " (found by text)" if s["source"] == "by text" else ""
            t.add_row(role, f"{s['id']} {s['text']!r}{extra}")
    t.add_row("chat template", "yes" if tok["chat_template"] else "no")
    console.print(t)

    if "tensors" in info:
        t = Table(title="Tensors", box=box.SIMPLE, title_justify="left", title_style="bold")
        t.add_column("name", style="cyan", no_wrap=True)
        t.add_column("type")
        t.add_column("shape (numpy order)", justify="right")
        t.add_column("bytes", justify="right")
        for row in info["tensors"]:
            t.add_row(Text(row["name"]), row["type"], " x ".join(map(str, row["shape"])),
                      f"{row['bytes']:,}")
        console.print(t)


def run(model, tensors: bool = False, as_json: bool = False) -> int:
    """Inspect MODEL (a path, a known name, or None for the default model); exit code 0."""
    gf = GGUFFile(resolve(model))
    try:
        cfg, unsupported = ModelConfig.from_gguf(gf), None
    except UnsupportedArchitecture as e:
        # readable, not runnable (the model line shows the path, so the reason leaves it out)
        cfg, unsupported = None, (f"unknown architecture {quoted(e.arch)} "
                                  f"(supported: {', '.join(SUPPORTED_ARCHS)})")
    info = describe(gf, cfg, tensors=tensors, unsupported=unsupported)
    if as_json:
        print(json.dumps(info, indent=2, ensure_ascii=False))
    else:
        print_rich(info)
    return 0
