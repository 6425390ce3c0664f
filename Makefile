# `make test` and `make demo` create .venv when it is missing and install crowdtk into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

PARTB ?= ../shared/data/ShanghaiTech/part_B

.PHONY: lint test test-readers test-labelstudio labelstudio-screenshot demo bench bench-partb bench-tiers gpu-check install clean docs

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

# A labeling campaign against a real Label Studio, crowdtk serve as its ML backend (tests/test_labelstudio_live.py,
# skipped by `make test`). label-studio has its own virtual environment, as its pins clash with crowdtk's: about 1.0 GB,
# about 6 min to install on 2 busy cores (3.5 min idle); selenium is for the screenshot. The test starts Label Studio on
# 127.0.0.1 with a temporary database (its first start migrates it: about 2-4 min) and runs two rounds: about 6 min.
LS_VENV := .venv-labelstudio
LS_STAMP := $(LS_VENV)/.installed
$(LS_STAMP):
	test -x $(LS_VENV)/bin/python || $(PYTHON) -m venv $(LS_VENV)
	$(LS_VENV)/bin/pip install --quiet --upgrade pip
	$(LS_VENV)/bin/pip install --quiet label-studio==1.23.2 selenium==4.51.0
	touch $(LS_STAMP)

test-labelstudio: $(STAMP) $(LS_STAMP)
	CROWDTK_LABEL_STUDIO=$(LS_VENV)/bin/label-studio $(BIN)/python -m pytest -q tests/test_labelstudio_live.py

# The same test, photographing the labeling page of a round-2 task into docs/labelstudio-labeling.png (README); needs
# chromium and chromedriver on PATH (Debian: apt-get install chromium chromium-driver).
labelstudio-screenshot: $(STAMP) $(LS_STAMP)
	CROWDTK_LABEL_STUDIO=$(LS_VENV)/bin/label-studio CROWDTK_LABEL_STUDIO_SCREENSHOT=docs/labelstudio-labeling.png \
		$(BIN)/python -m pytest -q tests/test_labelstudio_live.py

demo: $(STAMP)
	rm -rf demo-out
	$(BIN)/crowdtk demo -o demo-out

# The speed of every stage against its reference and the hardware floor.
bench: $(STAMP)
	$(BIN)/python -m benchmarks

# The paper's comparisons on ShanghaiTech Part B at a 10% budget, six methods x 5 seeds with paired verdicts (README, Benchmarks:
# about 81 min on a 2-core Xeon with AMX, about 4.6 h on a 2-core EPYC without bfloat16).
bench-partb: $(STAMP)
	$(BIN)/crowdtk bench --train $(PARTB)/train_data --test $(PARTB)/test_data -o bench-out/partB

# The training tiers at about equal wall time (README, "Training tiers").
bench-tiers: $(STAMP)
	$(BIN)/python -m benchmarks.tiers --out bench-out/tiers

# The CUDA paths on a machine with a GPU, into bench-out/gpu-check (README, "GPUs and several processes"); exit 3 without one.
gpu-check: $(STAMP)
	PARTB=$(PARTB) benchmarks/gpu_check.sh

# Shell completions, man pages and docs/cli.md from the app (tests/test_docs.py fails when they drift).
docs: $(STAMP)
	$(BIN)/python tools/gen_docs.py

clean:
	rm -rf $(VENV) $(LS_VENV) demo-out
