"""`voicequeue llm-server` running llama.cpp's llama-server: parallel slots warm with the system prompt,
the call-analysis schema path, logs through the privacy filter, signals passed on to the child."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from services.llm import actions, analysis, guided, server, warmup
from services.llm.config import SYSTEM_PROMPT, LlmSettings
from tests.llm.conftest import _wait_models, start_server, wait_warm, warm_server
from tests.llm.helpers import API_KEY

QUESTIONS = ["What are your opening hours?", "How do I reset my password?", "Do you ship to Canada?",
             "How long does a refund take?", "Where can I find my invoice?", "Can I pay by card?"]


def chat(base_url: str, question: str, **extra: Any) -> dict[str, Any]:
    body = {"model": LlmSettings().llm_model, "temperature": 0.0, "max_tokens": 8,
            "messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": question}],
            **extra}
    r = httpx.post(f"{base_url}/chat/completions", json=body, timeout=300,
                   headers={"Authorization": f"Bearer {API_KEY}"})
    r.raise_for_status()
    return dict(r.json())


def test_command_runs_parallel_slots_with_continuous_batching(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = LlmSettings(llm_server_slots=3, llm_server_threads=2, llm_server_ctx=2048)
    argv = server.llama_server_command(settings)
    assert Path(argv[0]).name == "llama-server" and Path(argv[0]).exists()
    flags = dict(zip(argv[1::2], argv[2::2], strict=False))
    assert argv[argv.index("--parallel") + 1] == "3" and argv[argv.index("--ctx-size") + 1] == str(3 * 2048)
    assert argv[argv.index("--threads") + 1] == "2"
    assert {"--cont-batching", "--cache-prompt"} <= set(argv) and "--kv-unified" not in set(argv)
    assert flags["--alias"] == settings.llm_model
    env = server.environment(LlmSettings(llm_api_key="sk-secret-x"))
    assert env["LLAMA_API_KEY"] == "sk-secret-x" and "sk-secret-x" not in " ".join(argv)  # not in `ps`
    # The openai-whisper engine sets the variable in its own process (which a test may have loaded it in).
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert server.environment(LlmSettings())["OMP_WAIT_POLICY"] == "PASSIVE"  # no spinning (llm_server_spin)
    assert "OMP_WAIT_POLICY" not in server.environment(LlmSettings(llm_server_spin=True))
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")  # the operator's own choice stands
    assert server.environment(LlmSettings())["OMP_WAIT_POLICY"] == "ACTIVE"
    assert Path(argv[argv.index("--slot-save-path") + 1]) == server.slot_dir(settings)  # created, private
    assert (server.slot_dir(settings) or Path("/")).stat().st_mode & 0o077 == 0
    # Nowhere to save: the flag is left out and each slot prefills the prompt, as before.
    assert "--slot-save-path" not in server.llama_server_command(LlmSettings(llm_server_slot_dir=Path("/proc/x")))
    missing = LlmSettings(llm_server_binary=Path("/nonexistent/llama-server"))
    with pytest.raises(FileNotFoundError, match="make llama-server"):
        server.command(missing)
    assert server.command(LlmSettings(llm_server_engine="llama-cpp-python"))[1:3] == ["-m", "llama_cpp.server"]


def assert_every_slot_warm(base_url: str, slots: int) -> None:
    """As many concurrent chats as slots: each finds the system prompt cached (only its question prefilled)."""
    results: list[dict[str, Any]] = []
    threads = [threading.Thread(target=lambda q=q: results.append(chat(base_url, q))) for q in QUESTIONS[:slots]]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert len(results) == slots
    for r in results:
        total, fresh = r["usage"]["prompt_tokens"], r["timings"]["prompt_n"]
        assert total > 100 and fresh < 30, f"{fresh} of {total} prompt tokens prefilled: slot was cold"


@pytest.fixture
def fresh_server(tmp_path: Path) -> Iterator[str]:
    """A server only this test uses: the session's shared one has served other tests' prompts by then."""
    with warm_server(tmp_path / "server.log") as base_url:
        yield base_url


ROUTED = {"I want to complain about my parcel.": [actions.TICKET], "Okay, bye now.": [actions.END_CALL],
          "Put me through to an agent.": [actions.TRANSFER], "That's all, and my kettle is broken.":
          [actions.END_CALL, actions.TICKET]}


def test_the_action_routers_prompts_are_ready_on_a_fresh_server(fresh_server: str) -> None:
    """Each question the router can ask about the built-in actions finds its own system prompt cached (only the
    caller's words are prefilled), and the chat slots stay warm after it."""
    assert sorted(map(sorted, ROUTED.values())) == sorted(map(sorted, guided.builtin_picks()))
    for words, names in ROUTED.items():
        assert guided.candidates(words, []) == names
        r = chat(fresh_server, words, max_tokens=24,
                 messages=[{"role": "system", "content": guided.router_prompt(names)},
                           {"role": "user", "content": words}],
                 response_format={"type": "json_schema",  # as the engine asks (OpenAICompatEngine.structured)
                                  "json_schema": {"name": "answer", "schema": guided.decision_schema(names)}})
        total, fresh = r["usage"]["prompt_tokens"], r["timings"]["prompt_n"]
        assert total > 100 and fresh < 30, f"{words!r}: {fresh} of {total} prompt tokens prefilled"
        assert json.loads(r["choices"][0]["message"]["content"])["action"] in [*names, guided.NONE]
    assert_every_slot_warm(fresh_server, LlmSettings().llm_server_slots)


def test_every_slot_starts_warm_even_after_an_analysis(fresh_server: str) -> None:
    """Callers arriving together each find the system prompt cached in their slot (only their question is
    prefilled), also after a call analysis with its own system prompt has used one of the slots."""
    speakers = ["agent", "customer"]
    system = analysis.SYSTEM_PROMPT.format(speakers=", ".join(json.dumps(s) for s in speakers))
    grammar = httpx.post(f"{fresh_server}/chat/completions", timeout=300,
                         headers={"Authorization": f"Bearer {API_KEY}"},
                         json={"model": LlmSettings().llm_model, "max_tokens": 400, "temperature": 0.0,
                               "messages": [{"role": "system", "content": system},
                                            {"role": "user", "content": "Transcript:\nagent: Hello.\ncustomer: My "
                                             "parcel is late.\nagent: It arrives tomorrow."}],
                               "response_format": {"type": "json_object",
                                                   "schema": analysis.json_schema(speakers)}})
    assert grammar.status_code == 200
    total, fresh = grammar.json()["usage"]["prompt_tokens"], grammar.json()["timings"]["prompt_n"]
    assert total > 100 and fresh < 40, f"{fresh} of {total} prompt tokens prefilled: the analysis prompt was cold"
    parsed = analysis.parse(grammar.json()["choices"][0]["message"]["content"], speakers)  # the grammar held
    assert parsed.sentiment.keys() == {"agent", "customer"}

    assert_every_slot_warm(fresh_server, LlmSettings().llm_server_slots)


def test_logs_are_filtered_and_signals_reach_the_child(tmp_path: Path) -> None:
    log_path = tmp_path / "server.log"
    proc, base_url = start_server(log_path, VQ_LLM_SERVER_SLOTS="1")
    try:
        _wait_models(base_url, proc, log_path, timeout_s=180)
        wait_warm(proc, log_path)
        (child,) = psutil.Process(proc.pid).children()
        assert Path(child.exe()).name == "llama-server"
        chat(base_url, "Call me back on 415 555 0123 please.", max_tokens=4)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code in (0, 128 + signal.SIGTERM), code
    assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    from_child = [x for x in lines if x.get("logger") == "llama-server"]
    assert len(from_child) > 10, lines[:5]  # llama-server's own lines, each a JSON record of ours
    assert any(x["msg"] == "llm server warm" for x in lines)
    text = log_path.read_text()
    assert "415 555 0123" not in text and "Call me back" not in text
    assert API_KEY not in text


def test_the_llama_cpp_python_server_stays_selectable(tmp_path: Path) -> None:
    log_path = tmp_path / "server.log"
    proc, base_url = start_server(log_path, VQ_LLM_SERVER_ENGINE="llama-cpp-python")
    try:
        _wait_models(base_url, proc, log_path, timeout_s=180)
        reply = chat(base_url, "What is the capital of France? Answer in one word.", max_tokens=8)
        assert "paris" in reply["choices"][0]["message"]["content"].lower()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_warm_up_waits_for_callers_and_still_warms_every_slot(tmp_path: Path) -> None:
    """A restarted server has callers waiting (the workers retry as soon as it answers): the warm-up must
    not compete with them, so it finishes only after they stop, and then every step has run."""
    log_path = tmp_path / "server.log"
    proc, base_url = start_server(log_path, VQ_LLM_SERVER_SLOT_DIR=str(tmp_path / "slots"))  # nothing saved yet
    try:
        _wait_models(base_url, proc, log_path, timeout_s=180)
        stop = time.monotonic() + 25
        served: list[int] = []

        def caller(offset: int) -> None:
            n = offset
            while time.monotonic() < stop:
                r = chat(base_url, QUESTIONS[n % len(QUESTIONS)], max_tokens=24)
                served.append(r["usage"]["completion_tokens"])
                n += 2
        in_flight: list[int] = []  # what the server is working on or holding back, sampled

        def sample() -> None:
            root = base_url.removesuffix("/v1")
            while time.monotonic() < stop:
                text = httpx.get(f"{root}/metrics", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30).text
                in_flight.append(warmup.in_flight(text))
                time.sleep(0.1)
        callers = [threading.Thread(target=caller, args=(i,)) for i in range(2)] + [threading.Thread(target=sample)]
        for t in callers:
            t.start()
        for t in callers:
            t.join(300)
        callers_done = time.time()
        assert "llm server warm" not in log_path.read_text(), "the warm-up finished while callers were served"
        assert len(in_flight) > 20 and max(in_flight) <= 2, f"warm-up requests beside the 2 callers: {in_flight}"
        wait_warm(proc, log_path)
        warm = next(json.loads(line) for line in log_path.read_text().splitlines() if "llm server warm" in line)
        slots = LlmSettings().llm_server_slots
        assert {f"slot{n}_s" for n in range(slots)} | {"grammar_s"} <= warm.keys(), warm
        assert len(served) >= 2 and all(n > 0 for n in served)  # each caller was served (how often: load)
        print(f"\nwarm-up done {time.time() - callers_done:.1f} s after the callers stopped: {warm}")
    finally:
        proc.terminate()
        proc.wait(30)


def log_records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


def test_a_restarted_server_fills_every_slot_from_the_saved_prefix(tmp_path: Path) -> None:
    """The first start prefills one slot and saves it; a restart restores every slot at once, as soon as the
    model is loaded, so callers a crash cut off do not each prefill the system prompt again."""
    slot_dir = tmp_path / "slots"
    with warm_server(tmp_path / "first.log", VQ_LLM_SERVER_SLOT_DIR=str(slot_dir)):
        pass
    (saved,) = slot_dir.iterdir()  # one prefix, no leftover parts
    assert saved.name.startswith("prefix-") and saved.suffix == ".bin"
    first = next(r for r in log_records(tmp_path / "first.log") if r["msg"] == "llm server warm")
    slots = LlmSettings().llm_server_slots
    assert first["restored"] == slots, first  # the other slots and the last one after the analysis

    log_path = tmp_path / "second.log"
    with warm_server(log_path, VQ_LLM_SERVER_SLOT_DIR=str(slot_dir)) as base_url:
        records = log_records(log_path)
        loaded = next(r["ts"] for r in records if "model loaded" in r["msg"])
        filled = next(r for r in records if r["msg"] == "slots filled from the saved prefix")
        assert filled["slots"] == list(range(slots)) and filled["ts"] - loaded < 2.0, (filled, loaded)
        warm = next(r for r in records if r["msg"] == "llm server warm")
        assert warm["restored"] == slots + 1 and all(warm[f"slot{n}_s"] < 1.0 for n in range(slots)), warm
        assert_every_slot_warm(base_url, slots)


def test_a_slot_a_caller_took_is_never_saved(llm_server: str, tmp_path: Path) -> None:
    """The warm-up saves its slot right after prefilling it, but a caller may have taken the slot in between:
    then what the slot holds is the caller's conversation, and no file of it may stay behind."""
    directory = server.slot_dir(LlmSettings())  # the session server's
    assert directory is not None
    saved = warmup.SavedPrefixes(directory, f"test {tmp_path}")
    root = llm_server.removesuffix("/v1")

    before = set(saved.directory.iterdir())

    async def go() -> tuple[bool, bool, dict[str, Any]]:
        async with httpx.AsyncClient(base_url=root, headers={"Authorization": f"Bearer {API_KEY}"},
                                     timeout=300) as client:
            warmer = warmup.Warmer(client, time.monotonic() + 300, saved)
            tokens = await warmup.prefix_tokens(client, *prompt)
            await warmup.completion_step(tokens, 0)(client)
            chat(llm_server, "My phone number is 415 555 0123.", id_slot=0)  # a caller takes the slot
            taken = await warmer.save(prompt, tokens, 0)
            assert set(saved.directory.iterdir()) == before  # neither the file nor its part
            await warmup.completion_step(tokens, 0)(client)
            kept = await warmer.save(prompt, tokens, 0) and await warmer.restore(saved.name(prompt), tokens, [1])
            return taken, kept, chat(llm_server, QUESTIONS[0], id_slot=1)
    prompt = ([{"role": "system", "content": SYSTEM_PROMPT}], None)
    taken, kept, reply = asyncio.run(go())
    try:
        assert not taken
        assert set(saved.directory.iterdir()) - before == {saved.directory / saved.name(prompt)}
        assert kept and reply["timings"]["prompt_n"] < 30, reply["timings"]  # restored, then reused
    finally:
        saved.forget(prompt)
