# `make test` is what CI runs: it builds .venv when missing, then lint, types and the whole test suite.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test test-fast lint format typecheck bench quality ablations gpu-smoke clean demo demo-quick fashion-mnist

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: $(STAMP)
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

# Everything, slow tests included (multi-process DDP, end-to-end runs).
test: lint typecheck
	$(BIN)/python -m pytest -m "slow or not slow" -q --durations=20

# The quick loop while developing: skips tests marked slow (the multi-process runs and the headless-Chromium
# tests of report.html, marked `browser` too: `pytest -m browser` runs only those).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/loss.py

# Fashion-MNIST quality after a 10-minute pretraining budget, and the paper's ablations (~45 minutes on 2 cores).
quality: fashion-mnist
	$(BIN)/python benchmarks/quality.py --budget-minutes 10

ablations: fashion-mnist
	$(BIN)/python benchmarks/ablations.py

# Throughput and peak memory of the CIFAR-10 GPU recipe (run it whenever a GPU is available).
gpu-smoke: $(STAMP)
	$(BIN)/python benchmarks/gpu_smoke.py

# Fashion-MNIST without the network when possible: found locally ($$VICREG_DATA, ~/.cache/vicreg, the Debian
# package's folder), else the Debian package (as root with apt), else torchvision's download.
FIND_FMNIST = $(BIN)/python -c "from vicreg.data import find_dataset as f; print('Fashion-MNIST:', f('fashion-mnist', download=$(1)))"
fashion-mnist: $(STAMP)
	@$(call FIND_FMNIST,False) 2>/dev/null \
	|| { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	     && echo "installing Debian's dataset-fashion-mnist" && apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null \
	     && $(call FIND_FMNIST,False); } \
	|| $(call FIND_FMNIST,True)

# The main job: pretrain the fashion-mnist-cpu preset for DEMO_BUDGET minutes of wall-clock time (the number of
# steps is decided from this machine's measured speed), evaluate, write the report.
DEMO_OUT ?= runs/demo
DEMO_BUDGET ?= 10
DEMO_TRAIN_FLAGS ?=
DEMO_EVAL_FLAGS ?=
demo: fashion-mnist
	@echo "== 1/3 pretraining VICReg on Fashion-MNIST for $(DEMO_BUDGET) minutes -> $(DEMO_OUT)"
	$(BIN)/vicreg train --preset fashion-mnist-cpu --out $(DEMO_OUT) --budget-minutes $(DEMO_BUDGET) $(DEMO_TRAIN_FLAGS)
	@echo "== 2/3 evaluating: kNN, linear probe, label fractions, raw-pixel and random-init baselines"
	$(BIN)/vicreg eval $(DEMO_OUT) --data fashion-mnist $(DEMO_EVAL_FLAGS)
	@echo "== 3/3 writing the report"
	$(BIN)/vicreg report $(DEMO_OUT)
	@echo "done: open $(DEMO_OUT)/report.html"

# A few minutes: the same pipeline on 60 training steps (--max-steps caps the budgeted total; most of the time is
# the evaluation on all 70k images).
demo-quick:
	$(MAKE) demo DEMO_OUT=runs/demo-quick DEMO_TRAIN_FLAGS="--max-steps 60" \
	    DEMO_EVAL_FLAGS="--probe-epochs 10 --fractions 0.1"

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
