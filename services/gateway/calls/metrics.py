"""Call metrics, counted in the gateway process that holds the socket."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

ACTIVE = Gauge("voicequeue_calls_active", "Calls open on this gateway.", ["transport"])
VOICE_TO_VOICE = Histogram(
    "voicequeue_call_voice_to_voice_seconds",
    "From the caller's last voiced audio to the first reply audio sent.",
    ["transport"], buckets=(0.25, 0.5, 0.75, 1, 1.5, 2, 3, 4, 6, 8, 12, 20, 40))
BARGE_INS = Counter("voicequeue_call_barge_ins", "Replies the caller interrupted.", ["transport"])
FALSE_STARTS = Counter("voicequeue_call_vad_false_starts",
                       "Sounds shorter than the minimum speech duration (not a turn, no interruption).", ["transport"])
ENDS = Counter("voicequeue_call_ends", "Calls ended, by reason.", ["transport", "reason"])
EAGER = Counter("voicequeue_call_eager_replies",
                "Replies started at a pause before the turn ended: adopted (the turn ended there), dropped (the "
                "caller went on) or stale (the words or history had changed by the end of the turn); and "
                "pauses where none was started because the live queues had a backlog (busy).",
                ["transport", "outcome"])
