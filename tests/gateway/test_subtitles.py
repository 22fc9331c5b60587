"""Subtitle rendering (SRT and VTT) for transcriptions and batch exports."""

from services.gateway import subtitles


def test_subtitles() -> None:
    segs = [{"start": 0.0, "end": 1.5, "text": " Hello"}, {"start": 61.25, "end": 3661.0, "text": "Bye"}]
    assert subtitles.srt(segs) == ("1\n00:00:00,000 --> 00:00:01,500\nHello\n\n"
                                   "2\n00:01:01,250 --> 01:01:01,000\nBye\n")
    assert subtitles.vtt(segs).startswith("WEBVTT\n\n00:00:00.000 --> 00:00:01.500\nHello\n")
