# Quick start: `make demo` (train briefly on the embedded corpus, then predict and sample)
# and `make test` (the whole suite). Both create and fill .venv by themselves.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint bench bundle clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "make: need $(PYTHON) (the local torch wheel is for CPython 3.11)"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m nextchar train --time-budget 90 --out runs/demo
	@echo; echo '== predict after "def " (the model just trained)'
	$(PY) -m nextchar predict 'def ' -m runs/demo -k 5
	@echo; echo '== sample (the model just trained)'
	$(PY) -m nextchar sample -m runs/demo --prefix 'The ' --length 200 --seed 1
	@echo; echo '== predict after "The return statement " (the bundled model)'
	$(PY) -m nextchar predict 'The return statement ' -k 5
	@echo; echo '== sample (the bundled model)'
	$(PY) -m nextchar sample --prefix 'The ' --length 300 --seed 1

test: $(STAMP)
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check nextchar tests bench

clean:
	rm -rf $(VENV) runs build *.egg-info
