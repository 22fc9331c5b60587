"""Whisper's encoder window: accuracy and decode time with the input trimmed, against whisper's own 30 s.

faster-whisper pads every input to 30 s before the encoder, so a short turn costs as much encoder work as
30 s of speech. `services/asr/engines/base.EncoderWindow` trims the window to the speech plus a margin,
with a floor. This runs the ASR engine as the worker makes it, once per setting, on the same audio (the
product trims only a live call's pieces, a few seconds each; these whole clips, up to 27 s, test the same
trim harder):

- English: every `en_short/` and `telephone/` clip, whisper tiny.en, beam 5, VAD (the live defaults);
  WER over all clips (words pooled) and the number of clips whose normalised transcript changed against
  the 30 s window.
- Mandarin: the `zh/` clips, whisper base, greedy, VAD, t2s (the zh defaults); mean CER.
- Decode seconds per clip: median over `--rounds` passes, and its ratio to the 30 s window in the same run.

Usage: `python bench/encoder_window.py [--rounds 3] [--settings 30/0,15/5,10/5,10/3]` (window floor s /
margin s; 30/0 is whisper's own window). Part of `make bench`.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.pipeline import SPEECH, machine  # noqa: E402
from services.asr import script  # noqa: E402
from services.asr.engines.base import EncoderWindow  # noqa: E402
from services.asr.engines.faster_whisper import FasterWhisperEngine  # noqa: E402
from shared import audio, cpu, models, textnorm  # noqa: E402
from shared.config import CommonSettings  # noqa: E402


def manifest(prefixes: tuple[str, ...]) -> list[dict[str, str]]:
    with (SPEECH / "MANIFEST.tsv").open(newline="", encoding="utf-8") as f:
        return [r for r in csv.DictReader(f, delimiter="\t") if r["file"].startswith(prefixes)]


def run(asr: FasterWhisperEngine, clips: list[tuple[Any, str]], language: str, beam: int, rounds: int,
        window: EncoderWindow | None) -> tuple[list[str], list[float]]:
    texts, seconds = [], []
    for pcm, _ in clips:
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            text = asr.transcribe(pcm, language=language, beam_size=beam, vad=True, window=window).text
            times.append(time.perf_counter() - start)
        texts.append(textnorm.normalize(script.convert(text, "t2s") if language == "zh" else text))
        seconds.append(statistics.median(times))
    return texts, seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--settings", default="30/0,15/5,10/5,10/3")
    args = ap.parse_args()
    settings = [tuple(float(x) for x in s.split("/")) for s in args.settings.split(",")]
    english = [(audio.decode((SPEECH / r["file"]).read_bytes()), r["transcript"])
               for r in manifest(("en_short/", "telephone/"))]
    mandarin = [(audio.decode((SPEECH / r["file"]).read_bytes()), r["transcript"]) for r in manifest(("zh/",))]
    en = FasterWhisperEngine("tiny.en", models.whisper_tiny_en(), cpu_threads=cpu.cores())
    zh = FasterWhisperEngine("base", models.whisper_base(CommonSettings().models_dir), cpu_threads=cpu.cores())
    en.transcribe(english[0][0], language="en", beam_size=5, vad=True)  # load and warm
    zh.transcribe(mandarin[0][0], language="zh", beam_size=1, vad=True)
    rows, reference_texts, reference_seconds = [], None, None
    for floor, margin in settings:
        window = EncoderWindow(floor, margin) if floor < 30 else None
        en_texts, en_s = run(en, english, "en", 5, args.rounds, window)
        zh_texts, zh_s = run(zh, mandarin, "zh", 1, args.rounds, window)
        refs = " ".join(textnorm.normalize(r) for _, r in english)
        wer = textnorm.wer(refs, " ".join(en_texts))
        cer = statistics.mean(textnorm.cer(r, t) for (_, r), t in zip(mandarin, zh_texts, strict=True))
        if reference_texts is None:
            reference_texts, reference_seconds = en_texts + zh_texts, en_s + zh_s
        changed = sum(a != b for a, b in zip(reference_texts, en_texts + zh_texts, strict=True))
        ratios = [s / r for s, r in zip(en_s + zh_s, reference_seconds or [], strict=True)]
        rows.append({"window": "30 s (whisper's own)" if window is None else f"≥ {floor:g} s, speech + {margin:g} s",
                     "wer": wer, "cer": cer, "changed": changed, "en_s": statistics.median(en_s),
                     "zh_s": statistics.median(zh_s), "ratio": statistics.median(ratios)})
        print(f"{rows[-1]['window']}: en WER {wer:.4f}, zh CER {cer:.4f}, {changed} transcripts changed, "
              f"median decode en {rows[-1]['en_s']:.3f} s zh {rows[-1]['zh_s']:.3f} s", flush=True)
    print(f"\nmachine: {machine()}; {len(english)} English clips (tiny.en, beam 5), {len(mandarin)} Mandarin "
          f"(base, greedy, t2s); decode time per clip, median of {args.rounds}\n")
    print("| encoder window | en WER | zh CER | transcripts changed | en decode s p50 | zh decode s p50 | "
          "time / 30 s window (p50 per clip) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['window']} | {r['wer']:.4f} | {r['cer']:.4f} | {r['changed']} | {r['en_s']:.3f} | "
              f"{r['zh_s']:.3f} | {r['ratio']:.2f} |")


if __name__ == "__main__":
    main()
