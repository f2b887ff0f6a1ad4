# Two entry points: `make demo` (the main job on a built-in corpus) and `make test`.
# Both create the virtual environment on first use, pinned by constraints.txt
# (torch 2.13.0 is installed first so that CPU-only machines get the CPU wheel).
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS ?= train,lhotse,plot,remote,ray,dev

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0 -c constraints.txt
	$(PY) -m pip install -q -c constraints.txt -e ".[$(EXTRAS)]"
	touch $@

.PHONY: install demo test lint
install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/speechdata demo

test: lint
	$(PY) -m pytest

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check speechdata tests benchmarks tools
	$(VENV)/bin/ruff format --check speechdata tests benchmarks tools
