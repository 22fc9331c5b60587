# The HTTP gateway: no models but the Silero VAD of live calls (extra 'calls').
# Build: docker build -f deploy/docker/gateway.Dockerfile -t voicequeue-gateway .
FROM python:3.11.7-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY shared shared
COPY services services
COPY voicequeue voicequeue
RUN python -m venv /opt/venv && /opt/venv/bin/pip install --no-cache-dir ".[calls]"

FROM python:3.11.7-slim-bookworm
RUN useradd --create-home --uid 10001 voicequeue
COPY --from=build /opt/venv /opt/venv
COPY deploy/docker/healthcheck.py /opt/healthcheck.py
ENV PATH=/opt/venv/bin:$PATH VQ_GATEWAY_HOST=0.0.0.0 VQ_LOG_JSON=true
WORKDIR /home/voicequeue
USER 10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "/opt/healthcheck.py", "VQ_GATEWAY_PORT", "8000", "/healthz"]
CMD ["voicequeue", "gateway"]
