# dpack - the README's commands. `make demo` installs and scores the shipped sample capture with the shipped
# model; `make test` installs everything the tests need and runs the whole suite.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
SAMPLE := samples/lab-sample.pcap.gz

.PHONY: install demo test lint bench model clean

install: $(VENV)/.installed

# torch==2.13.0 first: it is the CPU build on the machine's disk; a bare `torch` could pull a CUDA build.
# .installed-run: what dpack needs to run (and draw the report); .installed: the tests' tools too.
$(VENV)/.installed-run: pyproject.toml
	@echo "install: dpack into $(VENV) (torch 2.13.0, CPU build, first; about a minute the first time)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[report]'
	touch $@

$(VENV)/.installed: $(VENV)/.installed-run
	@echo "install: the test tools (pytest, btest, zkg, linters)"
	$(BIN)/pip install -q -e '.[test]'
	touch $@

# The demo: score the shipped sample with the shipped model, evaluate it against the sample's labels,
# and say what came out where (tools/demo_summary.py reads the figures from the report).
demo: $(VENV)/.installed-run
	@echo "demo: dpack score $(SAMPLE) --verdicts verdicts.jsonl"
	@$(BIN)/dpack score $(SAMPLE) --verdicts verdicts.jsonl
	@echo
	@echo "demo: dpack evaluate against samples/lab-sample.labels.csv --report demo-report"
	@$(BIN)/dpack evaluate --pcap $(SAMPLE) --labels samples/lab-sample.labels.csv --report demo-report > demo-report.txt
	@$(BIN)/python tools/demo_summary.py verdicts.jsonl demo-report

# Zeek: tools/find-zeek.sh finds a working zeek (on PATH, or ../shared/zeek beside the repository) and
# puts it first on PATH for pytest and btest; DPACK_REQUIRE_ZEEK=1 then makes a Zeek test that would
# skip fail instead. Without a Zeek the Zeek tests skip, visibly.
test: install
	bash tools/install-suricata.sh
	@zb=$$(bash tools/find-zeek.sh $(VENV)); \
	if [ -n "$$zb" ]; then echo "test: Zeek $$("$$zb/zeek" --version | awk '{print $$NF}') from $$zb"; \
	  export DPACK_REQUIRE_ZEEK=1; else echo "test: no Zeek found: the Zeek tests will be skipped"; fi; \
	export PATH="$${zb:+$$zb:}$(abspath $(BIN)):$$PATH"; \
	set -e; \
	bash tools/link-broker.sh $(VENV); \
	$(MAKE) --no-print-directory lint; \
	$(BIN)/python -m pytest -q; \
	bash tools/run-btest.sh

# The checks in .pre-commit-config.yaml (ruff, ruff format, mypy, zeek-format, shellcheck) over every file.
lint: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/pre-commit run --all-files --show-diff-on-failure

bench: install
	$(BIN)/python benchmarks/bench_extract.py
	$(BIN)/python benchmarks/bench_model.py
	$(BIN)/python benchmarks/bench_score.py
	$(BIN)/python benchmarks/bench_live.py
	PATH="$$(bash tools/find-zeek.sh $(VENV)):$$PATH" $(BIN)/python benchmarks/bench_zeek.py

# Rebuild the shipped default model from lab-dev benign-train (see models/MODEL_CARD.md). N, L and the
# policy are the library's defaults (traffic/encode.py), so they are not repeated here.
DATA ?= ../shared/datasets/lab-dev
# The host-context stage is fitted on the same capture, on top of the prefix model just trained.
model: install
	$(BIN)/dpack train $(DATA)/benign-train.pcap.gz --out models/dpack-default.pt --arch fast \
	  --target-fpr 0.005 --name dpack-default
	$(BIN)/dpack train-context $(DATA)/benign-train.pcap.gz --model models/dpack-default.pt \
	  --out models/dpack-default.pt --target-fpr 0.005

clean:
	rm -rf $(VENV) verdicts.jsonl demo-report demo-report.txt
