"""Every Redis key voicequeue writes, and every field of its hashes, defined once.

Other modules build keys and fields only through these names, so a grep for a
literal finds this file and nothing else. `docs/architecture.md` lists them; a
test checks that list against this module.
"""

from __future__ import annotations

PREFIX = "vq:"

# ---- keys -------------------------------------------------------------------------------------------


def job(job_id: str) -> str:
    """Hash: the job record (fields below, `JOB_*` and the per-stage/per-sentence templates)."""
    return f"{PREFIX}job:{job_id}"


JOB_PATTERN = f"{PREFIX}job:*"


def job_events(job_id: str) -> str:
    """Stream: the job's events (`shared.events`)."""
    return f"{PREFIX}job:{job_id}:events"


def blob(blob_id: str) -> str:
    """Hash: one stored audio file (`BLOB_*` fields)."""
    return f"{PREFIX}blob:{blob_id}"


def session(tenant: str, session_id: str) -> str:
    """List: a conversation's last turns (JSON messages)."""
    return f"{PREFIX}session:{tenant}:{session_id}"


def batch(batch_id: str) -> str:
    """Hash: a batch of recorded calls (`BATCH_*` fields)."""
    return f"{PREFIX}batch:{batch_id}"


def metrics_handoff(worker_name: str) -> str:
    """List: metric updates a forked job process hands to its parent worker."""
    return f"{PREFIX}metrics:{worker_name}"


def run_times(queue: str) -> str:
    """List: the last run times of jobs taken from a stage queue (the queue-full Retry-After estimate)."""
    return f"{PREFIX}run-times:{queue}"


def streams(tenant: str) -> str:
    """Sorted set: a tenant's open event/audio streams (expiring slots)."""
    return f"{PREFIX}streams:{tenant}"


def call(call_id: str) -> str:
    """Hash: a live call's record (field `record`, JSON), rewritten at each step of the call."""
    return f"{PREFIX}call:{call_id}"


def calls_active(tenant: str) -> str:
    """Sorted set: a tenant's open calls (expiring slots, refreshed while each call lives)."""
    return f"{PREFIX}calls:active:{tenant}"


def knowledge_docs(tenant: str) -> str:
    """Hash: a tenant's knowledge-base documents, document id -> JSON `shared.knowledge.Document`."""
    return f"{KNOWLEDGE_PREFIX}{tenant}:docs"


def knowledge_source(tenant: str, doc_id: str) -> str:
    """Hash: a document's uploaded bytes as last sent (`KB_SOURCE_*` fields), read by the indexing job."""
    return f"{KNOWLEDGE_PREFIX}{tenant}:src:{doc_id}"


def knowledge_passages(tenant: str, doc_id: str) -> str:
    """Hash: a document's indexed passages (`KB_PASSAGES_*` fields): texts, vectors, lexical terms."""
    return f"{KNOWLEDGE_PREFIX}{tenant}:passages:{doc_id}"


def knowledge_version(tenant: str) -> str:
    """Counter: bumped whenever a tenant's answerable passages change, so cached indexes reload."""
    return f"{KNOWLEDGE_PREFIX}{tenant}:version"


KNOWLEDGE_PREFIX = f"{PREFIX}kb:"  # + tenant: a tenant's knowledge base (documents are kept until deleted)
RATELIMIT_PREFIX = f"{PREFIX}ratelimit:"  # + "<bucket>:<tenant>": a token bucket hash
IDEMPOTENCY_PREFIX = f"{PREFIX}idem:"  # + "<tenant>:<route>:<key>": a stored answer
ANSWER_PREFIX = f"{PREFIX}answer:"  # + digest: a cached answer
ANSWER_INDEX_PREFIX = f"{PREFIX}answer-index:"  # + digest: FAQ question vectors
SPEECH_PREFIX = f"{PREFIX}tts:speech:"  # + digest: cached synthesized speech
EDGE_DOWN = f"{PREFIX}tts:edge:down"  # set while edge-tts is known to be unreachable
RETENTION_LOCK = f"{PREFIX}retention-sweep"  # one worker per interval sweeps untimed keys
API_KEYS = f"{PREFIX}apikeys"  # hash: sha256(key) -> "<key id> <tenant>"
API_KEY_IDS = f"{PREFIX}apikey-ids"  # hash: key id -> "<sha256> <tenant> <created_at>"
AUTH_ON = f"{PREFIX}auth-on"  # set once the first key exists: auth stays on
REPLICATION_PROBE = f"{PREFIX}replication-probe"  # written before WAIT, so WAIT covers this connection's writes
# Kept on purpose without a TTL (the retention sweep leaves them alone).
PERMANENT: tuple[str, ...] = (API_KEYS, API_KEY_IDS, f"{PREFIX}metrics:*", f"{KNOWLEDGE_PREFIX}*")

# ---- fields of the job hash -------------------------------------------------------------------------

JOB_META = "meta"  # JSON: kind, plan, priority, inputs, options, tenant
JOB_STATUS = "status"
JOB_ERROR = "error"  # JSON: {stage, reason, message}
JOB_CREATED_AT = "created_at"
JOB_TTFA = "ttfa_s"  # seconds from creation to the first sentence's audio
JOB_ANNOUNCED = "tts:announced"  # the next sentence seq whose tts.chunk event is due


def stage_field(stage: str) -> str:
    """JSON: the stage's status, timings, attempts and error."""
    return f"stage:{stage}"


def result_field(stage: str) -> str:
    """JSON: the stage's result."""
    return f"result:{stage}"


def enqueued_field(stage: str) -> str:
    """Set once when the stage is enqueued, so a re-run of the previous stage cannot enqueue it twice."""
    return f"enq:{stage}"


ENQUEUED_PREFIX = "enq:"
SENTENCE_ENQUEUED_PREFIX = "enq:tts:"


def sentence_enqueued_field(seq: int) -> str:
    """Set once when sentence `seq` of a streamed reply is put on the tts queue."""
    return f"{SENTENCE_ENQUEUED_PREFIX}{seq}"


def sentence_claim_field(seq: int) -> str:
    """"<claim time> <claimer rq job id>": who is speaking sentence `seq`."""
    return f"claim:tts:{seq}"


def sentence_attempts_field(seq: int) -> str:
    """How many times speaking sentence `seq` was started."""
    return f"attempts:tts:{seq}"


CHUNK_PREFIX = "chunk:"


def chunk_field(seq: int) -> str:
    """JSON: sentence `seq`'s audio record (`shared.jobs.Chunk`)."""
    return f"{CHUNK_PREFIX}{seq}"


COST_PREFIX = "cost:"


def cost_field(item: str) -> str:
    """A float counter: audio_s, prompt_tokens, completion_tokens, tts_characters, cache hits."""
    return f"{COST_PREFIX}{item}"


# ---- fields of an event stream entry ----------------------------------------------------------------

EVENT_TYPE, EVENT_DATA = "type", "data"

# ---- fields of other hashes -------------------------------------------------------------------------

BLOB_DATA, BLOB_TYPE, BLOB_TENANT = "data", "type", "tenant"
KB_SOURCE_DATA, KB_SOURCE_GENERATION = "data", "generation"
KB_PASSAGES_GENERATION, KB_PASSAGES_TEXTS = "generation", "texts"  # texts: JSON list of passages
KB_PASSAGES_VECTORS, KB_PASSAGES_TERMS = "vectors", "terms"  # float32 rows; JSON list of token lists
BATCH_META = "meta"
BATCH_COUNT = "n"  # calls added so far (the next member's seq)
BATCH_HASH_PREFIX = "hash:"
BATCH_MEMBER_PREFIX = "member:"


def batch_hash_field(sha: str) -> str:
    """The member seq holding the recording with this content hash (resubmissions are skipped)."""
    return f"{BATCH_HASH_PREFIX}{sha}"


def batch_member_field(seq: int) -> str:
    """JSON: one call of the batch (its job id, file name, hash)."""
    return f"{BATCH_MEMBER_PREFIX}{seq}"

# ---- tenant webhooks (`shared.webhooks`) --------------------------------------------------------------

WEBHOOK_PREFIX = f"{PREFIX}webhook:"


def webhook_endpoint(tenant: str) -> str:
    """String: the tenant's endpoint (JSON `shared.webhooks.Endpoint`: url, secret, events), kept until deleted."""
    return f"{WEBHOOK_PREFIX}endpoint:{tenant}"


def webhook_delivery(delivery_id: str) -> str:
    """String: one delivery (JSON `shared.webhooks.Delivery`: the signed body, status, attempts, last error)."""
    return f"{WEBHOOK_PREFIX}delivery:{delivery_id}"


def webhook_dead(tenant: str) -> str:
    """List: the tenant's dead-letter delivery ids, newest first (bounded, expires with the deliveries)."""
    return f"{WEBHOOK_PREFIX}dead:{tenant}"


WEBHOOK_DUE = f"{WEBHOOK_PREFIX}due"  # sorted set: delivery id -> unix time its next attempt is due


# An endpoint is configuration, like an API key: the retention sweep must not expire it.
PERMANENT = (*PERMANENT, webhook_endpoint("*"))

# ---- live calls ---------------------------------------------------------------------------------------


def twilio_transfer(call_sid: str) -> str:
    """String: where a Twilio call transferred by `transfer_to_human` is dialled (its `<Connect action>`)."""
    return f"{PREFIX}twilio-transfer:{call_sid}"

# ---- a tenant's custom tools (shared/tools.py) ------------------------------------------------------

TOOLS_PREFIX = f"{PREFIX}tools:"  # + tenant: a tenant's custom tools (kept until deleted)


def tools(tenant: str) -> str:
    """Hash: a tenant's custom tools the LLM may call, tool name -> JSON `shared.tools.Tool`."""
    return f"{TOOLS_PREFIX}{tenant}"


PERMANENT += (f"{TOOLS_PREFIX}*",)  # a tenant's tools live until deleted, like its knowledge base
