# Set-up and the two commands a user needs: `make demo`, `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Installed before requirements.txt; override on a cluster, e.g. TORCH_SPEC="torch torchvision".
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1

.PHONY: install test demo demo-real bench clean

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install $(TORCH_SPEC)
	$(PY) -m pip install -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest

demo: install
	$(PY) scripts/demo.py --output_dir runs/demo

demo-real: install
	$(PY) scripts/demo_real.py --output_dir runs/demo_real

bench: install
	$(PY) scripts/bench_objective.py --quick
	$(PY) scripts/bench_loader.py --quick
	$(PY) scripts/bench_step.py --quick --compare --variants cl

clean:
	rm -rf $(VENV) runs
