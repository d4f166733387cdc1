# hotloop: `make demo` sets everything up and runs the demo; `make test` sets everything up
# and runs the whole test suite (lint, strict typing, import layers, pytest). CI runs `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup browser demo test check lint typecheck layers pytest bench-gateway bench-cpu faults failures fuzz soak format clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: setup
	$(BIN)/hotloop demo

test: setup browser lint typecheck layers pytest

# The report test opens the demo's HTML report in headless Chromium: Debian's package, driven by
# the playwright package (which never downloads a browser of its own here). Installed once.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" -eq 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	    chromium; }

lint:
	$(BIN)/ruff check src tests bench examples
	$(BIN)/ruff format --check src tests bench examples

typecheck:
	$(BIN)/mypy

layers:
	$(BIN)/lint-imports

# One worker per CPU: most tests wait on loopback sockets and simulated latency.
pytest:
	$(BIN)/pytest -n auto

bench-gateway: setup
	$(BIN)/python bench/gateway_turns.py

bench-cpu: setup
	$(BIN)/python bench/runtime_cpu.py

# 1,000 WebSocket sessions for 10 minutes against a gateway process; fails on any error or if
# the gateway's RSS moves more than 10% after warm-up (docs/benchmarks.md, "make soak").
soak: setup
	$(BIN)/python bench/soak.py

# Whole agent runs through 1,000 injected network faults and gateway restarts: fails if a
# run is lost or a write executes twice.
faults: setup
	$(BIN)/python bench/faults.py

# Agent runs against a simulated model that fails some of its requests (the `flaky` profile:
# 429s, 500s, dropped streams): fails if a run is lost or a tool call executes twice.
failures: setup
	$(BIN)/python bench/failures.py

# The long fuzz run (tests/fuzz): 100,000 inputs against a live gateway, about 5-10 min on
# 2 cores; FUZZ_INPUTS=N for another size. Exits non-zero on any crash, hang, undocumented
# error code, leaked session or bystander failure.
FUZZ_INPUTS ?= 100000
fuzz: setup
	$(BIN)/python tests/fuzz/run.py --inputs $(FUZZ_INPUTS)

format: setup
	$(BIN)/ruff format src tests bench examples
	$(BIN)/ruff check --fix src tests bench examples

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
