# Two commands on a fresh machine: `make run` (set up, then the main job) and `make test`.
PYTHON ?= python3
VENV ?= .venv
# The CPU build lies on local disk on the project's CPU machines; on Linux, PyPI's wheel of the same
# version is the CUDA build, so GPU users get CUDA from the same pin. Override with TORCH=torch.
TORCH ?= torch==2.13.0
MODE ?= pool
# Extras installed with the package; CI adds `ray` for the scale-out tests (EXTRAS=dev,ray).
EXTRAS ?= dev
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup run compare test ui bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	touch $(STAMP)

setup: $(STAMP)

# The main job: the default protocol (experiments/default.yaml) tracked in ./mlflow.db, as `mlflow run` runs it.
# MLFLOW_LOGGING_LEVEL=WARNING: MLflow's INFO lines about its own routine (creating the database tables and the
# experiment, "=== Created directory ... for downloading remote URIs ===", the command it runs) would come
# before the run's own lines; its warnings and errors still show. Drop it to see them.
run: setup
	PATH="$(abspath $(BIN)):$$PATH" MLFLOW_LOGGING_LEVEL=WARNING mlflow run . --env-manager local --experiment-name bertpooled -P mode=$(MODE)

# The report on the runs `make run` made: pool against basic (one mode alone: its report and how to train the other).
compare: setup
	MLFLOW_LOGGING_LEVEL=WARNING $(BIN)/bertpooled compare-runs

# The tests run in JOBS processes (pytest-xdist; JOBS=0: in this one). Much of the suite's time is tests waiting on the
# processes they start (trainings, servers, a Ray cluster). On the project's 2-core machine, quiet, .ci/run from a fresh
# clone: 915 tests in 853-985 s with 2 processes (2026-12-06: 3d9d1f2, 326065d, d9bfb72); serial CI: 1,172 s. More
# processes than cores add contention.
JOBS ?= 2
# The tests leave the checkout as they found it (.ci/run checks): no bytecode is written (the package's and the
# tests' own compile in a moment; site-packages keeps the bytecode pip wrote, which PYTHONPYCACHEPREFIX would
# bypass: 5 s more per Python start, ~12 min more of tests) and pytest's cache goes into the venv.
test: setup
	PATH="$(abspath $(BIN)):$$PATH" PYTHONDONTWRITEBYTECODE=1 \
	  $(BIN)/python -m pytest -o cache_dir="$(abspath $(VENV))/pytest-cache" -n $(JOBS)

# MLflow's UI on http://127.0.0.1:5000 (loopback only unless you pass --host yourself).
ui: setup
	$(BIN)/mlflow ui --host 127.0.0.1 --port 5000

bench: setup
	$(BIN)/python benchmarks/seed_protocol/seed_protocol.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
