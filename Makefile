# `make test` and `make demo` create .venv when it is missing and install crowdtk into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

PARTB ?= ../shared/data/ShanghaiTech/part_B

.PHONY: lint test test-readers demo bench bench-partb bench-tiers gpu-check install clean docs

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

# ruff (lint and format) and mypy, as configured in pyproject.toml; .ci/run runs it before the tests.
LINT_STAMP := $(VENV)/.lint-installed
$(LINT_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[test,lint]'
	touch $(LINT_STAMP)

lint: $(LINT_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Exports checked by the tools' own readers (label-studio-sdk; pyproject's readers extra says why it is apart).
test-readers: $(STAMP)
	$(BIN)/pip install --quiet -e '.[test,readers]'
	$(BIN)/python -m pytest -q tests/test_labelstudio_sdk.py tests/test_export.py tests/test_prelabel.py

demo: $(STAMP)
	rm -rf demo-out
	$(BIN)/crowdtk demo -o demo-out

# The speed of every stage against its reference and the hardware floor.
bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

# The paper's comparisons on ShanghaiTech Part B at a 10% budget, six methods x 5 seeds with paired verdicts (README, Benchmarks:
# about 81 min on a 2-core Xeon with AMX, about 4.6 h on a 2-core EPYC without bfloat16).
bench-partb: $(STAMP)
	$(BIN)/crowdtk bench --train $(PARTB)/train_data --test $(PARTB)/test_data -o bench-out/partB

# The training tiers at about equal wall time (README, "Training tiers").
bench-tiers: $(STAMP)
	$(BIN)/python benchmarks/tiers.py --out bench-out/tiers

# The CUDA paths on a machine with a GPU, into bench-out/gpu-check (README, "GPUs and several processes"); exit 3 without one.
gpu-check: $(STAMP)
	PARTB=$(PARTB) benchmarks/gpu_check.sh

# Shell completions, man pages and docs/cli.md from the app (tests/test_docs.py fails when they drift).
docs: $(STAMP)
	$(BIN)/python tools/gen_docs.py

clean:
	rm -rf $(VENV) demo-out
