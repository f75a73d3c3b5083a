# One command to set up and run the tiny pretraining job, one to set up and run the tests.
#   make demo    # venv + install, then sample corpus -> vocab -> shards -> tiny MLM run -> checkpoints -> export
#   make test    # venv + install + pytest
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

.PHONY: setup demo test bench clean

setup: $(STAMP)

# torch is pinned to the version whose CPU wheel this project is tested with; fastBPE's sdist only
# builds on Python 3.11 without build isolation and with Cython already present.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet cython wheel setuptools
	$(PIP) install --quiet --no-build-isolation fastBPE==0.1.0
	$(PIP) install --quiet -e ".[test]"
	touch $(STAMP)

demo: setup
	$(PY) -m pretrain.tlm --config configs/tiny_mlm.yaml

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) bench/tokenize_speed.py
	$(PY) bench/reader.py

clean:
	rm -rf $(VENV) runs
