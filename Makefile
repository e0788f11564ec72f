# The two commands of the README:  make demo  and  make test.
# Each creates .venv on first use (tools/setup_env.sh) and reuses it afterwards.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup setup-test demo test test-fast clean

setup:
	@bash tools/setup_env.sh

# The tests also need a headless browser (the web-chat test); the demo does not.
setup-test: setup
	@bash tools/setup_browser.sh

demo: setup
	$(PY) -m coati_hf.cli demo --output-dir outputs/demo

test: setup-test
	$(PY) -m pytest -q -x --durations=15 $(PYTEST_ARGS)

# Unit tests only (no end-to-end runs on the embedded model, no multi-rank runs).
test-fast: setup-test
	$(PY) -m pytest -q -m "not slow and not distributed" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) outputs .pytest_cache
