# The two commands a user needs: `make run` and `make test` (see README.md).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.genguard-install-stamp
PHOTOS := data/01_raw/debian_photos

# No run may stop to ask for consent or phone home (CI has no stdin and no network).
export KEDRO_DISABLE_TELEMETRY := 1
export DO_NOT_TRACK := true
export MLFLOW_DISABLE_TELEMETRY := true
export DVC_NO_ANALYTICS := 1
export GX_ANALYTICS_ENABLED := False
export PYTHONUNBUFFERED := 1
# OpenMP's passive wait is for the test suite only (its workers share the cores; tests/conftest.py sets it):
# on a lone `kedro run` it costs a third of the wall time (embedded dataset build 47 s -> 81 s, measured).

.PHONY: install run test ui bench data repro metrics viz dvc-yaml

install: $(STAMP) $(PHOTOS)/.genguard_debian_photos.json

# torch + torchvision go in first, pinned: otherwise deepspeed/open_clip/diffusers may pull a
# different multi-GB torch build. deepspeed ships as an sdist: DS_BUILD_OPS=0 builds no kernels
# now (they JIT-compile on first use).
$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install torch==2.14.1 torchvision==0.29.1
	DS_BUILD_OPS=0 $(PY) -m pip install -e '.[dev]'
	@touch $(STAMP)

# Real photographs for the embedded default dataset (Debian wallpaper packages, unpacked locally;
# licences recorded in the manifest). Without apt the build falls back to the photos in wheels.
$(PHOTOS)/.genguard_debian_photos.json: | $(STAMP)
	$(PY) -m genguard.families.aigi.photos --dest $(PHOTOS)

data: install
	$(VENV)/bin/kedro run --pipelines=aigi_data

run: install
	$(VENV)/bin/kedro run --pipelines=pin_clip

# DVC runs `kedro run` per stage: it needs the virtual environment's bin first on PATH.
repro: install
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/dvc repro

metrics: install
	$(VENV)/bin/dvc metrics show

viz: install
	$(VENV)/bin/kedro viz run --host 127.0.0.1 --port 4141 --no-browser

# dvc.yaml is generated from the pipeline registry (a test fails when they disagree).
dvc-yaml: install
	$(PY) -m genguard.dvc_stages --write

test: install
	OMP_WAIT_POLICY=$${OMP_WAIT_POLICY:-PASSIVE} $(PY) -m pytest

ui: install
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db \
		--default-artifact-root mlruns/artifacts --host 127.0.0.1 --port 5000

bench: install
	$(PY) benchmarks/run_all.py
