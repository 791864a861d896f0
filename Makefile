# rs-ssl: the two commands of the README, plus helpers. Everything installs itself first.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export PYTHONPATH := $(CURDIR)

.PHONY: demo test install bench clean-demo

install: $(STAMP)

$(STAMP): requirements.txt scripts/install.sh
	bash scripts/install.sh $(VENV)
	touch $(STAMP)

## README command 1: the main job on the built-in demo data (pretrain, then few-shot table)
demo: $(STAMP)
	PY=$(PY) bash scripts/demo.sh

## README command 2: the tests (real-data tests run when ../shared/data is present)
test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) bench/data_loading.py
	$(PY) bench/cache_memory.py
	$(PY) bench/ntxent.py
	$(PY) bench/pretrain_step.py --mode 920
	$(PY) bench/epoch.py
	$(PY) bench/probe.py --per-class 10 --seeds 3
