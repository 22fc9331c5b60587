"""Every bad input gets a 4xx naming the problem; nothing is enqueued and the workers live on."""

from __future__ import annotations

import httpx
import pytest
import redis

from shared import queues
from tests.gateway.helpers import wav_bytes
from tests.stack import Stack


def _flac(speech) -> bytes:
    return (speech / "en_short/jfk.flac").read_bytes()


def _wav(speech) -> bytes:
    return (speech / "en_short/LDC93S1.wav").read_bytes()


CASES = {
    "empty": (lambda s: {"files": {"file": ("a.wav", b"", "audio/wav")}}, 400, "empty"),
    "not audio": (lambda s: {"files": {"file": ("a.txt", b"hello, this is text" * 50, "text/plain")}},
                  400, "not a recognised audio"),
    "truncated wav": (lambda s: {"files": {"file": ("a.wav", _wav(s)[: len(_wav(s)) // 2], "audio/wav")}},
                      400, "truncated"),
    "corrupt flac": (lambda s: {"files": {"file": ("a.flac", _flac(s)[: len(_flac(s)) // 2], "audio/flac")}},
                     400, "corrupt"),
    "header only": (lambda s: {"files": {"file": ("a.wav", _wav(s)[:44], "audio/wav")}}, 400, ""),
    "too large": (lambda s: {"files": {"file": ("big.wav", b"\0" * (26 * 1024 * 1024), "audio/wav")}},
                  413, "25 MB"),
    "too long": (lambda s: {"files": {"file": ("long.wav", wav_bytes(16 * 60, rate=8000), "audio/wav")}},
                 422, "900 s limit"),
    "missing file": (lambda s: {"data": {"language": "en"}}, 422, "missing field 'file'"),
    "unknown language": (lambda s: {"files": {"file": ("a.wav", _wav(s), "audio/wav")},
                                    "data": {"language": "klingon"}}, 400, "unknown language"),
    "file is a plain field": (lambda s: {"data": {"file": "not a file"}}, 422, "file"),
    "malformed form": (lambda s: {"content": b"--xx\r\nbroken", "headers": {
        "content-type": "multipart/form-data; boundary=xx"}}, 4, ""),
    "json instead of form": (lambda s: {"json": {"file": "abc"}}, 422, "file"),
}


def _jobs_and_queues(conn: redis.Redis) -> tuple[int, int]:
    n_jobs = sum(1 for k in conn.scan_iter("vq:job:*") if k.count(b":") == 2)
    return n_jobs, sum(conn.llen(f"rq:queue:{q}") for q in queues.all_names())


@pytest.mark.parametrize("endpoint", ["/v1/turns", "/v1/audio/transcriptions"])
@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_refused(client: httpx.Client, speech, stack_redis: redis.Redis, endpoint: str, case: str) -> None:
    make, status, words = CASES[case]
    conn = stack_redis
    before = _jobs_and_queues(conn)
    r = client.post(endpoint, **make(speech))
    if status < 10:  # a class of status: any 4xx
        assert 400 <= r.status_code < 500, (r.status_code, r.text)
    else:
        assert r.status_code == status, r.text
    message = r.json()["error"]["message"]
    assert message and words.lower() in message.lower(), message
    assert _jobs_and_queues(conn) == before, "a refused request must not create or enqueue a job"


def test_workers_unaffected_after_battery(client: httpx.Client, stack: Stack, speech) -> None:
    for case in CASES.values():
        client.post("/v1/turns", **case[0](speech))
    assert all(p.poll() is None for p in stack.procs.values())
    with open(speech / "en_short/LDC93S1.wav", "rb") as f:
        r = client.post("/v1/audio/transcriptions", files={"file": ("ok.wav", f)})
    assert r.status_code == 200 and "greasy wash water" in r.json()["text"].lower()
