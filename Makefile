# One command to run the agent, one to test it. Everything is installed into .venv.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO   := demo

.PHONY: setup run test bench bench-fleet soak lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[cv,dev,trt-check]'
	touch $(STAMP)

setup: $(STAMP)
	$(PY) -m agent.demo --dest $(DEMO) --store engines

run: setup
	$(VENV)/bin/edge-agent run --config config.toml

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

bench: setup
	$(PY) -m agent.bench --demo $(DEMO)

# Not in CI: the agent for SOAK_MINUTES under broker restarts and v4 <-> v6 swaps, then a tally.
SOAK_MINUTES ?= 10
soak: setup
	$(PY) -m agent.soak --minutes $(SOAK_MINUTES) --demo $(DEMO)

bench-fleet: setup
	ulimit -n $$(ulimit -Hn) && $(PY) -m agent.fleet.bench --devices 10000 --rollout-devices 1000

lint: $(STAMP)
	$(VENV)/bin/ruff check agent tests

clean:
	rm -rf $(VENV) $(DEMO) build var
	find engines -mindepth 1 -not -name README.md -delete
