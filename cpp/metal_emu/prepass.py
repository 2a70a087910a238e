#!/usr/bin/env python3
"""Translate one unmodified .metal file into C++ for the Metal emulator.

    python cpp/metal_emu/prepass.py metal/rmsnorm.metal OUT.cpp

What a macro cannot do, this does (everything else is metal_shim.h):
  * `threadgroup T name[N]...;` declarations inside kernels become references to memory
    shared by the threadgroup (emu::tg_var), so every thread of the group sees the same array;
  * `[[attribute]]`s on kernel parameters are removed, and for every kernel (or every
    `template [[host_name("x")]] kernel ... f<...>;` instantiation) a wrapper is generated that
    binds buffers, threadgroup buffers and thread positions from the runtime's context, and
    registers the kernel under its Metal name;
  * `#include <metal_stdlib>` is dropped (the shim stands in for it);
  * the whole file goes between EMU_KERNELS_BEGIN and EMU_KERNELS_END (metal_shim.h: a
    namespace per build, so the plain and the counted build of one file link together).
Line numbers are kept (a `#line` directive names the .metal file), so compiler errors and the
emulator's sync errors point at the .metal source.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

TG_DECL = re.compile(r"^(\s*)threadgroup\s+([A-Za-z_][\w:<>, ]*?)\s+([A-Za-z_]\w*)\s*((?:\[[^\]]+\]\s*)*);")
KERNEL = re.compile(r"\bkernel\s+void\s+([A-Za-z_]\w*)\s*\(")
HOST_NAME = re.compile(r'^\s*template\s*\[\[\s*host_name\(\s*"(\w+)"\s*\)\s*\]\]\s*kernel\s+\w+\s+(\w+)\s*<([^;]*)>\s*;')
ATTR = re.compile(r"\[\[\s*([^\]]+?)\s*\]\]")

# thread-position attributes -> the runtime context's field
POSITIONS = {
    "thread_position_in_grid": "c.tpig",
    "threadgroup_position_in_grid": "c.tgpig",
    "thread_position_in_threadgroup": "c.tpitg",
    "threads_per_threadgroup": "c.tptg",
    "threadgroups_per_grid": "c.tgpg",
    "threads_per_grid": "c.tpg",
    "thread_index_in_threadgroup": "c.tiitg",
    "thread_index_in_simdgroup": "c.tiisg",
    "simdgroup_index_in_threadgroup": "c.sgitg",
    "threads_per_simdgroup": "32u",
}


def fail(path, line, msg):
    sys.exit(f"{path}:{line}: prepass: {msg}")


def split_params(text):
    """Split a parameter list at top-level commas."""
    out, depth, cur = [], 0, ""
    for ch in text:
        if ch in "(<[":
            depth += 1
        elif ch in ")>]":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        out.append(cur)
    return out


def arg_expr(path, line, param):
    """The wrapper's argument for one kernel parameter (type, name, [[attribute]])."""
    m = ATTR.search(param)
    if not m:
        fail(path, line, f"kernel parameter without an attribute: {param.strip()!r}")
    attr = m.group(1)
    decl = ATTR.sub("", param).strip()
    name_m = re.search(r"([A-Za-z_]\w*)\s*$", decl)
    ptype = decl[: name_m.start()].strip()
    b = re.fullmatch(r"buffer\((\d+)\)", attr)
    t = re.fullmatch(r"threadgroup\((\d+)\)", attr)
    if b:
        if ptype.endswith("&"):
            return f"*({ptype[:-1].strip()}*)c.buf[{b.group(1)}]"
        return f"({ptype})c.buf[{b.group(1)}]"
    if t:
        return f"({ptype})c.tgbuf[{t.group(1)}]"
    if attr in POSITIONS:
        return f"::emu::pos<{ptype}>({POSITIONS[attr]})"
    fail(path, line, f"unsupported kernel parameter attribute [[{attr}]]")


def translate(src: str, path: str) -> str:
    lines = src.split("\n")
    kernels = {}          # function name -> list of argument expressions
    instances = []        # (metal name, function name, template args or None)
    text = "\n".join(lines)

    # kernel signatures: parse parameter lists, strip their attributes in place
    out_chars = list(text)
    for m in KERNEL.finditer(text):
        start = m.end()
        depth, i = 1, start
        while depth:
            if i >= len(text):
                fail(path, text.count("\n", 0, m.start()) + 1, "unterminated kernel parameter list")
            depth += {"(": 1, ")": -1}.get(text[i], 0)
            i += 1
        params = text[start:i - 1]
        line = text.count("\n", 0, m.start()) + 1
        kernels[m.group(1)] = [arg_expr(path, line, p) for p in split_params(params)]
        for a in ATTR.finditer(params):   # blank the attributes, keeping line breaks
            for k in range(start + a.start(), start + a.end()):
                out_chars[k] = " "
        templ = re.search(r"template\s*<[^>]*>\s*$", text[:m.start()])
        if not templ:
            instances.append((m.group(1), m.group(1), None))
    text = "".join(out_chars)

    out = []
    for n, ln in enumerate(text.split("\n"), 1):
        if re.match(r"^\s*#\s*include\s*<metal_stdlib>", ln):
            out.append("")
            continue
        h = HOST_NAME.match(ln)
        if h:
            instances.append((h.group(1), h.group(2), h.group(3)))
            out.append("")
            continue
        d = TG_DECL.match(ln)
        if d:
            ind, ty, name, dims = d.groups()
            full = f"{ty.strip()}{dims.replace(' ', '')}"
            ln = f'{ind}auto& {name} = ::emu::tg_var<{full}>("{full}", __FILE__, __LINE__);' + ln[d.end():]
        out.append(ln)

    head = f'#include "metal_shim.h"\nEMU_KERNELS_BEGIN\n#line 1 "{path}"\n'
    tail = ["", "// ---- generated by prepass.py: kernel wrappers and registration ----"]
    stem = re.sub(r"\W", "_", Path(path).stem)
    for k, (metal_name, fn, targs) in enumerate(instances):
        if fn not in kernels:
            fail(path, 0, f"host_name {metal_name!r} names {fn!r}, which is not a kernel of this file")
        call = fn + (f"<{targs}>" if targs is not None else "")
        args = ", ".join(kernels[fn])
        w = f"emu_wrap_{stem}_{k}"
        tail.append(f"static void {w}(const ::emu::ThreadCtx& c) {{ (void)c; {call}({args}); }}")
        tail.append(f'static ::emu::Register emu_reg_{stem}_{k}("{metal_name}", &{w}, "{path}", EMU_COUNTED_BUILD);')
    tail.append("EMU_KERNELS_END")
    return head + "\n".join(out) + "\n" + "\n".join(tail) + "\n"


def main(argv):
    if len(argv) != 3:
        sys.exit("usage: prepass.py IN.metal OUT.cpp")
    src = Path(argv[1]).read_text()
    res = translate(src, argv[1])
    Path(argv[2]).write_text(res)


if __name__ == "__main__":
    main(sys.argv)
