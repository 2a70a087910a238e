#!/usr/bin/env python3
"""Embed the Metal kernels' source in the engine (Apple builds; CMake runs this).

    python scripts/metal_embed.py metal/ OUT.inc

Concatenates every metal/*.metal file with its local `#include "..."` files inlined (each file
once: they all have include guards, and newLibraryWithSource cannot resolve includes), and
writes it as a C++ string literal for cpp/metal/device.mm. `#include <metal_stdlib>` stays.
"""
import re
import sys
from pathlib import Path

INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$')


def inline(path: Path, seen: set, out: list):
    path = path.resolve()
    if path in seen:
        return
    seen.add(path)
    for line in path.read_text().splitlines():
        m = INCLUDE.match(line)
        if m:
            inline(path.parent / m.group(1), seen, out)
        else:
            out.append(line)


def main(argv):
    if len(argv) != 3:
        sys.exit("usage: metal_embed.py METAL_DIR OUT.inc")
    seen, lines = set(), []
    for f in sorted(Path(argv[1]).glob("*.metal")):
        lines.append(f"// ---- {f.name} ----")
        inline(f, seen, lines)
    src = "\n".join(lines) + "\n"
    # split into pieces under 16 KB: some compilers limit one string literal's length
    parts = [src[i:i + 16000] for i in range(0, len(src), 16000)]
    body = "\n".join(f'R"LLMETAL_MSL({p})LLMETAL_MSL"' for p in parts)
    Path(argv[2]).write_text(body + "\n")


if __name__ == "__main__":
    main(sys.argv)
