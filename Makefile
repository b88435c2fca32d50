# Everything a newcomer needs: `make pretrain` and `make test` create .venv and install first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
SYNTH := data/synth

.PHONY: install pretrain test bench data clean

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(INSTALLED)

install: $(INSTALLED)

$(SYNTH)/manifest.json: | $(INSTALLED)
	$(BIN)/crocoman-data synth --out $(SYNTH) --groups 1000 --val-groups 64 --groups-per-shard 50 --size 128 --workers 2

data: $(SYNTH)/manifest.json

pretrain: $(INSTALLED) $(SYNTH)/manifest.json
	$(BIN)/crocoman fit -c configs/pretrain/cpu_demo.yaml

test: $(INSTALLED)
	HF_HUB_OFFLINE=1 WANDB_MODE=offline WANDB_SILENT=true $(BIN)/python -m pytest -q

bench: $(INSTALLED)
	HF_HUB_OFFLINE=1 $(BIN)/crocoman-bench --out benchmarks/results

clean:
	rm -rf runs wandb lightning_logs .pytest_cache
