# One command to run the agent, one to test it. Everything is installed into .venv.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO   := demo
# The CPU build of PyTorch: this pin matches the CPU wheel the machines keep on disk (pip's find-links);
# a bare `torch` from PyPI is the CUDA build and pulls several GB of nvidia-* packages. torch's own
# dependencies are named so that nothing else resolves a newer torch. onnx2torch goes in without its
# dependencies: it would pull torchvision, which does not load beside the CPU wheel and is not needed.
TORCH      ?= torch==2.13.0
TORCH_DEPS := filelock fsspec jinja2 markupsafe mpmath networkx sympy 'typing-extensions>=4.10'

.PHONY: setup run demo-deploy demo-rollback test bench bench-swaps bench-fleet soak lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[cv,dev,trt-check]'
	# The tracker without its stale pins (numpy<2, rich<15, matplotlib): docs/results.md.
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps 'norfair==2.3.0' 'filterpy==1.4.5'
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps '$(TORCH)' $(TORCH_DEPS) 'onnx2torch>=1.5.15'
	touch $(STAMP)

setup: $(STAMP)
	$(PY) -m agent.cli.demo --dest $(DEMO) --store engines

run: setup
	$(VENV)/bin/edge-agent run --config config.toml

# From a second terminal while `make run` runs: PP-OCRv6 to the demo agent, progress and swap shown
# (watch it in `edge-agent top --config config.toml`); demo-rollback swaps back to the previous model.
demo-deploy: $(STAMP)
	$(VENV)/bin/edge-agent deploy --config config.toml --name text-det --version v6 \
		--url "file://$(CURDIR)/$(DEMO)/models/text-det-v6/model.onnx"

demo-rollback: $(STAMP)
	$(VENV)/bin/edge-agent rollback --config config.toml --reason "make demo-rollback"

# The suite in parallel (pytest-xdist): most tests wait on subprocesses, brokers and video, so more
# workers than cores still pays (a quiet 2-core run with 3 kept the CPUs 58% busy); TEST_WORKERS=0 runs
# it in one process.
TEST_WORKERS ?= 4
# The agent's bytecode is written first: where PYTHONDONTWRITEBYTECODE is set (CI), every agent the
# tests start would compile agent/ again (importing the daemon: 1.02 s from source, 0.91 s from .pyc).
test: setup
	PYTHONDONTWRITEBYTECODE= $(PY) -m compileall -q agent
	$(PY) -m pytest -n $(TEST_WORKERS) $(PYTEST_ARGS)

bench: setup
	$(PY) -m agent.cli.bench --demo $(DEMO)

# Not in CI: the agent for SOAK_MINUTES under broker restarts and v4 <-> v6 swaps, then a tally.
SOAK_MINUTES ?= 10
soak: setup
	$(PY) -m agent.cli.soak --minutes $(SOAK_MINUTES) --demo $(DEMO)

# Not in CI: BENCH_SWAPS alternating hot swaps v4 <-> v6 through the deployment manager; RSS growth,
# its Theil-Sen slope against the noise, fds and threads (docs/benchmarks.md). CI runs 50 (tests/dev).
BENCH_SWAPS ?= 1000
bench-swaps: setup
	$(PY) -m agent.cli.bench_swaps --demo $(DEMO) --swaps $(BENCH_SWAPS)

bench-fleet: setup
	ulimit -n $$(ulimit -Hn) && $(PY) -m agent.cli.bench_fleet --devices 10000 --rollout-devices 1000

# ruff, mypy --strict over agent/, and the house's layer contracts (import-linter, pyproject.toml).
lint: $(STAMP)
	$(VENV)/bin/ruff check agent tests
	$(VENV)/bin/mypy agent
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) $(DEMO) build var
	find engines -mindepth 1 -not -name README.md -delete
