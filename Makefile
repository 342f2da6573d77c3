# dpack - the README's commands. `make demo` installs and scores the shipped sample capture with the shipped
# model; `make test` installs everything the tests need and runs the whole suite.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
SAMPLE := samples/lab-sample.pcap.gz

.PHONY: install demo test lint bench model clean

install: $(VENV)/.installed

# torch==2.13.0 first: it is the CPU build on the machine's disk; a bare `torch` could pull a CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	touch $@

demo: install
	$(BIN)/dpack score $(SAMPLE) --verdicts verdicts.jsonl

test: install
	bash tools/install-suricata.sh
	bash tools/link-broker.sh $(VENV)
	$(BIN)/ruff check plugin tests benchmarks tools
	$(BIN)/ruff format --check plugin tests benchmarks tools
	$(BIN)/python -m pytest -q
	cd tests/btest && PATH="$(abspath $(BIN)):$$PATH" btest -d

lint: install
	$(BIN)/ruff check plugin tests benchmarks tools
	$(BIN)/ruff format --check plugin tests benchmarks tools

bench: install
	$(BIN)/python benchmarks/bench_extract.py
	$(BIN)/python benchmarks/bench_model.py
	$(BIN)/python benchmarks/bench_score.py
	$(BIN)/python benchmarks/bench_live.py

# Rebuild the shipped default model from lab-dev benign-train (see models/MODEL_CARD.md).
DATA ?= ../shared/datasets/lab-dev
model: install
	$(BIN)/dpack train $(DATA)/benign-train.pcap.gz --out models/dpack-default.pt --arch fast \
	  --packets 3 --bytes 80 --policy payload --target-fpr 0.005 --name dpack-default
clean:
	rm -rf $(VENV) verdicts.jsonl
