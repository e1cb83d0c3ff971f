# Parley — the two commands a newcomer needs are `make run` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PACKAGES := libs/parley services/vad services/asr services/llm services/tts services/gateway
STAMP := $(VENV)/.installed

.PHONY: run test install lint proto proto-check docs fmt bench clean

run: $(STAMP) ## start NATS, the four services and the gateway; prints the URL
	$(PY) deploy/run_stack.py

test: $(STAMP) lint ## lint, type-check, stale-stub check, unit and integration tests
	$(PY) -m pytest

install: $(STAMP)

# Everything installs into one virtual environment for local runs; each
# package still declares its own dependencies for its own container.
# llama-cpp-python compiles from source the first time (~5-10 min); pip caches the wheel.
$(STAMP): requirements-dev.txt $(addsuffix /pyproject.toml,$(PACKAGES))
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	CMAKE_BUILD_PARALLEL_LEVEL=$${CMAKE_BUILD_PARALLEL_LEVEL:-2} $(PY) -m pip install --quiet \
		-r requirements-dev.txt $(addprefix -e ,$(PACKAGES))
	touch $@

lint: $(STAMP) proto-check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

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

clean:
	rm -rf .parley .pytest_cache .mypy_cache .ruff_cache
