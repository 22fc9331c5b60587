"""`voicequeue`: start the stack or one of its processes, and manage models.

Service modules are imported inside each command so that, say, the gateway
never loads ASR or TTS code.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

if TYPE_CHECKING:
    from pydantic_settings import BaseSettings

REPO_PROCFILE = Path(__file__).resolve().parents[1] / "Procfile"


def _up(args: argparse.Namespace) -> int:
    """Decide which processes run, make sure models exist, then become their supervisor (voicequeue.supervisor)."""
    from services.gateway.config import GatewaySettings
    from shared import models

    settings = GatewaySettings()
    # A live-only ASR worker beside a niced batch one: an in-process worker cannot stop mid-recording,
    # so a live turn must never queue behind an hour-long call (see docs/benchmarks.md).
    procs = ["asr", "asr-batch", "llm", "tts", "gateway"]
    if "VQ_REDIS_URL" not in os.environ:
        procs.insert(0, "redis")
    if "VQ_LLM_BASE_URL" not in os.environ:
        procs.insert(0, "llm-server")
        models.qwen_gguf(settings.models_dir)
    models.whisper_base(settings.models_dir)
    models.kokoro_onnx(settings.models_dir)  # assembled once here, not by each TTS worker at once
    env_bin = str(Path(sys.executable).parent)
    os.environ["PATH"] = env_bin + os.pathsep + os.environ.get("PATH", "")
    print(f"voicequeue: starting {', '.join(procs)}", flush=True)
    print(f"voicequeue: gateway at http://{settings.gateway_host}:{settings.gateway_port}", flush=True)
    from voicequeue import supervisor

    return supervisor.run(args.procfile, procs)


def _redis(args: argparse.Namespace) -> int:
    from shared import redis_server
    from shared.config import CommonSettings

    settings = CommonSettings()
    port = urlparse(settings.redis_url).port or 6379
    cmd = redis_server.command(port, settings.data_dir / "redis")
    os.execv(cmd[0], cmd)
    return 0


def _worker(args: argparse.Namespace) -> int:
    import importlib

    importlib.import_module(f"services.{args.stage}.worker").main()
    return 0


def _gateway(args: argparse.Namespace) -> int:
    from services.gateway import server
    from services.gateway.app import create_app
    from services.gateway.config import GatewaySettings
    from shared import logs

    settings = GatewaySettings()
    logs.setup("gateway", settings.log_level, settings.log_json,
               debug=settings.debug, redact_pii=settings.log_redact_pii)
    server.run(create_app(settings), settings)
    return 0


def _llm_server(args: argparse.Namespace) -> int:
    from services.llm import server

    server.main()
    return 0


def _models_fetch(args: argparse.Namespace) -> int:
    from shared import models
    from shared.config import CommonSettings

    settings = CommonSettings()
    print(models.whisper_tiny_en())
    print(models.whisper_base(settings.models_dir))
    print(models.qwen_gguf(settings.models_dir))
    print(models.piper_voice()[0])
    print(models.kokoro_onnx(settings.models_dir))
    print(models.kokoro_zh_voices(settings.models_dir))
    return 0


def _convert_whisper(args: argparse.Namespace) -> int:
    from services.asr import convert
    from shared.config import CommonSettings

    out = convert.convert_named(args.model, CommonSettings().models_dir)
    print(out)
    return 0


def settings_sections() -> list[tuple[str, type[BaseSettings]]]:
    """Every settings class, titled, in the order `.env.example` documents them."""
    from services.asr.config import AsrSettings
    from services.gateway.config import GatewaySettings
    from services.llm.config import LlmSettings
    from services.tts.config import TtsSettings
    from shared.config import CommonSettings
    from voicequeue.supervisor import SupervisorSettings

    return [
        ("common", CommonSettings),
        ("gateway", GatewaySettings),
        ("asr worker", AsrSettings),
        ("llm worker and llm-server", LlmSettings),
        ("tts worker", TtsSettings),
        ("voicequeue up (supervisor)", SupervisorSettings),
    ]


def _env_example(args: argparse.Namespace) -> int:
    from shared import envdoc

    print(envdoc.render(settings_sections()), end="")
    return 0


def _tenant_name(value: str) -> str:
    from services.gateway import keystore
    from shared import tenants

    try:
        # 'public' is the tenant of requests made while auth is off: a FAQ may be meant for them.
        return value if value == tenants.OPEN_TENANT else keystore.check_tenant_name(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _faq_load(args: argparse.Namespace) -> int:
    """Pre-load the answer cache with the keys the llm worker will look up (same system prompt and model)."""
    import redis

    from services.llm import embeddings
    from services.llm.config import LlmSettings
    from shared import answer_cache, connection

    settings = LlmSettings()
    embedder = embeddings.load(settings.llm_faq_paraphrase)
    languages = [None if lang.lower() in ("", "none", "any") else lang for lang in args.language or ["en", "none"]]
    try:
        count = answer_cache.load_faq(connection.client(settings), args.file,
                                      system_prompt=settings.llm_system_prompt, model=settings.llm_model,
                                      languages=languages, ttl_s=args.ttl or settings.llm_faq_ttl_s,
                                      tenant=answer_cache.GLOBAL if args.global_set else args.tenant,
                                      embed=embedder.encode if embedder else None)
    except answer_cache.FaqError as exc:
        print(f"voicequeue faq load: {exc}", file=sys.stderr)
        return 2
    except redis.RedisError as exc:
        print(f"voicequeue faq load: cannot reach Redis at {settings.redis_url}: {exc}", file=sys.stderr)
        return 1
    shown = ", ".join(lang or "unspecified" for lang in languages)
    whose = "every tenant (global)" if args.global_set else f"tenant {args.tenant}"
    print(f"loaded {count} FAQ answers for {whose}, language(s) {shown}"
          f"{', paraphrases indexed' if embedder else ''}")
    return 0


def _batch(args: argparse.Namespace) -> int:
    import httpx

    try:
        return int(args.batch_fn(args))
    except httpx.HTTPError as exc:
        print(f"voicequeue batch: gateway at {args.url}: {exc}", file=sys.stderr)
        return 1


def _default_url() -> str:
    from services.gateway.config import GatewaySettings

    settings = GatewaySettings()
    host = "127.0.0.1" if settings.gateway_host in ("0.0.0.0", "::") else settings.gateway_host
    return f"http://{host}:{settings.gateway_port}"


def _add_batch(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from voicequeue import batch

    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--url", default=None, help="gateway base URL (default: from VQ_GATEWAY_HOST/PORT)")
    parent.add_argument("--api-key", default=os.environ.get("VQ_API_KEY"),
                        help="the tenant's API key when auth is on (default: $VQ_API_KEY)")
    top = sub.add_parser("batch", help="recorded calls in bulk: submit, status, export")
    bsub = top.add_subparsers(dest="batch_command", required=True)
    submit = bsub.add_parser("submit", parents=[parent], help="submit files, directories or a manifest; "
                             "resumable (re-run the same command after an interrupt)")
    submit.add_argument("paths", nargs="+", help="audio files, directories (recursive) or manifest .tsv/.csv "
                        "(column 'file', relative to the manifest; optional 'language')")
    submit.add_argument("--out", default="results.jsonl", help="JSONL results; its .state.json makes resuming work")
    submit.add_argument("--summarize", action="store_true", help="also run the LLM analysis of each call")
    submit.add_argument("--language", default=None, help="ISO code for every call (default: detected)")
    submit.add_argument("--hotwords", default=None, help="words the recogniser should favour")
    submit.add_argument("--channel-speakers", default=None, help="stereo speaker names, e.g. agent,customer")
    submit.add_argument("--poll", type=float, default=1.0, help="seconds between progress checks")
    submit.add_argument("--quiet", action="store_true", help="no progress bar")
    submit.set_defaults(fn=_batch, batch_fn=batch.submit)
    status = bsub.add_parser("status", parents=[parent], help="counts, audio hours, ETA and failures of a batch")
    status.add_argument("id")
    status.add_argument("--json", action="store_true", help="the raw status document")
    status.set_defaults(fn=_batch, batch_fn=batch.status)
    export = bsub.add_parser("export", parents=[parent], help="write a batch's results into a directory")
    export.add_argument("id")
    export.add_argument("--format", choices=["jsonl", "csv", "srt", "vtt"], default="jsonl")
    export.add_argument("--out", type=Path, required=True, help="directory (srt/vtt: one file per call)")
    export.set_defaults(fn=_batch, batch_fn=batch.export)


def _kb(args: argparse.Namespace) -> int:
    import httpx

    try:
        return int(args.kb_fn(args))
    except httpx.HTTPError as exc:
        print(f"voicequeue kb: gateway at {args.url}: {exc}", file=sys.stderr)
        return 1


def _add_kb(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from voicequeue import kb, webhooks

    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--url", default=None, help="gateway base URL (default: from VQ_GATEWAY_HOST/PORT)")
    parent.add_argument("--api-key", default=os.environ.get("VQ_API_KEY"),
                        help="the tenant's API key when auth is on (default: $VQ_API_KEY)")
    parent.add_argument("--timeout", type=float, default=60.0, help="seconds per HTTP request")
    parent.set_defaults(fn=_kb)
    kb.add_parser(sub, parent)
    webhooks.add_parser(sub, parent, _default_url)


def _add_tools(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from voicequeue import tools

    tools.add_parser(sub)


def _add_keys(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from voicequeue import apikeys

    apikeys.add_parser(sub)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="voicequeue", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    def add(name: str, fn: Callable[[argparse.Namespace], int], help_: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_)
        sp.set_defaults(fn=fn)
        return sp

    up = add("up", _up, "start the whole stack in the foreground (Ctrl-C stops it)")
    up.add_argument("--procfile", type=Path, default=REPO_PROCFILE)
    add("redis-server", _redis, "run the embedded redis-server (AOF on) on VQ_REDIS_URL's port")
    worker = add("worker", _worker, "run a stage worker")
    worker.add_argument("stage", choices=["asr", "llm", "tts"])
    add("gateway", _gateway, "run the HTTP gateway")
    add("llm-server", _llm_server, "run the local llama.cpp OpenAI-compatible server")
    add("env-example", _env_example, "print every setting with its default (the source of .env.example)")
    models = sub.add_parser("models", help="offline model files")
    msub = models.add_subparsers(dest="models_command", required=True)
    fetch = msub.add_parser("fetch", help="assemble every model into the cache directory")
    fetch.set_defaults(fn=_models_fetch)
    conv = msub.add_parser("convert-whisper", help="turn CTranslate2 whisper weights into an openai-whisper checkpoint")
    conv.add_argument("--model", default="tiny.en", help="tiny.en, base, or a CTranslate2 model directory")
    conv.set_defaults(fn=_convert_whisper)
    faq = sub.add_parser("faq", help="the answer cache's frequently asked questions")
    fsub = faq.add_subparsers(dest="faq_command", required=True)
    load = fsub.add_parser("load", help="pre-load answers from a YAML or JSONL file of {question, answer} pairs")
    load.add_argument("file", type=Path, help="FAQ file: .yaml/.yml (a list) or .jsonl (one object a line)")
    load.add_argument("--language", action="append",
                      help="caller language the answers are for; repeat for several; 'none' = requests that "
                      "name no language (default: en and none)")
    load.add_argument("--ttl", type=int, default=None, help="seconds to keep them (default: VQ_LLM_FAQ_TTL_S)")
    scope = load.add_mutually_exclusive_group(required=True)
    scope.add_argument("--tenant", type=_tenant_name, help="the tenant whose callers get these answers")
    scope.add_argument("--global", dest="global_set", action="store_true",
                       help="answers for every tenant (each tenant's own FAQ and cache still come first)")
    load.set_defaults(fn=_faq_load)
    _add_batch(sub)
    _add_kb(sub)
    _add_tools(sub)
    _add_keys(sub)
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    gateway_client = ("batch_command", "kb_command", "tools_command")
    if any(getattr(args, name, None) for name in gateway_client) and args.url is None:
        args.url = _default_url()
    sys.exit(args.fn(args))


if __name__ == "__main__":
    main()
