"""Mandarin in and out: ASR settings on the zh clips, and the Mandarin voice against the other local voices.

ASR: whisper base int8 (the model zh jobs use) on the three `zh/` clips of the
test data, with each combination of beam width, initial prompt and VAD, scored
by CER before and after OpenCC t2s (the ASR stage's conversion).

TTS: Kokoro zh (the Mandarin default) vs espeak-ng zh (the old default, the
fallback) vs piper English (the English default, the baseline), in the same
run: model load time, time to first audio (the first sentence of a reply, as
the streamed turn speaks it) and real-time factor over whole replies, medians
of `--rounds` runs. Kokoro's replies are also transcribed back (whisper base,
zh, t2s) for their CER.

Voices: Kokoro's round trip (whisper base, zh, beam 5, t2s; CER as tests/tts/test_kokoro.py scores it) for
each voice (v1.0's eight Mandarin ones and the five Japanese ones) and `--speeds`, on the test's twelve
replies and on twelve held-out ones written before any voice was tried, so a voice chosen on the first set
is checked on the second.

Usage: `python bench/mandarin.py [--rounds 3] [--only asr|tts|voices] [--speeds 1.0,0.85]`.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from services.asr import script  # noqa: E402
from services.tts.config import TtsSettings  # noqa: E402
from services.tts.engines.espeak import EspeakEngine  # noqa: E402
from services.tts.engines.kokoro import KokoroEngine  # noqa: E402
from services.tts.engines.piper import PiperEngine  # noqa: E402
from shared import audio, models, sentences, textnorm  # noqa: E402
from shared.config import CommonSettings  # noqa: E402

SPEECH = Path(os.environ.get("VQ_SPEECH_DIR", REPO.parent / "shared" / "data" / "speech"))
if not SPEECH.exists():
    SPEECH = Path("/work/shared/data/speech")
PROMPT = "以下是普通话的句子，使用简体中文。"

ZH_REPLIES = [
    "您好，您的订单已经发货，预计明天上午9:00送达，运费¥25.50。",
    "我们的营业时间是每天9:00到18:00，周末也正常营业。",
    "这件商品现在打八折，原价¥199，折后只要¥159.20。",
    "如有问题，请拨打客服热线400-123-4567，我们会尽快为您处理。",
]
# Not in any test: the held-out half of the voice comparison.
HELD_OUT = [
    "您的包裹已经发出，预计周五下午送到。",
    "这款耳机的价格是¥299，现在有货。",
    "门店地址是南京路100号，欢迎光临。",
    "积分满500分可以兑换一张优惠券。",
    "请提供您的订单号，我帮您查询。",
    "换货需要在收到商品后7天内申请。",
    "客服的工作时间是早上8:30到晚上9:00。",
    "您的快递单号已经通过短信发送给您。",
    "很抱歉让您久等了，我马上为您处理。",
    "这张优惠券在12月31日之前有效。",
    "大件商品的安装费是¥80。",
    "如果商品有质量问题，我们免费退换。",
]
EN_REPLIES = [
    "Hello, your order has shipped and should arrive tomorrow at nine in the morning.",
    "Our opening hours are nine to six every day, including weekends.",
    "This item is twenty percent off today, so it costs one hundred fifty nine dollars.",
    "If you have any questions, please call our support line and we will help you.",
]


def zh_clips() -> list[tuple[Path, str]]:
    rows = (line.split("\t") for line in (SPEECH / "MANIFEST.tsv").read_text(encoding="utf-8").splitlines())
    return [(SPEECH / row[0], row[5]) for row in rows if row and row[0].startswith("zh/")]


def asr_table(model: Any) -> list[dict[str, Any]]:
    """CER for each decoding setting, before and after t2s, with decode seconds (one pass per clip)."""
    clips = [(audio.decode(path.read_bytes()), reference) for path, reference in zh_clips()]
    rows = []
    for beam, prompt, vad in itertools.product((1, 5), (None, PROMPT), (True, False)):
        raw, simplified, seconds = [], [], 0.0
        for pcm, reference in clips:
            start = time.perf_counter()
            segments, _ = model.transcribe(pcm, language="zh", beam_size=beam, vad_filter=vad,
                                           initial_prompt=prompt)
            text = "".join(s.text for s in segments).strip()
            seconds += time.perf_counter() - start
            raw.append(textnorm.cer(reference, text))
            simplified.append(textnorm.cer(reference, script.convert(text, "t2s")))
        rows.append({"beam": beam, "prompt": bool(prompt), "vad": vad, "cer_raw": statistics.mean(raw),
                     "cer_t2s": statistics.mean(simplified), "decode_s": seconds})
    return rows


def time_synth(engine: Any, text: str, language: str) -> tuple[float, float]:
    """(seconds, audio seconds) for one synthesis."""
    start = time.perf_counter()
    speech = engine.synthesize(text, voice=None, language=language, speed=1.0)
    return time.perf_counter() - start, speech.duration_s


def tts_rows(rounds: int) -> tuple[list[dict[str, Any]], Any]:
    settings = TtsSettings()
    loads: dict[str, float] = {}
    start = time.perf_counter()
    kokoro = KokoroEngine(settings.tts_kokoro_voice, threads=settings.tts_kokoro_threads,
                          models_dir=settings.models_dir)
    loads["kokoro"] = time.perf_counter() - start
    start = time.perf_counter()
    kokoro.warm_up()
    loads["kokoro warm-up"] = time.perf_counter() - start
    start = time.perf_counter()
    espeak = EspeakEngine(settings.tts_zh_voice)
    loads["espeak"] = time.perf_counter() - start
    start = time.perf_counter()
    piper = PiperEngine(settings.tts_voice)
    piper.warm_up()
    loads["piper"] = time.perf_counter() - start
    voices = [(f"Kokoro zh ({kokoro.voice})", kokoro, ZH_REPLIES, "zh", loads["kokoro"] + loads["kokoro warm-up"]),
              ("espeak-ng zh (cmn)", espeak, ZH_REPLIES, "zh", loads["espeak"]),
              ("piper en (baseline)", piper, EN_REPLIES, "en", loads["piper"])]
    rows = []
    for name, engine, replies, language, load_s in voices:
        firsts, rtfs = [], []
        for _ in range(rounds):
            # Time to first audio: the first chunk a streamed reply would send to TTS.
            first = sentences.split(replies[0])[0]
            firsts.append(time_synth(engine, first, language)[0])
            spent, heard = 0.0, 0.0
            for reply in replies:
                seconds, duration = time_synth(engine, reply, language)
                spent, heard = spent + seconds, heard + duration
            rtfs.append(spent / heard)
        rows.append({"voice": name, "load_s": load_s, "first_audio_s": statistics.median(firsts),
                     "rtf": statistics.median(rtfs)})
    return rows, kokoro


def round_trip(kokoro: KokoroEngine, whisper: Any) -> list[float]:
    out = []
    for reply in ZH_REPLIES:
        speech = kokoro.synthesize(reply, voice=None, language="zh", speed=1.0)
        pcm = audio.decode(audio.to_wav(speech.pcm, speech.sample_rate))
        segments, _ = whisper.transcribe(pcm, language="zh", beam_size=5)
        heard = script.convert("".join(s.text for s in segments), "t2s")
        out.append(textnorm.cer(kokoro_reading(reply), kokoro_reading(heard)))
    return out


def voices(whisper: Any, speeds: list[float]) -> None:
    from tests.tts.test_kokoro import REPLIES
    from tests.zh import hear, spoken_cer

    kokoro = KokoroEngine(threads=2, models_dir=CommonSettings().models_dir)
    kokoro.warm_up()
    print("\nKokoro voices, round trip through whisper base (zh, beam 5, t2s): mean / max CER, replies <= 0.10")
    print(f"{'voice':14s} {'speed':>5s} {'test replies (12)':>24s} {'held-out replies (12)':>24s}")
    for voice, speed in itertools.product(sorted(kokoro.voices), speeds):
        cells = []
        for texts in (REPLIES, HELD_OUT):
            cers = [spoken_cer(t, hear(whisper, kokoro.synthesize(t, voice=voice, language="zh", speed=speed)))
                    for t in texts]
            cells.append(f"{statistics.mean(cers):.3f} / {max(cers):.3f}, {sum(c <= 0.10 for c in cers):2d}/12")
        print(f"{voice:14s} {speed:5.2f} {cells[0]:>24s} {cells[1]:>24s}", flush=True)


def kokoro_reading(text: str) -> str:
    """Both sides in characters as spoken (whisper may write 9点 or 九点), 幺 as 一."""
    from services.tts.zh_normalize import normalize

    return normalize(text).replace("幺", "一")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", choices=("asr", "tts", "voices"))
    ap.add_argument("--speeds", default="1.0", help="Kokoro speeds for --only voices, comma-separated")
    args = ap.parse_args()
    print(f"load average at start: {Path('/proc/loadavg').read_text().split()[:3]}")
    from faster_whisper import WhisperModel

    start = time.perf_counter()
    whisper = WhisperModel(str(models.whisper_base(CommonSettings().models_dir)), device="cpu",
                           compute_type="int8", cpu_threads=2)
    print(f"whisper base int8 load: {time.perf_counter() - start:.2f} s")
    if args.only == "voices":
        voices(whisper, [float(x) for x in args.speeds.split(",")])
        return
    if args.only != "tts":
        rows = asr_table(whisper)
        greedy = next(r for r in rows if r["beam"] == 1 and not r["prompt"] and r["vad"])
        print("\nASR on the zh clips (whisper base int8, language=zh; mean CER of 3 clips)")
        print(f"{'beam':>4s} {'prompt':>6s} {'vad':>4s} {'CER raw':>8s} {'CER t2s':>8s} {'decode s':>9s}")
        for r in rows:
            print(f"{r['beam']:4d} {'yes' if r['prompt'] else 'no':>6s} {'on' if r['vad'] else 'off':>4s} "
                  f"{r['cer_raw']:8.3f} {r['cer_t2s']:8.3f} {r['decode_s']:9.2f}")
        print(f"baseline (greedy, no prompt, VAD, no t2s): CER {greedy['cer_raw']:.3f}")
    if args.only != "asr":
        rows, kokoro = tts_rows(args.rounds)
        base = next(r for r in rows if r["voice"].startswith("piper"))
        print(f"\nTTS, medians of {args.rounds} rounds ({len(ZH_REPLIES)} replies per voice)")
        print(f"{'voice':22s} {'load s':>7s} {'first audio s':>14s} {'RTF':>6s} {'RTF vs piper':>13s}")
        for r in rows:
            print(f"{r['voice']:22s} {r['load_s']:7.2f} {r['first_audio_s']:14.3f} {r['rtf']:6.3f} "
                  f"{r['rtf'] / base['rtf']:12.2f}x")
        cers = round_trip(kokoro, whisper)
        print(f"\nKokoro round trip through whisper base (zh, t2s): mean CER {statistics.mean(cers):.3f}, "
              f"max {max(cers):.3f}")
    print(f"load average at end: {Path('/proc/loadavg').read_text().split()[:3]}")


if __name__ == "__main__":
    main()
