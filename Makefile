# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_SPEC ?= torch==2.13.0
export CMAKE_BUILD_PARALLEL_LEVEL ?= 2
# Sources whose change needs a rebuild of the extension modules (cuda/emu is built by the tests, not CMake).
NATIVE_SRCS := CMakeLists.txt pyproject.toml $(shell find cpp cuda export tests/cpp tests/trt_harness -path cuda/emu -prune -o -type f \( -name '*.cpp' -o -name '*.h' -o -name '*.hpp' -o -name '*.cu' -o -name '*.cuh' -o -name '*.cmake' -o -name '*.in' -o -name '*.txt' -o -name '*.json' -o -name '*.map' -o -name '*.py' \) -print 2>/dev/null)

.PHONY: all demo test install lint pytest clean distclean

all: install

$(VENV)/.deps: requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# The CPU wheel of torch: a bare `torch` requirement would pull a multi-GB CUDA build.
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -r requirements-dev.txt
	# Triton Inference Server (binary + Python backend) from the nvidia-pytriton wheel, taken as files only:
	# --no-deps so its numpy<2 pin does not downgrade numpy. Where it cannot be installed the server tests skip.
	$(PIP) install -q --no-deps "nvidia-pytriton==0.7.0" || echo "nvidia-pytriton not installed: Triton server tests will be skipped"
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

# Debian tools of the DICOM tests: Orthanc (a real PACS) and dicom3tools (dciodvfy). Where apt-get is unavailable
# (or fails) those tests skip with the reason; a failed install is retried by the next `make test`.
$(VENV)/.apt:
	@mkdir -p $(VENV)
	@if command -v dciodvfy >/dev/null && command -v Orthanc >/dev/null; then touch $@; \
	elif ! command -v apt-get >/dev/null || [ "$$(id -u)" != 0 ]; then \
	  echo "no apt-get (or not root): the Orthanc and dciodvfy tests will be skipped"; touch $@; \
	elif apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
	  orthanc dicom3tools; then touch $@; \
	else echo "apt-get could not install orthanc/dicom3tools: the Orthanc and dciodvfy tests will be skipped"; fi

pytest: install $(VENV)/.apt
	$(VENV)/bin/pytest

test: lint pytest

demo: install
	$(VENV)/bin/cmir-trt demo

clean:
	rm -rf build $(VENV)/.built

distclean: clean
	rm -rf $(VENV)
