# `make demo` and `make test` each create or refresh .venv on a fresh machine, then run.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# pip prints one line per package for this machine's local wheel folders; they are noise.
QUIET_PIP := { grep -v '^WARNING: Location' || true; }

.PHONY: demo demo-extra-boxes sweep-demo test test-fast lint install lock clean

# constraints.txt pins every package (the Dockerfile installs from it too): the same versions everywhere.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip 2>&1 | $(QUIET_PIP)
	$(PY) -m pip install -q -c constraints.txt -e '.[test]' 2>&1 | $(QUIET_PIP)
	$(PY) -c "import torch, torchvision, ray, mlflow, cv2, pydensecrf.densecrf, skimage, pycocotools"
	touch $(STAMP)

install: $(STAMP)

# Re-pin constraints.txt: a fresh venv resolves pyproject.toml's ranges anew, then pip freeze.
lock:
	rm -rf .lock-venv && python3 -m venv .lock-venv
	.lock-venv/bin/python -m pip install -q --upgrade pip 2>&1 | $(QUIET_PIP)
	.lock-venv/bin/python -m pip install -q -e '.[test]' 2>&1 | $(QUIET_PIP)
	{ echo "# Every package of a working install of '.[test]', pinned: \`make\` and the Dockerfile install with"; \
	  echo "# \`pip install -c constraints.txt\`. Regenerate with \`make lock\` (a fresh venv, then pip freeze)."; \
	  .lock-venv/bin/python -m pip freeze --exclude-editable; } > constraints.txt.tmp
	mv constraints.txt.tmp constraints.txt && rm -rf .lock-venv

demo: $(STAMP)
	$(VENV)/bin/boxsup demo --config configs/demo.yaml --data demo_data

# Masks on 1/6 of the demo images vs the same masks + boxes on the rest from a COCO-format copy.
demo-extra-boxes: $(STAMP)
	$(VENV)/bin/boxsup demo --extra-boxes --config configs/demo.yaml --data demo_data

# The demo's data, then a 2-trial Ray Tune sweep over it (k=1 vs k=5), one MLflow experiment.
demo_data: | $(STAMP)
	$(VENV)/bin/boxsup data synth --out demo_data

sweep-demo: $(STAMP) | demo_data
	$(VENV)/bin/boxsup sweep --space search_spaces/demo.yaml --config configs/demo.yaml

test: $(STAMP)
	$(PY) -m pytest

# The tests that start no Ray and take under ~10 s each (markers in pyproject.toml): a quick check while editing.
test-fast: $(STAMP)
	$(PY) -m pytest -m "not ray and not slow"

# ruff and mypy as pyproject.toml configures them (the versions constraints.txt pins): both run, either fails it.
lint: $(STAMP)
	$(VENV)/bin/ruff check boxsup tests benchmarks; ruff=$$?; $(VENV)/bin/mypy && exit $$ruff

clean:
	rm -rf runs demo_data demo_data-coco-boxes mlflow.db mlartifacts
