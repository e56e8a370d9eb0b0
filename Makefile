# athena-vla: every target runs inside .venv, which `make setup` creates (other targets depend on it).
# Pass extra Hydra overrides or pytest flags with ARGS="...", e.g. make train ARGS="lora=efficient".
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help setup train test test-full lint format sim-data convert-data inspect doctor evaluate predict bench-kv bench-heads export bench bench-data serve run-robot bench-serve learn-online

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-10s %s\n", $$1, $$2}'

setup: $(VENV)/.installed ## Create .venv, install pinned packages (CPU torch) and the renderer's system libraries

$(VENV)/.installed: requirements.txt constraints.txt scripts/setup_system.sh
	bash scripts/setup_system.sh
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r requirements.txt -c constraints.txt
	touch $@

train: setup ## Train with the defaults: tiny OpenVLA, simulated sample data, CPU
	$(PY) train.py $(ARGS)

test: setup ## The default test suite (what CI runs)
	$(PY) -m pytest -q $(ARGS)

test-full: setup ## Every test, slow ones included
	$(PY) -m pytest -q -m "" $(ARGS)

lint: setup ## ruff lint and format check
	$(PY) -m ruff check . && $(PY) -m ruff format --check .

format: setup ## ruff fix and format
	$(PY) -m ruff check --fix . && $(PY) -m ruff format .

sim-data: setup ## Generate data=sample's simulated episodes (the dataset make train reads) into the cache
	$(PY) scripts/make_sample_data.py $(ARGS)

convert-data: setup ## Export a dataset as LeRobotDataset v3: make convert-data ARGS="output_dir=DIR [data=hdf5 data.root=F]"
	$(PY) scripts/convert_data.py $(ARGS)

inspect: setup ## Look at the training data: counts, statistics, filter report, frames.png, actions.png
	$(PY) scripts/inspect_data.py $(ARGS)

doctor: setup ## Check the data before training: statistics, warnings, report.md (exit 1 on an error; ARGS="data=isaac data.root=DIR")
	$(PY) scripts/doctor.py $(ARGS)

evaluate: setup ## Closed-loop success in the simulator, with baselines (default: the latest run; ARGS="checkpoint=DIR")
	$(PY) scripts/evaluate.py $(ARGS)

predict: setup ## One action chunk: make predict ARGS="image=PNG instruction='...'" (default: the latest run)
	$(PY) scripts/predict.py $(ARGS)

bench-kv: setup ## Per-action latency of the tiny model with and without the KV cache
	$(PY) scripts/bench_kv_cache.py $(ARGS)

bench-heads: setup ## Chunk latency of every action head (tokens AR / parallel / l1 / l1 steps), torch and onnxruntime
	$(PY) scripts/bench_heads.py $(ARGS)

export: setup ## Merge adapters, export ONNX (KV cache), check parity (default: the latest run; ARGS="run=DIR")
	$(PY) scripts/export.py $(ARGS)

bench: setup ## Latency, tokens/s, memory per runtime vs 8 tokens/s (default: the latest export; ARGS="checkpoint=DIR")
	$(PY) scripts/benchmark.py $(ARGS)

serve: setup ## Serve a policy to robot clients over websockets: make serve ARGS="checkpoint=DIR [server.host=0.0.0.0]"
	$(PY) scripts/serve.py $(ARGS)

run-robot: setup ## Drive the simulated athena through a policy server (ARGS="control.url=ws://HOST:8765")
	$(PY) scripts/run_robot.py $(ARGS)

learn-online: setup ## Continuous learning: deploy, record, relabel (DAgger), retrain, promote (ARGS="start=RUN")
	$(PY) scripts/learn_online.py $(ARGS)

bench-serve: setup ## Server overhead p50/p99, success vs injected delay (async vs sync), concurrent clients
	$(PY) scripts/bench_serve.py $(ARGS)

bench-data: setup ## Loader samples/s (cold vs cached epoch) against the training step's consumption
	$(PY) scripts/bench_data.py $(ARGS)
