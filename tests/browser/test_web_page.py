"""The web page at `/` in a real headless Chromium: talk through a fake microphone, type, hear the reply."""

from __future__ import annotations

import wave
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.stack import Stack

CHROMIUM = Path("/usr/bin/chromium")
CLIP = "en_short/LDC93S1.wav"  # "She had your dark suit in greasy wash water all year", 2.9 s



@pytest.fixture(autouse=True)
def _chromium_installed() -> None:
    # Fail, never skip: .ci/run installs Debian's chromium, and a missing browser must not pass silently.
    assert CHROMIUM.exists(), "Debian chromium is not installed (apt-get install chromium; see .ci/run)"


def _fake_mic_file(speech: Path) -> Path:
    """Chromium's fake capture device wants 16-bit PCM WAV; the clip must be one."""
    path = speech / CLIP
    with wave.open(str(path)) as w:
        assert w.getsampwidth() == 2, "convert the clip to 16-bit PCM first"
    return path


@pytest.fixture
def page(speech: Path) -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    args = [
        "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
        "--disable-background-networking", "--disable-component-update",
        "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
        # %noloop: play the clip once, then silence (a looping clip would be heard twice).
        f"--use-file-for-fake-audio-capture={_fake_mic_file(speech)}%noloop",
        "--autoplay-policy=no-user-gesture-required",
    ]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=args, headless=True)
        context = browser.new_context(viewport={"width": 1000, "height": 800})
        pg = context.new_page()
        pg.errors = []  # type: ignore[attr-defined]
        pg.on("pageerror", lambda exc: pg.errors.append(str(exc)))  # type: ignore[attr-defined]
        try:
            yield pg
        finally:
            browser.close()


def test_talk_type_upload_and_hear_the_reply(stack: Stack, client: httpx.Client, speech: Path, page) -> None:  # type: ignore[no-untyped-def]
    page.goto(stack.base_url + "/")
    assert page.title() == "voicequeue"
    session_id = page.evaluate("window.vq.sessionId")
    assert session_id.startswith("web-")

    # Talk: the fake microphone plays the clip while we record.
    page.click("#record")
    page.wait_for_function("window.vq.status.startsWith('Recording')", timeout=10_000)
    page.wait_for_timeout(3800)
    page.click("#record")
    page.wait_for_function("window.vq.status === 'Done.' || window.vq.errors.length > 0", timeout=180_000)
    assert page.evaluate("window.vq.errors") == [], page.evaluate("window.vq.errors")
    transcript = page.inner_text(".turn .transcript")
    assert "greasy wash water" in transcript.lower(), transcript
    reply = page.inner_text(".turn .reply")
    job = client.get(f"/v1/jobs/{page.evaluate('window.vq.jobId')}").json()
    assert reply.strip() and reply == job["results"]["llm"]["text"]
    assert job["options"]["session_id"] == session_id
    # Playback: sentence chunks were fetched, decoded, scheduled and at least one finished playing.
    assert page.evaluate("window.vq.chunksStarted") >= 1
    page.wait_for_function("window.vq.chunksPlayed >= 1", timeout=60_000)
    assert page.evaluate("window.vq.chunksReceived") == len(job["chunks"])

    # Type: the second turn of the same session; the history shows both.
    page.fill("#text", "Please repeat the last thing I said.")
    page.click("#send")
    page.wait_for_function("document.querySelectorAll('.turn').length === 2 && window.vq.status === 'Done.'",
                           timeout=180_000)
    assert page.inner_text(".turn .reply").strip()
    page.wait_for_function("document.querySelectorAll('#history li').length === 4", timeout=10_000)
    history = page.inner_text("#history")
    assert "greasy wash water" in history.lower() and "repeat the last thing" in history.lower(), history

    # Upload: a file from disk is a third turn.
    page.set_input_files("#file", str(speech / "en_short/jfk.flac"))
    page.wait_for_function("document.querySelectorAll('.turn').length === 3 && window.vq.status === 'Done.'",
                           timeout=180_000)
    assert "ask not what your country" in page.inner_text(".turn .transcript").lower()
    page.screenshot(path="/tmp/voicequeue_page.png", full_page=True)
    assert page.errors == []
