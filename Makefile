# Parley — the two commands a newcomer needs are `make run` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PACKAGES := libs/parley services/vad services/asr services/llm services/tts services/gateway
STAMP := $(VENV)/.installed
# The web page's JavaScript checks (ESLint, TypeScript), pinned by package-lock.json.
NODE_STAMP := node_modules/.installed
# How llama.cpp is compiled (deploy/llama-cpp.toml): a portable baseline, never the build CPU's own.
LLAMA_PROFILE ?= cpu
WHEEL_CACHE ?= .parley/wheels
# FireRedTTS2's model code; --no-deps, as it declares gradio (services/tts/pyproject.toml).
FIREREDTTS2 := tts-webui-fireredtts2==0.1.0
# The VAD's end-of-turn model (Smart Turn v3.2) ships inside pipecat-ai; --no-deps, as its pins
# clash with ours and the VAD reads only the model file (services/vad/src/parley_vad/engines/smart_turn.py).
PIPECAT_AI := pipecat-ai==1.14.0

.PHONY: run test install lint proto proto-check docs fmt bench loadtest clean

run: $(STAMP) ## start NATS, the four services and the gateway; prints the URL
	$(PY) deploy/run_stack.py

test: $(STAMP) lint ## lint, type-check, stale-stub check, unit and integration tests
	$(PY) -m pytest

install: $(STAMP)

# Everything installs into one virtual environment for local runs; each
# package still declares its own dependencies for its own container.
# llama-cpp-python compiles from source once per flag set (~5-10 min) into
# $(WHEEL_CACHE), by tools/llama_wheel.py, before anything else can pull it in.
# The Makefile is an input too: it pins the packages installed --no-deps.
$(STAMP): Makefile requirements-dev.txt $(addsuffix /pyproject.toml,$(PACKAGES)) deploy/llama-cpp.toml \
		tools/llama_wheel.py
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) tools/llama_wheel.py install --profile $(LLAMA_PROFILE) --cache $(WHEEL_CACHE)
	$(PY) -m pip install --quiet -r requirements-dev.txt $(addprefix -e ,$(PACKAGES)) -e 'services/tts[fireredtts2]'
	$(PY) -m pip install --quiet --no-deps $(FIREREDTTS2) $(PIPECAT_AI)
	touch $@

$(NODE_STAMP): package.json package-lock.json
	@command -v npm >/dev/null || { echo "npm not found: the JavaScript checks need Node.js 20.19+ and npm (apt-get install nodejs npm)" >&2; exit 1; }
	npm ci --quiet --no-audit --no-fund
	touch $@

lint: $(STAMP) $(NODE_STAMP) proto-check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	npm run --silent lint

fmt: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

proto: $(STAMP) ## regenerate the gRPC stubs from proto/
	$(PY) tools/protos.py

proto-check: $(STAMP)
	$(PY) tools/protos.py --check
	$(PY) tools/settings_doc.py --check

docs: $(STAMP) ## regenerate docs/configuration.md from the settings classes
	$(PY) tools/settings_doc.py

bench: $(STAMP) ## voice-to-voice latency over the real stack (see docs/benchmarks.md)
	$(PY) bench/conversation_latency.py

# Locust, headless, against a stack that is already running (`make run` in another terminal, or
# a pod: LOADTEST_HOST=https://…, PARLEY_API_KEY=… when it has keys). LOADTEST_USERS are spread
# 2:1:1 over conversations, REST and TTS gRPC clients unless LOADTEST_CLASSES names some;
# the statistics go to .parley/loadtest/ (CSV and an HTML report). All users come from one address:
# raise the gateway's per-client limits on the stack under test (docs/benchmarks.md, "Load tests").
LOADTEST_HOST ?= http://127.0.0.1:7860
LOADTEST_USERS ?= 4
LOADTEST_TIME ?= 2m
LOADTEST_CLASSES ?= ConversationUser RestUser TtsGrpcUser
loadtest: $(STAMP) ## Locust against LOADTEST_HOST (default: make run's) with LOADTEST_USERS for LOADTEST_TIME
	mkdir -p .parley/loadtest
	$(PY) -m locust -f loadtests/locustfile.py --headless --host $(LOADTEST_HOST) \
		--users $(LOADTEST_USERS) --spawn-rate $(LOADTEST_USERS) --run-time $(LOADTEST_TIME) --stop-timeout 70 \
		--csv .parley/loadtest/stats --html .parley/loadtest/report.html $(LOADTEST_CLASSES)

clean:
	rm -rf .parley .pytest_cache .mypy_cache .ruff_cache node_modules
