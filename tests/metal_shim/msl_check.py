#!/usr/bin/env python3
"""Strict compile check of the Metal kernels without Apple's compiler (compile_checks.sh runs it).

    python tests/metal_shim/msl_check.py --cxx clang++-16 --tmp DIR
        [--unit metal_source.inc --plan plan.txt] [FILE.metal ...]

Every FILE.metal, and the unit (the embedded source that scripts/metal_embed.py writes and
cpp/metal/device.mm compiles at run time, read back from its string literals), is
  1. checked at its kernels' signatures: every parameter of a `kernel` function carries one
     attribute; [[buffer(n)]] (n <= 30, each index once) only on device or constant pointers
     and references, [[threadgroup(n)]] only on threadgroup pointers, position attributes only
     on uint/ushort scalars and vectors; none of these attributes on a function that is not a
     `kernel`; every kernel template instantiated under a `[[host_name("...")]]`; no kernel
     name twice;
  2. compiled with clang, C++14, -fsyntax-only, no system headers, under msl_strict.h: device,
     constant and threadgroup are distinct address spaces and thread is the default, so a
     pointer or reference passed or assigned across address spaces does not compile. Before
     that, this script's pre-pass puts msl_strict.h first (for <metal_stdlib>), blanks the
     kernel attributes and host names, and rewrites kernel-scope `threadgroup T name[N];` as a
     reference to threadgroup memory of that type (C++ refuses an address space on a local
     variable); line numbers are kept;
  3. searched in clang's AST for what C++ accepts and MSL does not: an explicit cast between
     address spaces (AddressSpaceConversion) and a program-scope variable outside `constant`.
With --plan (plan_dump.cpp's listing of every dispatch the planner makes), the unit is held
against the host: every kernel the planner names exists; the indices it binds (0: the kargs
bytes) are exactly the kernel's [[buffer(n)]] indices; the kernel's [[buffer(0)]] is a
`constant kargs_x&` whose size, as the strict compile lays it out, is the byte count the host
sends (a static_assert appended to the unit); threadgroup memory is set exactly when the kernel
has a [[threadgroup(0)]] parameter; and every kernel is dispatched by some plan.
Errors name file:line; the exit status is 1 when any check fails.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "cpp" / "metal_emu"))
import prepass  # noqa: E402  the emulator's pre-pass: the same reading of kernels and attributes

POSITION_TYPES = {"uint", "ushort", "uint2", "uint3", "ushort2", "ushort3"}
MAX_BUFFER_INDEX = 30          # Metal's argument table holds buffers 0..30
SPACE = r"(?:const\s+)?(?:volatile\s+)?"


@dataclass
class Param:
    attr: str                  # the attribute's text: buffer(1), thread_index_in_simdgroup, ...
    ptype: str                 # the declared type, attributes removed
    name: str
    line: int


@dataclass
class KernelFn:
    name: str
    line: int
    template: bool
    params: list = field(default_factory=list)
    body: tuple = (0, 0)       # [start, end) character range of the body


@dataclass
class Source:
    path: str
    text: str
    code: str = ""             # the text with comments blanked (same length and lines)
    kernels: dict = field(default_factory=dict)     # function name -> KernelFn
    entries: dict = field(default_factory=dict)     # Metal name -> (function name, line)
    errors: list = field(default_factory=list)

    def line_of(self, pos):
        return self.text.count("\n", 0, pos) + 1

    def error(self, line, msg):
        self.errors.append(f"{self.path}:{line}: {msg}")


def blank_comments(text):
    """The text with // and /* */ comments replaced by spaces (newlines kept); strings kept."""
    out, i, n = list(text), 0, len(text)
    while i < n:
        c = text[i]
        if c == '"':
            j = i + 1
            while j < n and text[j] != '"' and text[j] != "\n":
                j += 2 if text[j] == "\\" else 1
            i = j + 1
        elif text.startswith("//", i):
            while i < n and text[i] != "\n":
                out[i] = " "
                i += 1
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            for k in range(i, j):
                if out[k] != "\n":
                    out[k] = " "
            i = j
        else:
            i += 1
    return "".join(out)


def matching(code, open_pos, open_ch, close_ch):
    """Index just past the bracket that closes the one at open_pos (or -1)."""
    depth = 0
    for i in range(open_pos, len(code)):
        if code[i] == open_ch:
            depth += 1
        elif code[i] == close_ch:
            depth -= 1
            if depth == 0:
                return i + 1
    return -1


def read_unit(inc_path):
    """The MSL source inside metal_embed.py's output: its raw string literals, concatenated."""
    text = Path(inc_path).read_text()
    parts = re.findall(r'R"LLMETAL_MSL\((.*?)\)LLMETAL_MSL"', text, re.S)
    if not parts:
        sys.exit(f"{inc_path}: no R\"LLMETAL_MSL(...)LLMETAL_MSL\" literal: not metal_embed.py's output")
    return "".join(parts)


# ---- 1. kernels and their signatures -----------------------------------------------------------
def parse(src: Source):
    code = src.code = blank_comments(src.text)
    param_spans = []
    for m in prepass.KERNEL.finditer(code):
        line = src.line_of(m.start())
        close = matching(code, m.end() - 1, "(", ")")
        body_open = code.find("{", close) if close > 0 else -1
        body_close = matching(code, body_open, "{", "}") if body_open >= 0 else -1
        if close < 0 or body_close < 0:
            src.error(line, f"kernel {m.group(1)}: cannot find its parameter list and body")
            continue
        param_spans.append((m.end(), close - 1))
        templ = re.search(r"template\s*<[^>]*>\s*$", code[:m.start()]) is not None
        k = KernelFn(m.group(1), line, templ, body=(body_open, body_close))
        if k.name in src.kernels:
            src.error(line, f"kernel {k.name} defined twice")
        src.kernels[k.name] = k
        offset = m.end()
        for p in prepass.split_params(code[m.end():close - 1]):
            pline = src.line_of(offset + len(p) - len(p.lstrip()))
            offset += len(p) + 1
            attrs = prepass.ATTR.findall(p)
            decl = prepass.ATTR.sub("", p).strip()
            nm = re.search(r"([A-Za-z_]\w*)\s*$", decl)
            if len(attrs) != 1 or not nm:
                src.error(pline, f"kernel {k.name}: parameter {' '.join(p.split())!r} needs exactly one attribute")
                continue
            k.params.append(Param(attrs[0], decl[:nm.start()].strip(), nm.group(1), pline))
        if not templ:
            add_entry(src, k.name, k.name, line)
    for m in re.finditer(r"(?m)^.*\bhost_name\b.*$", code):
        h = prepass.HOST_NAME.match(m.group(0))
        line = src.line_of(m.start())
        if not h:
            src.error(line, 'host_name only as `template [[host_name("name")]] kernel <type> fn<args>;` on one line')
        elif h.group(2) not in src.kernels or not src.kernels[h.group(2)].template:
            src.error(line, f"host_name {h.group(1)!r} instantiates {h.group(2)!r}, which is not a kernel template")
        else:
            add_entry(src, h.group(1), h.group(2), line)
    for k in src.kernels.values():
        check_params(src, k)
        if k.template and k.name not in {fn for fn, _ in src.entries.values()}:
            src.error(k.line, f"kernel template {k.name} has no [[host_name]] instantiation: the host cannot call it")
    # the kernels' attributes anywhere else: a function that takes them must be a kernel
    for m in prepass.ATTR.finditer(code):
        a = m.group(1)
        kind = re.match(r"(buffer|threadgroup)\(", a) or a in prepass.POSITIONS
        if kind and not any(lo <= m.start() < hi for lo, hi in param_spans):
            src.error(src.line_of(m.start()), f"[[{a}]] on a parameter of a function that is not declared `kernel`")


def add_entry(src, metal_name, fn, line):
    if metal_name in src.entries:
        src.error(line, f"kernel name {metal_name} defined twice (also at line {src.entries[metal_name][1]})")
    src.entries[metal_name] = (fn, line)


def check_params(src, k):
    buffers, tgs = {}, {}
    for p in k.params:
        b = re.fullmatch(r"buffer\((\d+)\)", p.attr)
        t = re.fullmatch(r"threadgroup\((\d+)\)", p.attr)
        where = f"kernel {k.name}: [[{p.attr}]] {p.name}"
        if b:
            i = int(b.group(1))
            if i in buffers:
                src.error(p.line, f"{where}: index {i} already taken by {buffers[i].name}")
            buffers[i] = p
            if i > MAX_BUFFER_INDEX:
                src.error(p.line, f"{where}: Metal binds buffers 0..{MAX_BUFFER_INDEX}")
            if not re.fullmatch(SPACE + r"(device|constant)\b.*[*&]", p.ptype):
                src.error(p.line, f"{where}: a buffer is a device or constant pointer or reference, not {p.ptype!r}")
        elif t:
            i = int(t.group(1))
            if i in tgs:
                src.error(p.line, f"{where}: index {i} already taken by {tgs[i].name}")
            tgs[i] = p
            if not re.fullmatch(SPACE + r"threadgroup\b.*\*", p.ptype):
                src.error(p.line, f"{where}: threadgroup memory is a threadgroup pointer, not {p.ptype!r}")
        elif p.attr in prepass.POSITIONS:
            if p.ptype not in POSITION_TYPES:
                src.error(p.line, f"{where}: a position is one of {sorted(POSITION_TYPES)}, not {p.ptype!r}")
        else:
            src.error(p.line, f"{where}: not an attribute the Metal device binds")


# ---- 2. the strict pre-pass -------------------------------------------------------------------
def translate(src: Source):
    """C++ for clang under msl_strict.h, line for line."""
    out = list(src.text)

    def blank(lo, hi):
        for i in range(lo, hi):
            if out[i] != "\n":
                out[i] = " "

    code = src.code
    for m in prepass.KERNEL.finditer(code):   # kernel parameter attributes
        close = matching(code, m.end() - 1, "(", ")")
        for a in prepass.ATTR.finditer(code, m.end(), close):
            blank(a.start(), a.end())
    for m in re.finditer(r"\[\[\s*host_name\([^\]]*\)\s*\]\]", code):
        blank(m.start(), m.end())
    text = "".join(out)
    # kernel-scope threadgroup declarations, and <metal_stdlib>, line by line
    bodies = [(src.line_of(k.body[0]), src.line_of(k.body[1])) for k in src.kernels.values()]
    lines = text.split("\n")
    for n, ln in enumerate(lines, 1):
        if re.match(r"^\s*#\s*include\s*<metal_stdlib>", ln):
            lines[n - 1] = ""   # msl_strict.h stands in for it, included first
            continue
        d = prepass.TG_DECL.match(ln)
        if d and any(lo <= n <= hi for lo, hi in bodies):
            ind, ty, name, dims = d.groups()
            lines[n - 1] = (f"{ind}auto& {name} = ::metal::msl_strict_threadgroup_var<{ty.strip()}{dims.strip()}>();"
                            + ln[d.end():])
    # first: the address-space keywords are MSL's own, not <metal_stdlib>'s
    return f'#include "msl_strict.h"\n#line 1 "{src.path}"\n' + "\n".join(lines)


# ---- 3. what C++ accepts and MSL does not, from clang's AST ----------------------------------------
# a location in clang's text dump: file:line:col when the file changes, line:line:col when the
# line does, col:col otherwise (each relative to the location printed before it)
LOC = re.compile(r"(?<![\w/.])(?:line:(\d+):\d+|col:\d+|(<[^<>]+>|[^\s<>,:]+):(\d+):\d+)")


SPACES = {"1": "device", "2": "constant", "3": "threadgroup"}


def spaces_named(ty):
    return re.sub(r"__attribute__\(\(address_space\((\d)\)\)\)", lambda m: SPACES[m.group(1)], ty)


def ast_check(src: Source, dump: str):
    file, line = "", 0
    for row in dump.splitlines():
        for m in LOC.finditer(row):   # after this: where the row's node is (its last location)
            if m.group(1):
                line = int(m.group(1))
            elif m.group(2):
                file, line = m.group(2), int(m.group(3))
        if file.endswith("msl_strict.h"):
            continue
        if "<AddressSpaceConversion>" in row:
            ty = re.search(r"'([^']*)'", row)
            src.errors.append(f"{file}:{line}: a cast to {ty.group(1) if ty else '?'!r} from another "
                              f"address space (MSL has no conversion between address spaces)")
        v = re.match(r"^[|`]-VarDecl .*? (\w+) '([^']*)'(?::'([^']*)')?", row)
        if v:
            # the variable's own space: what qualifies its type after the last '*' (an array: the element)
            ty = spaces_named(v.group(3) or v.group(2))
            own = re.sub(r"(\[[^\]]*\])+$", "", ty).rsplit("*", 1)[-1]
            if not re.search(r"\bconstant\b", own):
                src.errors.append(f"{file}:{line}: program-scope variable {v.group(1)} of type {ty!r}: MSL puts "
                                  f"program-scope variables in the constant address space only")


def compile_strict(src: Source, cxx, tmp: Path, includes, extra=""):
    name = re.sub(r"\W", "_", src.path)
    cpp = tmp / f"strict_{name}.cpp"
    cpp.write_text(translate(src) + extra)
    cmd = [cxx, "-std=c++14", "-x", "c++", "-fsyntax-only", "-nostdinc", "-nostdinc++", "-fsigned-char",
           "-fno-exceptions", "-fno-rtti", "-Wall", "-Werror", "-Xclang", "-ast-dump", f"-I{HERE}"]
    cmd += [f"-I{d}" for d in includes] + [str(cpp)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        src.errors.append(f"{src.path}: does not compile under MSL's address spaces ({' '.join(cmd)}):\n"
                          + r.stderr.rstrip())
        return
    ast_check(src, r.stdout)


# ---- the host's dispatches against the kernels ------------------------------------------------------
def plan_check(src: Source, plan_path):
    """Errors for the unit against plan_dump's listing, and the static_asserts of kargs sizes."""
    seen, asserts = {}, []
    for row in Path(plan_path).read_text().splitlines():
        if row.startswith("refused "):
            continue
        m = re.fullmatch(r"(\w+) args=(\d+) bufs=([\d,]*) tg_mem=(\d+)", row)
        if not m:
            sys.exit(f"{plan_path}: unreadable line {row!r}")
        name, args, bufs, tg_mem = m.group(1), int(m.group(2)), m.group(3), int(m.group(4))
        host = ({0} if args else set()) | {int(i) for i in bufs.split(",") if i}
        if seen.get(name) == (host, args, tg_mem):
            continue
        seen[name] = (host, args, tg_mem)
        where = f"{plan_path}: the planner dispatches {name}"
        if name not in src.entries:
            src.errors.append(f"{where}, which no kernel of {src.path} defines")
            continue
        fn, line = src.entries[name]
        k = src.kernels[fn]
        declared = {int(p.attr[7:-1]) for p in k.params if p.attr.startswith("buffer(")}
        if declared != host:
            src.error(line, f"{name} takes buffers {sorted(declared)}; the planner binds {sorted(host)}")
        kargs = [p for p in k.params if p.attr == "buffer(0)"]
        if kargs:
            t = re.fullmatch(SPACE + r"constant\s+(?:const\s+)?(\w+)\s*&", kargs[0].ptype)
            if not t:
                src.error(kargs[0].line, f"{name}: [[buffer(0)]] holds the kargs bytes: a `constant kargs_x&`, "
                                         f"not {kargs[0].ptype!r}")
            else:
                asserts.append(f'static_assert(sizeof({t.group(1)}) == {args}, "{name}: the planner sends {args} '
                               f'bytes of arguments; the kernel reads a {t.group(1)} of another size");')
        tg = {int(p.attr[12:-1]) for p in k.params if p.attr.startswith("threadgroup(")}
        if tg - {0}:
            src.error(k.line, f"{name}: the host sets threadgroup memory at index 0 only, not {sorted(tg - {0})}")
        if (0 in tg) != (tg_mem > 0):
            src.error(k.line, f"{name}: the planner sets {tg_mem} bytes of threadgroup memory; the kernel "
                              f"{'takes' if 0 in tg else 'has no'} [[threadgroup(0)]] parameter")
    for name, (_, line) in src.entries.items():
        if name not in seen:
            src.error(line, f"kernel {name} is dispatched by no plan (plan_dump.cpp lists them all)")
    return "\n// ---- msl_check.py: the kargs sizes the host sends ----\n" + "\n".join(asserts) + "\n"


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cxx", required=True, help="clang++ 16 or newer")
    ap.add_argument("--tmp", required=True, type=Path, help="folder for the translated files")
    ap.add_argument("--unit", help="metal_embed.py's output (the embedded source)")
    ap.add_argument("--plan", help="plan_dump's output (with --unit)")
    ap.add_argument("files", nargs="*")
    a = ap.parse_args(argv)
    # a .metal file's own folder, then metal/ (whose quants.h and ../cpp/ a copy elsewhere includes)
    srcs = [(Source(f, Path(f).read_text()), [Path(f).parent, ROOT / "metal"], False) for f in a.files]
    if a.unit:   # written out, so that its errors name a file that can be read
        unit = a.tmp / "metal_source.metal"
        unit.write_text(read_unit(a.unit))
        srcs.append((Source(str(unit), unit.read_text()), [], True))
    errors = []
    for src, includes, is_unit in srcs:
        parse(src)
        extra = plan_check(src, a.plan) if is_unit and a.plan else ""
        if not src.errors:
            compile_strict(src, a.cxx, a.tmp, includes, extra)
        src.errors = list(dict.fromkeys(src.errors))   # a template's error once, not per instantiation
        errors += src.errors
        if not src.errors:
            print(f"strict MSL check: {src.path}: {len(src.entries)} kernels: ok")
    for e in errors:
        print(e, file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
