# The two front-door commands: `make demo` and `make test` (`make test-all`, what CI runs, adds
# the slow tests). Each (re)creates .venv from the lock file when it is missing or older than the
# lock, then runs.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
WORKDIR ?= /tmp/sml_jax_demo
PYTEST_ARGS ?=
# Two pytest workers (pytest-xdist): a single process keeps ~1.35 of 2 cores busy (compiles
# are single-threaded); `XDIST=` runs in one process.
XDIST ?= -n 2 --dist worksteal

.PHONY: demo test test-all venv bench clean-venv

$(STAMP): requirements/lock.txt setup.py
	@bash scripts/make_venv.sh $(VENV)
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) -m sml_jax.main --config=configs/demo.py --workdir=$(WORKDIR)

# The quick suite: everything but the `slow` tests (real 270M runs, full data sweeps, the
# multi-process and fake-device runs, kill/resume) and the 270M notebook.
test: $(STAMP)
	$(PY) -m pytest -q --durations=15 $(XDIST) -m "not slow" --nbmake tests colabs/tiny_sml_run.ipynb $(PYTEST_ARGS)

# Everything, `slow` included (what CI runs), on the same two workers: the slow tests load the
# 270M, start several processes or many fake devices each, and time kills, and their time limits
# leave room for a neighbour on the other core. `XDIST=` runs them in one process.
test-all: $(STAMP)
	$(PY) -m pytest -q --durations=25 $(XDIST) --nbmake tests colabs $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) -m sml_jax.bench sampler
	$(PY) -m sml_jax.bench train

clean-venv:
	rm -rf $(VENV)
