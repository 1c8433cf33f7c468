# streamr1 — the targets README names. Every target installs what it needs first.
PY        ?= python3
VENV      := .venv
BIN       := $(VENV)/bin
STAMP     := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test test-slow bench bench-quality lint notebooks toy-assets clean

install: $(STAMP)  ## .venv with the package and its dev extras (needs only python3)

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip uv
	$(BIN)/uv pip install --python $(BIN)/python -e '.[dev]'
	touch $(STAMP)

demo: install  ## Stream-R1 on the toy world (CPU, minutes): logs, sample videos, before/after report
	$(BIN)/python -m streamr1.toy.demo --output runs/demo

test: install  ## the CPU test suite (about 10 minutes at most)
	$(BIN)/python -m pytest -q

test-slow: install  ## the slow tests (multi-process DDP/FSDP, resume)
	$(BIN)/python -m pytest -q -m slow

bench: install  ## speed benchmark: turns, Stream-R1 vs DMD, KV cache vs recompute, throughput, streaming (numbers, not pass/fail)
	$(BIN)/python -m streamr1.bench $(BENCH_ARGS)
	$(BIN)/python -m streamr1.bench.reward --threads 1 $(BENCH_REWARD_ARGS)

bench-quality: install  ## the ablation table on the toy world (DMD, Reward Forcing, Stream-R1, ablations; 3 seeds)
	$(BIN)/python -m streamr1.toy.quality --output results --logs runs/quality
	$(BIN)/python -m streamr1.toy.tilt --output results

lint: install
	$(BIN)/ruff check src tests

notebooks: install  ## execute the notebooks (outputs stay stripped in git)
	$(BIN)/python -m pytest -q tests/test_notebooks.py

toy-assets: install  ## remake the toy world's shipped weights (student init, reward): about 50 minutes on 2 cores
	$(BIN)/python -m streamr1.toy.assets --output src/streamr1/assets --budget long

clean:
	rm -rf runs lightning_logs .pytest_cache
