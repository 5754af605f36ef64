# Two commands on a fresh machine:
#   make demo   -- installs everything and runs the main job on real weights
#   make test   -- installs everything and runs the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

test: install
	$(PY) -m pytest tests

demo: install
	$(PY) -m rayformers.pipeline.demo

bench: install
	$(PY) benchmarks/bench_model_layer.py

clean:
	rm -rf $(VENV) .pytest_cache
