# make demo: set up .venv and run the main job; make test: set up .venv and run the whole test suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo zoo test setup clean

setup: $(STAMP)

# pyproject.toml holds every dependency; the test extra is a superset of figures and demo (what `make demo` needs)
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[test]"
	touch $(STAMP)

DEMO_RUN := output/digits-demo

# train a small MSViT on scikit-learn's digits, then evaluate its best checkpoint (JSON last)
demo: $(STAMP)
	rm -rf $(DEMO_RUN)
	cd digits && ../$(PY) train.py --output ../$(DEMO_RUN)
	cd digits && ../$(PY) test.py --checkpoint ../$(DEMO_RUN)/best.pth --json

# build every registered model and print its parameter table
zoo: $(STAMP)
	$(PY) -m msvit.zoo

test: $(STAMP)
	$(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
