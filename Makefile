# keras-vgg: `make demo` and `make test` set everything up on a fresh machine (Python 3.10+).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: install browser demo demo-localize test test-fast test-slow lint format bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# The browser test of `kvgg serve` (tests/test_serve.py) drives Debian's chromium through
# chromium-driver: installed here when missing and apt-get can (root); elsewhere the test
# skips and says why.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -q && apt-get install -y -q --no-install-recommends chromium chromium-driver; \
	  else \
	    echo "make browser: chromium and chromium-driver are missing and apt-get needs root: the browser test will skip"; \
	  fi

demo: $(STAMP)
	$(BIN)/kvgg demo

# Appendix A on digits pasted onto photographs: classifier, SCR and PCR nets, protocols 1 and 2.
demo-localize: $(STAMP)
	$(BIN)/kvgg demo localize

# Both tiers in one run: the fast tests and the full-size `slow` ones, one worker per core,
# each test file whole on one worker (its module-scoped models are built once), the longest
# files first (tests/conftest.py: LONGEST_FIRST).
TEST_WORKERS ?= auto
test: $(STAMP) browser
	$(BIN)/ruff check keras_vgg tests benchmarks scripts
	$(BIN)/python -m pytest -m "not demo" -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=10 $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

# The demos trained to the figures README and docs state (the localisation demo's protocol-1
# errors, the features demo's paired verdicts): ~15 min of CPU, not part of `make test`.
test-demos: $(STAMP)
	$(BIN)/python -m pytest -m demo -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check keras_vgg tests benchmarks scripts
	$(BIN)/ruff format --check keras_vgg tests benchmarks scripts

format: $(STAMP)
	$(BIN)/ruff format keras_vgg tests benchmarks scripts
	$(BIN)/ruff check --fix keras_vgg tests benchmarks scripts

bench: $(STAMP)
	$(BIN)/python benchmarks/model_throughput.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache
