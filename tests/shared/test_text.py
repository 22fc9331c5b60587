"""Transcript scoring and subtitle rendering."""

from shared import subtitles
from shared.textnorm import cer, normalize, wer


def test_normalize() -> None:
    assert normalize("Ask not, what YOUR country...") == "ask not what your country"
    assert normalize("one zero oh") == normalize("1 0 0") == normalize("100")


def test_wer_cer() -> None:
    assert wer("the cat sat", "The cat sat.") == 0
    assert abs(wer("the cat sat down", "the dog sat") - 0.5) < 1e-9
    assert cer("广州市房地产", "广州市房地") == 1 / 6


def test_subtitles() -> None:
    segs = [{"start": 0.0, "end": 1.5, "text": " Hello"}, {"start": 61.25, "end": 3661.0, "text": "Bye"}]
    assert subtitles.srt(segs) == ("1\n00:00:00,000 --> 00:00:01,500\nHello\n\n"
                                   "2\n00:01:01,250 --> 01:01:01,000\nBye\n")
    assert subtitles.vtt(segs).startswith("WEBVTT\n\n00:00:00.000 --> 00:00:01.500\nHello\n")
