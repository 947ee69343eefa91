# Quick start: `make demo` (train briefly on the embedded corpus, then predict and sample)
# and `make test` (the whole suite). Both create and fill .venv by themselves.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test test-fast lint bundle clean browser

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "make: need $(PYTHON) (the local torch wheel is for CPython 3.11)"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m nextchar train --time-budget 90 --out runs/demo --overwrite
	@echo; echo '== predict after "def " (the model just trained)'
	$(PY) -m nextchar predict 'def ' -m runs/demo -k 5
	@echo; echo '== sample (the model just trained)'
	$(PY) -m nextchar sample -m runs/demo --prefix 'The ' --length 200 --seed 1
	@echo; echo '== predict after "The return statement " (the bundled model)'
	$(PY) -m nextchar predict 'The return statement ' -k 5
	@echo; echo '== sample (the bundled model)'
	$(PY) -m nextchar sample --prefix 'The ' --length 300 --seed 1

test: $(STAMP) browser
	$(PY) -m pytest

# The quick loop: everything but the tests marked slow (end-to-end runs, servers, the browser).
test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow"

# Debian's Chromium for tests/service/test_browser.py (Playwright cannot download a browser here).
# Idempotent: nothing happens when /usr/bin/chromium exists; without apt-get the test is skipped.
APT := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo) env DEBIAN_FRONTEND=noninteractive apt-get
browser:
	@if [ -x /usr/bin/chromium ]; then :; \
	elif command -v apt-get >/dev/null; then \
	  echo "make: installing Debian's chromium for the browser test"; \
	  $(APT) install -y -qq --no-install-recommends chromium >/dev/null 2>&1 \
	  || { $(APT) update -qq && $(APT) install -y -qq --no-install-recommends chromium; } \
	  || echo "make: could not install chromium; the browser test will be skipped"; \
	else echo "make: no apt-get here; install Chromium for the browser test (it is skipped without it)"; fi

# Style, formatting, types (mypy --strict on nextchar/) and the layers (import-linter's contracts
# in pyproject.toml: imports flow text → data → models → training → completion → service / CLI).
lint: $(STAMP)
	$(VENV)/bin/ruff check nextchar tests bench
	$(VENV)/bin/ruff format --check nextchar tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

# The bundled default model (nextchar/bundled/default): one reproducible command, ~4 minutes here.
# Only the weights config.json names are copied (a run keeps the ones before them for readers mid-save).
bundle: $(STAMP)
	rm -rf runs/bundle
	$(PY) -m nextchar train --out runs/bundle --no-memory --steps 1200 --eval-interval 100 --precision bf16 --seed 1337 --lr 3e-3 --warmup 100 --weight-decay 0.1 --min-lr-ratio 0.05
	rm -rf nextchar/bundled/default && mkdir -p nextchar/bundled/default
	cp runs/bundle/config.json runs/bundle/metrics.jsonl runs/bundle/bpc.png nextchar/bundled/default/
	cp runs/bundle/$$($(PY) -c "import json; print(json.load(open('runs/bundle/config.json'))['weights']['file'])") nextchar/bundled/default/

clean:
	rm -rf $(VENV) runs build *.egg-info
