"""Regenerate tests/fixtures/tokenizer/*.json: token ids from llama.cpp's own `llama-tokenize`.

    python scripts/oracle/make_tokenizer_fixtures.py --bin /path/to/llama-tokenize [--jobs 2]

For every string of the stress corpus below and every model, llama-tokenize runs four times
(with / without BOS x special-token parsing on / off), each time on a file holding the string's
exact bytes (`-f FILE --no-escape`: read verbatim, no escape processing). Its default output,
one `id -> 'piece'` per token, gives both the ids and llama.cpp's piece bytes of each token.

Models:
- smollm2 (byte-level BPE, pre-tokenizer "smollm") and gemma3 (SentencePiece), the real files;
- qwen2.5-coder-0.5b (byte-level BPE, pre "qwen2"): the real file's tokenizer keys in a vocab-only
  copy (llama-tokenize loads only the vocabulary, and that copy loads in a moment);
- pre_<name>: SmolLM2's vocabulary with tokenizer.ggml.pre set to another pre-tokenizer
  (default, gpt-2, llama3, qwen2, tekken) and no add_bos_token key (so each pre-tokenizer's
  default applies). These small vocab-only GGUFs (no tensors; llama-tokenize loads only the
  vocabulary) are written to a temporary folder, run on a corpus of strings where the split
  rules differ, and deleted: only the ids are kept.

A fixture stores the text (or its bytes as hex when not valid UTF-8) and, per variant, the ids
(or, for inputs over 2,000 bytes, their count and sha256 to keep files small), plus the piece
bytes of every distinct token seen and whether llama.cpp's pieces join back to the input.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import hashlib
import json
import os
import random
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "tests" / "fixtures" / "tokenizer"
VARIANTS = {  # name -> extra llama-tokenize flags
    "bos+ps": [],
    "bos-ps": ["--no-parse-special"],
    "nobos+ps": ["--no-bos"],
    "nobos-ps": ["--no-bos", "--no-parse-special"],
}
BIG = 2000  # bytes: above this, store a hash of the ids instead of the ids


# ----------------------------------------------------------------------------- corpus

def _code_block() -> str:
    return (
        "def fib(n: int) -> int:\n"
        "    \"\"\"Return the n-th Fibonacci number.\"\"\"\n"
        "    a, b = 0, 1\n"
        "    for _ in range(n):\n"
        "        a, b = b, a + b  # tuple swap\n"
        "    return a\n\n"
        "if __name__ == '__main__':\n\tprint(fib(30), {'k': [1, 2.5e-3, None]})\n"
        "#include <stdio.h>\nint main(void){ for(int i=0;i<10;++i){ printf(\"%d\\n\", i<<2); } return 0; }\n"
        "const re = /^(?:[a-z0-9!#$%&'*+/=?^_`{|}~-]+)@example\\.com$/i;\n"
        "SELECT id, name FROM users WHERE age >= 18 AND name LIKE '%O''Brien%';\n"
        "x => x ** 2 !== undefined ?? null; a &&= b || c; std::vector<std::pair<int,int>> v{};\n"
    )


def _english() -> str:
    return (
        "The quick brown fox jumps over the lazy dog. It's 12:45 p.m. on 2024-03-15, and the "
        "temperature is -3.5°C (that's 25.7°F). \"Don't panic,\" she said; they'd already left. "
        "Prices rose 7% to $1,234.56 -- roughly €1.1k. Visit https://example.org/a/b?c=d&e=f#g "
        "or email info@example.org! WE'LL SEE, YOU'RE RIGHT, I'M SURE.\n"
    )


def corpus_main() -> list:
    """The stress corpus for the real models: str items, and bytes items (invalid UTF-8)."""
    s: list = ["", " ", "a", "A", "Hello", "Hello world", " Hello world", "Hello world ", "hello\n"]
    # whitespace runs, tabs, CR/LF
    s += ["  ", "   ", "    x", "x    ", "a  b   c    d", "\t", "\t\t", "\tx", "x\t\ty", " \t \t ",
          "\n", "\n\n", "\n\n\n\n", "a\nb", "a\n\nb", "a \n b", " \n", "\n ", "\r\n", "a\r\nb\r\n",
          "\r\r\n\n", "\r", "line1\rline2", "  \n  \n", "x" + " " * 40 + "y", "\n" * 40, "\t" * 35,
          "\u00a0", "a\u00a0b", "\u3000中\u3000", "a\u2003b\u2009c", "\x0b\x0c", "\x1c\x1d\x1e\x1f",
          "a\x85b", "a\u2028b\u2029c"]
    # digits and numbers
    s += ["0", "7", "42", "123", "1234", "12345", "123456", "1234567", "12345678901234567890",
          "3.14159", "1,000,000", "-42", "+1e-10", "0x1F4A", "v1.2.3", "2024-03-15T12:00:00Z",
          "٣٤٥٦", "१२३४", "①②③", "Ⅻ Ⅳ", "x²+y³", "½ ¾", "a1b22c333d4444", "  123  ", "99 bottles"]
    # contractions, lower and upper case
    for w in ["don't", "I'm", "we'll", "they're", "you've", "she'd", "it's"]:
        s += [w, w.upper()]
    s += ["'s", "''s", "rock'n'roll", "O'Neil's", "He said 'hi'", "l'été", "'", "''", "'''"]
    # punctuation runs and symbols
    s += ["!!!", "?!?!", "...", "…", "—", "a--b", "(((x)))", "«quote»", "„Anführung“", ";;;",
          "<<>>", "|||", "~~~", "@#$%^&*", "a.b,c;d:e", "[{()}]", "====", "-->", "/* */", "¿Qué?",
          "§¶†‡", "©®™", "→⇒⟶", "∑_{i=1}^{n} x_i² ≤ ∞", "∀x∈ℝ: x≥0", "$$$", "^^", "``"]
    # code and URLs
    s += [_code_block(), "    return x", "\tif (a) {\n\t\tb();\n\t}", "{\"key\": [1, 2, {\"n\": null}]}",
          "<div class=\"a\">x</div>", "ls -la | grep '^d' > out.txt 2>&1", "https://example.com/path?q=1&r=2#frag",
          "mailto:someone@example.org", "www.foo-bar.org/index.html", "C:\\Users\\me\\file.txt",
          "snake_case_name", "camelCaseName", "XMLHttpRequest", "__init__", "a->b::c"]
    # emoji, ZWJ, flags, keycaps
    s += ["😀", "😀😀😀", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇫🇷🇯🇵", "❤️", "1️⃣", "🫠", "🫨", "I ❤️ NY 🗽",
          "👩🏾‍💻 coding"]
    # scripts
    s += ["你好，世界", "日本語のテキストです。", "한국어 문장입니다", "abc中文def", "مرحبا بالعالم",
          "العدد ١٢٣ و 456", "नमस्ते दुनिया", "हिन्दी भाषा", "Привет, мир!", "ЁЖИК ёжик", "Ελληνικά ΣΊΣΥΦΟΣ",
          "İstanbul ılık", "Straße STRASSE", "à l'école, l'été", "Tiếng Việt có dấu", "ภาษาไทย", "שלום עולם",
          "ქართული", "Ճապոնիա"]
    # combining marks, zero-width characters, BOM
    s += ["e\u0301", "a\u0300\u0301\u0302", "Z̤͔ͧ̑̓ä͖̭̈̇lͮ̒ͫǧ̗͚̚o̙̔ͮ̇͐̇", "n\u0303o", "\u0301", "a\u200bb",
          "a\u200cb", "a\u200db", "\u2060", "x\u2060y", "\ufeff", "\ufeffHello", "x\ufeffy", "\u00ad", "\ufffd"]
    # control characters
    s += ["\x00", "a\x00b", "\x01\x02\x03", "\x7f", "\x1b[31mred\x1b[0m"]
    # special-token look-alikes (SmolLM2 and Gemma-3 specials, partial and nested forms)
    s += ["<|im_start|>", "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
          "<|im_start", "<|im_start|", "< |im_start|>", "<|endoftext|><|endoftext|>", "x<|im_end|>y",
          "<<|im_end|>>", "<|im_start|><|im_start|>", "<reponame>r<file_sep>f<filename>n",
          "<s>", "</s>", "<s>x</s>", "<bos>", "<eos>", "<bos>Hello<eos>", "<start_of_turn>user\nhi<end_of_turn>",
          "<start_of_turn>", "<unk>", "<pad>", "<mask>", "[multimodal]", "<0x41>", "<0x0A>", "<unused0>",
          "<unused99>", "<table><tr><td>x</td></tr></table>", "<b>bold</b> <i>it</i>", "<h1>T</h1>\n",
          "<start_of_image>", "<|im_start|>   spaced", "   <|im_end|>", "<end_of_turn>\n\n"]
    # long inputs (about 10 KB each)
    rng = random.Random(1234)
    mixed = ""
    while len(mixed.encode()) < 10_000:
        mixed += _english() if rng.random() < 0.5 else _code_block()
    s.append(mixed)
    pool = ("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789      \n\t.,;:!?'\"()[]{}<>-_/\\"
            "éüßøñ中文日本語한국어мирعربيनमस्ते😀👍🏽❤️‍🔥\u0301\u200b\ufeff①٣")
    rand = "".join(rng.choice(pool) for _ in range(4000))
    s.append(rand[: len(rand)])
    s.append(("    " * 5 + "x = [i for i in range(10)]\n") * 300)
    # bytes that are not valid UTF-8 (what -f can feed)
    s += [b"\xff\xfe", b"abc\xe4\xb8", b"\xc0\x80x", b"\xe4\xb8\xad\xe6", b"a\x80b", b"\xed\xa0\x80"]
    return s


def corpus_pre() -> list:
    """Strings where the pre-tokenizers' split rules differ."""
    return ["", "Hello world", "1234567890", "12 345 6789", "x=12345;", "don't DON'T Don'T", "I'M we'LL",
            "'s 'S 're 'RE", "Hello!!! ...? ,,, ;)", "  leading", "trailing  ", "a  \n\n  b", "a\r\n\r\nb",
            "\t\tindent\n", "HelloWorld HELLOworld helloWORLD", "ÉCOLE école ÀÉÎõü Ünïcödé", "camelCaseString",
            "XMLHttpRequest iPhone McDonald's", "path/to/file.txt // comment\n", "a/\nb", "<<>> $$ ++ == ^^ ~~ ||",
            "‘quoted’ “double” «guillemets»", "١٢٣ ①② ½", "你好世界123abc", "Привет МИР", "x²+y³=z⁴",
            "\u00a0\u00a0x", "e\u0301\u0301", "👍🏽👍🏽 ok", _english(), _code_block()]


# ----------------------------------------------------------------------------- running llama-tokenize

def _parse(out: bytes) -> list:
    """`  id -> 'piece'\\n` lines -> [(id, piece bytes)] (pieces may contain newlines)."""
    head = re.compile(rb" *(\d+) -> '")
    items, pos = [], 0
    while pos < len(out):
        m = head.match(out, pos)
        if not m:
            raise RuntimeError(f"unexpected llama-tokenize output at byte {pos}: {out[pos:pos + 60]!r}")
        start = m.end()
        # the piece ends at the first "'\n" followed by the next line's head or the end
        k = start
        while True:
            k = out.find(b"'\n", k)
            if k < 0:
                raise RuntimeError("unterminated piece in llama-tokenize output")
            if k + 2 == len(out) or head.match(out, k + 2):
                break
            k += 1
        items.append((int(m.group(1)), out[start:k]))
        pos = k + 2
    return items


def run_one(binary: str, model: str, data: bytes, flags: list) -> list:
    with tempfile.NamedTemporaryFile(delete=False) as f:
        f.write(data)
        name = f.name
    try:
        p = subprocess.run([binary, "-m", model, "--no-escape", "-f", name, *flags, "--log-disable"],
                           capture_output=True, timeout=300)
    finally:
        os.unlink(name)
    if p.returncode != 0:
        raise RuntimeError(f"llama-tokenize failed ({p.returncode}): {p.stderr.decode(errors='replace')[-500:]}")
    return _parse(p.stdout)


def _special_texts(model: str) -> list:
    """Texts of every token that could be a control / unknown token for llama.cpp: GGUF types
    unknown, control, user-defined, plus the texts llama.cpp promotes to control. A string
    containing none of them tokenizes the same with and without --no-parse-special."""
    sys.path.insert(0, str(REPO / "python"))
    from llmetal.gguf_file import GGUFFile
    from llmetal.tokenizer import DETECTED, _EOG_TEXTS
    md = GGUFFile(model).metadata
    toks, types = md["tokenizer.ggml.tokens"], md.get("tokenizer.ggml.token_type") or []
    promoted = set(_EOG_TEXTS).union(*DETECTED.values())
    return [t for t, ty in zip(toks, types) if ty in (2, 3, 4)] + [t for t in toks if t in promoted]


def make_fixture(binary: str, model: str, items: list, jobs: int, label: str) -> dict:
    """Run the variants llama-tokenize can answer differently; the others are copies by
    construction: without a BOS-adding model --no-bos changes nothing, and without any
    special-token text in the input --no-parse-special changes nothing."""
    empty_bos = run_one(binary, model, b"", VARIANTS["bos+ps"])
    model_adds_bos = len(empty_bos) > 0
    specials = [t.encode() for t in _special_texts(model)]
    cases = []
    results: dict = {}
    alias: dict = {}
    with cf.ThreadPoolExecutor(jobs) as ex:
        futs = {}
        for idx, it in enumerate(items):
            data = it if isinstance(it, bytes) else it.encode("utf-8")
            has_special = any(t in data for t in specials)
            for v, flags in VARIANTS.items():
                base = v
                if not model_adds_bos and v.startswith("bos"):
                    base = "no" + base
                if not has_special and base.endswith("-ps"):
                    base = base[:-3] + "+ps"
                if base != v:
                    alias[(idx, v)] = base
                    continue
                futs[ex.submit(run_one, binary, model, data, flags)] = (idx, v)
        for n, fut in enumerate(cf.as_completed(futs)):
            idx, v = futs[fut]
            results[(idx, v)] = fut.result()
            if n % 100 == 0:
                print(f"  {label}: {n}/{len(futs)}", file=sys.stderr)
    for key, base in alias.items():
        results[key] = results[(key[0], base)]
    pieces: dict = {}
    for idx, it in enumerate(items):
        data = it if isinstance(it, bytes) else it.encode("utf-8")
        case = {"hex": data.hex()} if isinstance(it, bytes) else {"text": it}
        ids = {}
        for v in VARIANTS:
            toks = results[(idx, v)]
            for i, p in toks:
                pieces[i] = p
            lst = [i for i, _ in toks]
            ids[v] = lst
        # compact: a variant equal to an earlier one refers to it; big inputs keep a hash
        stored = {}
        first = {}
        for v, lst in ids.items():
            key = json.dumps(lst)
            if key in first:
                stored[v] = {"same_as": first[key]}
                continue
            first[key] = v
            if len(data) > BIG:
                stored[v] = {"n": len(lst), "sha256": hashlib.sha256(key.encode()).hexdigest(),
                             "head": lst[:16], "tail": lst[-16:]}
            else:
                stored[v] = lst
        case["ids"] = stored
        # does llama.cpp's output join back to the input? (no BOS, specials parsed: every
        # piece printed, control tokens as their text)
        case["llama_roundtrip"] = b"".join(p for _, p in results[(idx, "nobos+ps")]) == data
        cases.append(case)
    return {"model": os.path.basename(model), "cases": cases,
            "pieces": {str(i): p.hex() for i, p in sorted(pieces.items())}}


def write_pre_gguf(src: str, pre: str | None, dst: str):
    """A vocab-only copy of `src` with tokenizer.ggml.pre = pre and no add_bos_token key (pre
    None: every key kept, the real tokenizer without the weights, which loads in a moment)."""
    import gguf
    r = gguf.GGUFReader(src)
    arch = r.fields["general.architecture"].contents()
    w = gguf.GGUFWriter(dst, arch)
    for k, f in r.fields.items():
        if k.startswith("GGUF.") or k == "general.architecture":
            continue
        if pre is not None and k == "tokenizer.ggml.add_bos_token":
            continue
        val = pre if (pre is not None and k == "tokenizer.ggml.pre") else f.contents()
        vt = f.types[0]
        if vt == gguf.GGUFValueType.ARRAY:
            w.add_key_value(k, val, vt, sub_type=f.types[-1])
        else:
            w.add_key_value(k, val, vt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", default=os.path.join(os.environ.get("LLAMA_ORACLE_BIN", ""), "llama-tokenize"))
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--only", default=None, help="comma-separated fixture names to regenerate")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(REPO / "python"))
    from llmetal.models import resolve
    OUT.mkdir(parents=True, exist_ok=True)
    only = set(args.only.split(",")) if args.only else None
    smol = str(resolve("smollm2"))
    jobs = [("smollm2", smol, corpus_main()), ("gemma3", str(resolve("gemma3")), corpus_main())]
    with tempfile.TemporaryDirectory() as tmp:
        # Qwen2.5-Coder-0.5B's tokenizer (byte-level BPE, pre "qwen2", 151,936 tokens), vocab only
        qwen = os.path.join(tmp, "qwen2.5-coder-0.5b.gguf")
        if only is None or "qwen2.5-coder-0.5b" in only:
            write_pre_gguf(str(resolve("qwen2.5-coder-0.5b")), None, qwen)
        jobs.append(("qwen2.5-coder-0.5b", qwen, corpus_main()))
        for pre in ["default", "gpt-2", "llama3", "qwen2", "tekken"]:
            path = os.path.join(tmp, f"pre_{pre}.gguf")
            if only is None or f"pre_{pre}" in only:
                write_pre_gguf(smol, pre, path)
            jobs.append((f"pre_{pre}", path, corpus_pre()))
        for name, model, items in jobs:
            if only is not None and name not in only:
                continue
            fx = make_fixture(args.bin, model, items, args.jobs, name)
            if name.startswith("pre_"):
                fx["base_model"] = "smollm2"
                fx["pre"] = name[4:]
            (OUT / f"{name}.json").write_text(json.dumps(fx, ensure_ascii=False, indent=0))
            print(f"wrote {name}.json: {len(items)} strings", file=sys.stderr)


if __name__ == "__main__":
    main()
