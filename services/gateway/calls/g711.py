"""G.711 μ-law and A-law (telephone audio, 8 bits per sample) to and from 16-bit PCM.

Decoding uses a 256-entry table; encoding a 65536-entry one, built once, so a
20 ms telephone frame costs a single numpy lookup either way.
"""

from __future__ import annotations

from functools import cache

import numpy as np

_BIAS = 0x84


def _ulaw_decode_one(byte: int) -> int:
    u = ~byte & 0xFF
    sign, exponent, mantissa = u & 0x80, (u >> 4) & 0x07, u & 0x0F
    magnitude = (((mantissa << 3) + _BIAS) << exponent) - _BIAS
    return -magnitude if sign else magnitude


def _alaw_decode_one(byte: int) -> int:
    a = byte ^ 0x55
    sign, exponent, mantissa = a & 0x80, (a >> 4) & 0x07, a & 0x0F
    magnitude = (mantissa << 4) + 8 if exponent == 0 else ((mantissa << 4) + 0x108) << (exponent - 1)
    return magnitude if sign else -magnitude


def _ulaw_encode_one(sample: int) -> int:
    # The reference (Sun g711.c) works on 14-bit samples: the shift floors negatives, as it does there.
    value = sample >> 2
    mask = 0x7F if value < 0 else 0xFF
    value = min(-value if value < 0 else value, 8159) + (_BIAS >> 2)
    exponent = max(value.bit_length() - 6, 0)
    if exponent > 7:  # past the top segment: the loudest code
        return 0x7F ^ mask
    mantissa = (value >> (exponent + 1)) & 0x0F
    return ((exponent << 4) | mantissa) ^ mask


def _alaw_encode_one(sample: int) -> int:
    sign = 0x80 if sample >= 0 else 0
    magnitude = min(-sample - 1 if sample < 0 else sample, 32767) >> 3  # 13-bit magnitude
    if magnitude < 32:
        code = magnitude >> 1
    else:
        exponent = magnitude.bit_length() - 5
        code = (exponent << 4) | ((magnitude >> exponent) & 0x0F)
    return (sign | code) ^ 0x55


@cache
def _tables() -> dict[str, np.ndarray]:
    samples = range(-32768, 32768)
    return {
        "ulaw_dec": np.array([_ulaw_decode_one(b) for b in range(256)], dtype=np.int16),
        "alaw_dec": np.array([_alaw_decode_one(b) for b in range(256)], dtype=np.int16),
        # Indexed by sample + 32768.
        "ulaw_enc": np.array([_ulaw_encode_one(s) for s in samples], dtype=np.uint8),
        "alaw_enc": np.array([_alaw_encode_one(s) for s in samples], dtype=np.uint8),
    }


def ulaw_to_pcm(data: bytes) -> bytes:
    return _tables()["ulaw_dec"][np.frombuffer(data, dtype=np.uint8)].tobytes()


def alaw_to_pcm(data: bytes) -> bytes:
    return _tables()["alaw_dec"][np.frombuffer(data, dtype=np.uint8)].tobytes()


def pcm_to_ulaw(pcm: bytes) -> bytes:
    samples = np.frombuffer(pcm, dtype=np.int16).astype(np.int32) + 32768
    return _tables()["ulaw_enc"][samples].tobytes()


def pcm_to_alaw(pcm: bytes) -> bytes:
    samples = np.frombuffer(pcm, dtype=np.int16).astype(np.int32) + 32768
    return _tables()["alaw_enc"][samples].tobytes()
