# Two commands do all the setup on a fresh machine:
#   make demo   - create .venv if missing and run the main job on the embedded ShapesWorld default
#   make test   - create .venv if missing and run the unit tests plus strict nbval of every notebook
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
OUT     ?= runs/toy

export HF_HUB_OFFLINE = 1
export TRANSFORMERS_OFFLINE = 1
export HF_DATASETS_OFFLINE = 1
export TOKENIZERS_PARALLELISM = false
export NO_ALBUMENTATIONS_UPDATE = 1

.PHONY: venv demo test unit notebooks lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, pinned: the CPU wheel; a looser spec would pull a multi-GB CUDA build
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev,photos,cc3m]'
	touch $(STAMP)

venv: $(STAMP)

# the main job: train FROMAGe's adapters on the shipped ShapesWorld sample (CPU; the toy preset caps training at 90 s)
demo: $(STAMP)
	$(BIN)/fromage-mini train --preset toy --out $(OUT)

# unit tests and strict nbval of every notebook, in one pytest run (exit 5 = nothing ran = failure)
test: $(STAMP)
	$(BIN)/python -m pytest -q --nbval --nbval-current-env --nbval-sanitize-with notebooks/sanitize.cfg tests notebooks

# re-execute every notebook in place (stores fresh outputs), printing each one's wall time
notebooks: $(STAMP)
	$(BIN)/python notebooks/run_all.py

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) runs
