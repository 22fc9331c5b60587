"""CTranslate2 whisper `model.bin` → openai-whisper checkpoint, so both engines run the same weights.

No `.pt` checkpoint is reachable offline, but the CTranslate2 file holds every
tensor openai-whisper needs. Its layout (CTranslate2 binary version 6):

    u32 version, str spec name, u32 spec revision, u32 variable count,
    per variable: str name, u8 rank, u32 × rank shape, u8 dtype id, u32 byte count, raw bytes,
    u32 alias count, per alias: str alias, str target.

A `str` is a u16 length (counting a trailing NUL), the UTF-8 bytes and the NUL.
All integers are little-endian. CTranslate2 fuses the self-attention q, k, v
projections into one matrix (and the cross-attention k, v into another), with
zeros standing in for whisper's missing key bias: splitting them back is the
only real transformation.
"""

from __future__ import annotations

import json
import logging
import os
import re
import struct
from pathlib import Path
from typing import Any

import numpy as np

from shared import models

log = logging.getLogger(__name__)

SUPPORTED_VERSIONS = (5, 6)
# Index = CTranslate2's DataType id.
_DTYPES: tuple[str, ...] = ("float32", "int8", "int16", "int32", "float16", "bfloat16")
_LAYER = re.compile(r"^(encoder|decoder)/layer_(\d+)/")


class Reader:
    """Sequential little-endian reads over the model file's bytes."""

    def __init__(self, data: memoryview) -> None:
        self.data = data
        self.pos = 0

    def unpack(self, fmt: str) -> Any:
        (value,) = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return value

    def string(self) -> str:
        size = self.unpack("H")
        text = bytes(self.data[self.pos:self.pos + size - 1]).decode()
        self.pos += size
        return text

    def take(self, size: int) -> memoryview:
        if self.pos + size > len(self.data):
            raise ValueError("model file is truncated")
        chunk = self.data[self.pos:self.pos + size]
        self.pos += size
        return chunk


def _array(raw: memoryview, dtype_id: int, shape: list[int]) -> np.ndarray:
    name = _DTYPES[dtype_id]
    if name == "bfloat16":  # numpy has no bfloat16: it is the top half of a float32
        halves = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
        return halves.view(np.float32).reshape(shape)
    return np.frombuffer(raw, dtype=np.dtype(name).newbyteorder("<")).reshape(shape).copy()


def read_model(path: Path) -> tuple[str, dict[str, np.ndarray]]:
    """(spec name, {variable name: array}) with aliases resolved."""
    data = memoryview(path.read_bytes())
    r = Reader(data)
    version = r.unpack("I")
    if version not in SUPPORTED_VERSIONS:
        raise ValueError(f"unsupported CTranslate2 binary version {version} in {path}")
    spec = r.string()
    r.unpack("I")  # spec revision
    variables: dict[str, np.ndarray] = {}
    for _ in range(r.unpack("I")):
        name = r.string()
        shape = [r.unpack("I") for _ in range(r.unpack("B"))]
        dtype_id = r.unpack("B")
        variables[name] = _array(r.take(r.unpack("I")), dtype_id, shape)
    for _ in range(r.unpack("I")):
        alias, target = r.string(), r.string()
        variables[alias] = variables[target]
    return spec, variables


def _layer_count(variables: dict[str, np.ndarray], side: str) -> int:
    indices = {int(m.group(2)) for name in variables if (m := _LAYER.match(name)) and m.group(1) == side}
    return max(indices) + 1


def dimensions(variables: dict[str, np.ndarray]) -> dict[str, int]:
    """openai-whisper's ModelDimensions, read off the tensor shapes."""
    audio_pos = variables["encoder/position_encodings/encodings"]
    text_pos = variables["decoder/position_encodings/encodings"]
    return {
        "n_mels": int(variables["encoder/conv1/weight"].shape[1]),
        "n_audio_ctx": int(audio_pos.shape[0]),
        "n_audio_state": int(audio_pos.shape[1]),
        "n_audio_head": int(variables["encoder/num_heads"]),
        "n_audio_layer": _layer_count(variables, "encoder"),
        "n_vocab": int(variables["decoder/embeddings/weight"].shape[0]),
        "n_text_ctx": int(text_pos.shape[0]),
        "n_text_state": int(text_pos.shape[1]),
        "n_text_head": int(variables["decoder/num_heads"]),
        "n_text_layer": _layer_count(variables, "decoder"),
    }


def _check_unquantized(variables: dict[str, np.ndarray]) -> None:
    scaled = [name for name in variables if name.endswith("weight_scale")]
    if scaled:
        raise ValueError(
            "the CTranslate2 model is stored quantized (int8/int16); convert from a float16 or float32 "
            "model.bin (faster-whisper quantizes at load time anyway)"
        )


def _linear(out: dict[str, np.ndarray], dst: str, variables: dict[str, np.ndarray], src: str,
            bias: bool = True) -> None:
    out[f"{dst}.weight"] = variables[f"{src}/weight"]
    if bias:
        out[f"{dst}.bias"] = variables[f"{src}/bias"]


def _norm(out: dict[str, np.ndarray], dst: str, variables: dict[str, np.ndarray], src: str) -> None:
    out[f"{dst}.weight"] = variables[f"{src}/gamma"]
    out[f"{dst}.bias"] = variables[f"{src}/beta"]


def _split_rows(variables: dict[str, np.ndarray], src: str, parts: int) -> list[tuple[np.ndarray, np.ndarray]]:
    weights = np.split(variables[f"{src}/weight"], parts, axis=0)
    biases = np.split(variables[f"{src}/bias"], parts, axis=0)
    return list(zip(weights, biases, strict=True))


def _attention(out: dict[str, np.ndarray], dst: str, variables: dict[str, np.ndarray], src: str,
               cross: bool) -> None:
    if cross:
        out[f"{dst}.query.weight"] = variables[f"{src}/linear_0/weight"]
        out[f"{dst}.query.bias"] = variables[f"{src}/linear_0/bias"]
        (k_w, _), (v_w, v_b) = _split_rows(variables, f"{src}/linear_1", 2)
        out_src = f"{src}/linear_2"
    else:
        (q_w, q_b), (k_w, _), (v_w, v_b) = _split_rows(variables, f"{src}/linear_0", 3)
        out[f"{dst}.query.weight"], out[f"{dst}.query.bias"] = q_w, q_b
        out_src = f"{src}/linear_1"
    # whisper's key projection has no bias; CTranslate2 filled that slot with zeros.
    out[f"{dst}.key.weight"] = k_w
    out[f"{dst}.value.weight"], out[f"{dst}.value.bias"] = v_w, v_b
    _linear(out, f"{dst}.out", variables, out_src)
    _norm(out, f"{dst}_ln", variables, f"{src}/layer_norm")


def _mlp(out: dict[str, np.ndarray], dst: str, variables: dict[str, np.ndarray], src: str) -> None:
    _linear(out, f"{dst}.mlp.0", variables, f"{src}/linear_0")
    _linear(out, f"{dst}.mlp.2", variables, f"{src}/linear_1")
    _norm(out, f"{dst}.mlp_ln", variables, f"{src}/layer_norm")


def state_dict(variables: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """CTranslate2 variable names → openai-whisper `Whisper` parameter names."""
    _check_unquantized(variables)
    dims = dimensions(variables)
    out: dict[str, np.ndarray] = {}
    for conv in ("conv1", "conv2"):
        _linear(out, f"encoder.{conv}", variables, f"encoder/{conv}")
    out["encoder.positional_embedding"] = variables["encoder/position_encodings/encodings"]
    for i in range(dims["n_audio_layer"]):
        src, dst = f"encoder/layer_{i}", f"encoder.blocks.{i}"
        _attention(out, f"{dst}.attn", variables, f"{src}/self_attention", cross=False)
        _mlp(out, dst, variables, f"{src}/ffn")
    _norm(out, "encoder.ln_post", variables, "encoder/layer_norm")

    out["decoder.token_embedding.weight"] = variables["decoder/embeddings/weight"]
    out["decoder.positional_embedding"] = variables["decoder/position_encodings/encodings"]
    for i in range(dims["n_text_layer"]):
        src, dst = f"decoder/layer_{i}", f"decoder.blocks.{i}"
        _attention(out, f"{dst}.attn", variables, f"{src}/self_attention", cross=False)
        _attention(out, f"{dst}.cross_attn", variables, f"{src}/attention", cross=True)
        _mlp(out, dst, variables, f"{src}/ffn")
    _norm(out, "decoder.ln", variables, "decoder/layer_norm")
    return out


def convert(ct2_dir: Path, out_path: Path) -> Path:
    """Write an openai-whisper checkpoint (`{"dims", "model_state_dict"}`) for the model in `ct2_dir`.

    Tensors keep their stored precision (float16 like OpenAI's own checkpoints);
    openai-whisper copies them into its float32 model on load.
    """
    import torch

    spec, variables = read_model(ct2_dir / "model.bin")
    if spec != "WhisperSpec":
        raise ValueError(f"{ct2_dir} holds a {spec}, not a whisper model")
    checkpoint = {
        "dims": dimensions(variables),
        "model_state_dict": {name: torch.from_numpy(np.ascontiguousarray(a))
                             for name, a in state_dict(variables).items()},
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f"{out_path.name}.tmp{os.getpid()}")
    torch.save(checkpoint, tmp)
    os.replace(tmp, out_path)
    _write_stamp(ct2_dir / "model.bin", out_path)
    log.info("converted whisper checkpoint", extra={"source": str(ct2_dir), "path": str(out_path)})
    return out_path


def _stamp_path(out_path: Path) -> Path:
    return out_path.with_name(out_path.name + ".stamp.json")


def _fingerprint(source: Path, out_path: Path) -> dict[str, Any]:
    src, dst = source.stat(), out_path.stat()
    return {"source": str(source.resolve()), "source_size": src.st_size, "source_mtime_ns": src.st_mtime_ns,
            "size": dst.st_size, "mtime_ns": dst.st_mtime_ns}


def _write_stamp(source: Path, out_path: Path) -> None:
    _stamp_path(out_path).write_text(json.dumps(_fingerprint(source, out_path)))


def is_current(ct2_dir: Path, out_path: Path) -> bool:
    """The checkpoint exists, was written from this very model.bin, and has not changed since."""
    try:
        stamp = json.loads(_stamp_path(out_path).read_text())
        return bool(stamp == _fingerprint(ct2_dir / "model.bin", out_path))
    except (OSError, ValueError):
        return False


def checkpoint_path(name: str, models_dir: Path) -> Path:
    """`<models_dir>/openai-whisper-<name>.pt`; a directory name stands for a CTranslate2 model path."""
    label = Path(name).name if ("/" in name or os.sep in name) else name
    return models_dir / f"openai-whisper-{label}.pt"


def convert_named(name: str, models_dir: Path) -> Path:
    """Checkpoint for whisper model `name` (`tiny.en`, `base` or a CTranslate2 dir), converting once."""
    ct2_dir = models.whisper_ct2(name, models_dir)
    out_path = checkpoint_path(name, models_dir)
    if is_current(ct2_dir, out_path):
        return out_path
    return convert(ct2_dir, out_path)
