# Everything a newcomer needs: `make pretrain` and `make test` create .venv and install first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
SYNTH := data/synth
PROBE := data/synth_probe
HAND_PAIRS := data/synth_hand_pairs
BODIES := data/synth_bodies
HANDS := data/synth_hands
BODY_MODELS := data/synth_body_models
PRETRAINED := runs/pretrain_cpu_demo/checkpoints/last.ckpt
CROCOMAN := HF_HUB_OFFLINE=1 $(BIN)/crocoman

.PHONY: install pretrain pretrain-hand finetune finetune-hand finetune-gesture finetune-densepose test bench study data clean

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(INSTALLED)

install: $(INSTALLED)

$(SYNTH)/manifest.json: | $(INSTALLED)
	$(BIN)/crocoman-data synth --out $(SYNTH) --groups 1000 --val-groups 64 --groups-per-shard 50 --size 128 --workers 2

# Held-out labelled people for the demo's online probes (lightning_modules.probes): 600 scored, rendered once.
$(PROBE)/manifest.json: | $(INSTALLED)
	$(BIN)/crocoman-data labelled --task body --out $(PROBE) --samples 20 --val-samples 600 --size 128 --workers 2 --no-vertices

data: $(SYNTH)/manifest.json $(PROBE)/manifest.json

pretrain: $(INSTALLED) $(SYNTH)/manifest.json $(PROBE)/manifest.json
	$(CROCOMAN) fit -c configs/pretrain/cpu_demo.yaml

$(HAND_PAIRS)/manifest.json: | $(INSTALLED)
	$(BIN)/crocoman-data synth --task hand --out $(HAND_PAIRS) --groups 1000 --val-groups 64 --groups-per-shard 50 --size 128 --workers 2

# The hand model (CroCo-Man pretrains bodies and hands separately): same ViT, pairs of synthetic hands.
pretrain-hand: $(INSTALLED) $(HAND_PAIRS)/manifest.json
	$(CROCOMAN) fit -c configs/pretrain/cpu_demo_hand.yaml

# Fine-tuning demos start from the CPU pretraining checkpoint; it is made first if missing.
$(PRETRAINED): | $(INSTALLED) $(SYNTH)/manifest.json $(PROBE)/manifest.json
	$(CROCOMAN) fit -c configs/pretrain/cpu_demo.yaml

$(BODIES)/manifest.json: | $(INSTALLED)
	$(BIN)/crocoman-data labelled --task body --out $(BODIES) --samples 20000 --val-samples 500 --size 128 --workers 2 --no-vertices

$(HANDS)/manifest.json: | $(INSTALLED)
	$(BIN)/crocoman-data labelled --task hand --out $(HANDS) --samples 8000 --val-samples 400 --size 128 --workers 2

$(BODY_MODELS)/smpl/SMPL_NEUTRAL.pkl: | $(INSTALLED)
	$(BIN)/crocoman-data body-models --out $(BODY_MODELS)

# Validate first (the metrics at initialisation: pretrained encoder, fresh head), then fine-tune.
define validate_then_fit
	$(CROCOMAN) validate -c $(1)
	$(CROCOMAN) fit -c $(1)
endef

finetune: $(PRETRAINED) $(BODIES)/manifest.json $(BODY_MODELS)/smpl/SMPL_NEUTRAL.pkl
	$(call validate_then_fit,configs/finetune/body_mesh_joint_maps_cpu.yaml)

finetune-hand: $(PRETRAINED) $(HANDS)/manifest.json $(BODY_MODELS)/smpl/SMPL_NEUTRAL.pkl
	$(call validate_then_fit,configs/finetune/hand_mesh_mano_cpu.yaml)

finetune-gesture: $(PRETRAINED) $(HANDS)/manifest.json
	$(call validate_then_fit,configs/finetune/gesture_cpu.yaml)

finetune-densepose: $(PRETRAINED) $(BODIES)/manifest.json
	$(call validate_then_fit,configs/finetune/densepose_cpu.yaml)

test: $(INSTALLED)
	HF_HUB_OFFLINE=1 WANDB_MODE=offline WANDB_SILENT=true $(BIN)/python -m pytest -q

bench: $(INSTALLED)
	HF_HUB_OFFLINE=1 $(BIN)/crocoman-bench --out benchmarks/results

# The pretraining study (benchmarks/study/cpu): body and hand models x four pretrainings x three seeds, frozen
# probes and fine-tunes (10% of the labels); resumable run by run from the records it keeps in benchmarks/study/cpu/records.
study: $(INSTALLED)
	HF_HUB_OFFLINE=1 nice -n 5 $(BIN)/crocoman-study --preset cpu --seeds 0 1 2

clean:
	rm -rf runs wandb lightning_logs .pytest_cache
