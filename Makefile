# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_SPEC ?= torch==2.13.0
export CMAKE_BUILD_PARALLEL_LEVEL ?= 2
# Sources whose change needs a rebuild of the extension modules.
NATIVE_SRCS := CMakeLists.txt pyproject.toml $(shell find cpp cuda export tests/cpp tests/trt_harness -type f \( -name '*.cpp' -o -name '*.h' -o -name '*.hpp' -o -name '*.cu' -o -name '*.cuh' -o -name '*.cmake' -o -name '*.in' -o -name '*.txt' -o -name '*.json' -o -name '*.map' -o -name '*.py' \) 2>/dev/null)

.PHONY: all demo test install lint pytest clean distclean

all: install

$(VENV)/.deps: requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# The CPU wheel of torch: a bare `torch` requirement would pull a multi-GB CUDA build.
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -r requirements-dev.txt
	touch $@

# Editable install; the CMake build tree persists in build/ so rebuilds are incremental. Warnings are errors here.
$(VENV)/.built: $(VENV)/.deps $(NATIVE_SRCS)
	$(PIP) install -q --no-build-isolation --no-deps -e . -Ccmake.define.CMIR_WERROR=ON
	touch $@

install: $(VENV)/.built

lint: $(VENV)/.deps
	$(VENV)/bin/ruff check $(wildcard python tests benchmarks export)
	# Text files always name their encoding (PLW1514 is a preview rule, so it runs on its own).
	$(VENV)/bin/ruff check --preview --select PLW1514 $(wildcard python tests benchmarks export)

pytest: install
	$(VENV)/bin/pytest

test: lint pytest

demo: install
	$(VENV)/bin/cmir-trt demo

clean:
	rm -rf build $(VENV)/.built

distclean: clean
	rm -rf $(VENV)
