"""Bounded in-process fuzzing of the GGUF loader.

A few thousand byte-level mutations of a small valid model (random bytes, extreme 4/8-byte
values at random places in the header, truncations, inserted and deleted spans). Loading each
one (GGUFFile, ModelConfig, every tensor view, the inspect description) must either succeed or
raise GGUFError -- never another exception, a MemoryError or a hang. The seed is fixed (override
with LLMETAL_FUZZ_SEED) and printed with any failure so a case can be replayed.
"""
from __future__ import annotations

import io
import os
import random

import pytest

from llmetal.config import ModelConfig, UnsupportedArchitecture
from llmetal.gguf_file import GGUFError, GGUFFile
from llmetal.inspect_cmd import describe, print_rich

N_CASES = 3000
SEED = int(os.environ.get("LLMETAL_FUZZ_SEED", "20240611"))
EXTREMES = [0, 1, 2, 3, 31, 32, 63, 64, 255, 2**16 - 1, 2**31 - 1, 2**31, 2**32 - 1, 2**32,
            2**62, 2**63 - 1, 2**63, 2**64 - 1]


def mutate(rng: random.Random, data: bytes, header_len: int) -> tuple[bytes, str]:
    """One random mutation; most land in the header/metadata/tensor-info region."""
    b = bytearray(data)
    hi = header_len if rng.random() < 0.9 else len(b)
    kind = rng.choice(("bytes", "extreme", "extreme", "truncate", "insert", "delete"))
    if kind == "bytes":
        edits = []
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(hi)
            b[i] = rng.randrange(256)
            edits.append(i)
        return bytes(b), f"bytes at {edits}"
    if kind == "extreme":
        width = rng.choice((4, 8))
        i = rng.randrange(0, hi - width)
        v = rng.choice(EXTREMES) % (1 << (8 * width))
        b[i:i + width] = v.to_bytes(width, "little")
        return bytes(b), f"{width}-byte {v} at {i}"
    if kind == "truncate":
        n = rng.randrange(hi)
        return bytes(b[:n]), f"truncate to {n}"
    if kind == "insert":
        i, n = rng.randrange(hi), rng.randint(1, 16)
        return bytes(b[:i]) + rng.randbytes(n) + bytes(b[i:]), f"insert {n} at {i}"
    i = rng.randrange(hi)
    n = rng.randint(1, 16)
    return bytes(b[:i] + b[i + n:]), f"delete {n} at {i}"


def load_everything(path, render: bool = True):
    gf = GGUFFile(path)
    for name in gf.tensors:
        gf.tensor_array(name)
    cfg = ModelConfig.from_gguf(gf)
    info = describe(gf, cfg, tensors=True)
    if render:             # rich tables are slow: drawn for a share of the loadable cases only
        from rich.console import Console
        print_rich(info, Console(file=io.StringIO(), width=120))


@pytest.mark.timeout(300)
def test_fuzz_mutations(tiny_model, tmp_path, run_cli):
    src = tiny_model("fuzz_base.gguf", n_layer=1, n_embd=32, n_head=2, n_head_kv=1, n_ff=32,
                     n_vocab=16)
    base = src.read_bytes()
    header_len = GGUFFile(src).data_offset
    load_everything(src)                                     # the unmutated file is valid
    rng = random.Random(SEED)
    path = tmp_path / "fuzz.gguf"
    errors, ok, samples = 0, 0, []
    out = open(path, "wb")      # rewritten in place for every case (saves an open per case)
    for case in range(N_CASES):
        data, how = mutate(rng, base, header_len)
        out.seek(0)
        out.write(data)
        out.truncate()
        out.flush()
        try:
            load_everything(path, render=ok < 40)
            ok += 1
        except GGUFError as e:
            errors += 1
            msg = str(e)
            assert msg.startswith(f"{path}: ") and "\n" not in msg, (SEED, case, how, msg)
            # an unknown architecture name is a readable file that inspect shows (exit 0)
            if len(samples) < 4 and case % 7 == 0 and not isinstance(e, UnsupportedArchitecture):
                samples.append((data, how))
        except Exception as e:                                # noqa: BLE001 -- the point of the test
            pytest.fail(f"seed {SEED} case {case} ({how}): {type(e).__name__}: {e}")
    out.close()
    # both outcomes occur: the mutations reach past the first checks
    assert errors > N_CASES // 4 and ok > 0, (errors, ok)

    # a sample of the rejected files through the CLI: exit 2, one line, no traceback
    for k, (data, how) in enumerate(samples):
        p = tmp_path / f"sample{k}.gguf"
        p.write_bytes(data)
        r = run_cli("inspect", p, timeout=60)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1, (how, r.stderr)
        assert lines[0].startswith(f"llmetal: error: {p}: ") and "Traceback" not in r.stderr
