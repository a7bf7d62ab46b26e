# Two commands from a fresh clone: `make demo` and `make test` (each sets up .venv first).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup setup-demo demo serve test test-slow lint format clean docs

$(BIN)/difflab: pyproject.toml requirements-ci.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-ci.txt
	$(BIN)/pip install --quiet -e ".[dev,export]"
	touch $(BIN)/difflab

setup: $(BIN)/difflab

# The web demo's extra (Gradio, and gradio_client + Playwright for its tests) and the notebook's
# (jupytext, nbclient, ipykernel): the slow target only
$(VENV)/.demo-installed: $(BIN)/difflab
	$(BIN)/pip install --quiet -e ".[dev,export,demo,notebook]"
	touch $@

setup-demo: $(VENV)/.demo-installed

demo: setup
	$(BIN)/difflab demo --out runs/demo

serve: setup-demo
	$(BIN)/difflab serve

lint: setup
	$(BIN)/ruff check src tests benchmarks notebooks
	$(BIN)/ruff format --check src tests benchmarks notebooks

test: lint
	$(BIN)/pytest -q

test-slow: setup-demo
	$(BIN)/pytest -q -m slow --durations=25 || [ $$? -eq 5 ]  # 5 = no slow tests collected

# onnxruntime-web for `difflab export --web` (pinned; npm pack, once, into $DIFFLAB_NPM_CACHE or
# ~/.cache/difflab/npm): a build step, never a test's
.PHONY: web-runtime
web-runtime: setup
	$(BIN)/python -c "import sys; from difflab.export.web import fetch_runtime_command; sys.exit(fetch_runtime_command())"

# The documentation site (mkdocs.yml, docs/), warnings as errors, into site/. With
# DEMO_CHECKPOINT=path/to/model.safetensors it also exports that model's in-browser demo into
# site/demo/, where docs/live_demo.md's frame shows it (without, the frame says none was built).
$(VENV)/.docs-installed: $(BIN)/difflab
	$(BIN)/pip install --quiet -e ".[dev,export,docs]"
	touch $@

docs: $(VENV)/.docs-installed $(if $(DEMO_CHECKPOINT),web-runtime)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site
ifneq ($(DEMO_CHECKPOINT),)
	rm -rf site/demo
	$(BIN)/difflab export --checkpoint $(DEMO_CHECKPOINT) --web site/demo
endif

format: setup
	$(BIN)/ruff format src tests benchmarks notebooks
	$(BIN)/ruff check --fix src tests benchmarks notebooks

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
