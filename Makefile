# The two commands of the README's Quick start: `make demo` and `make test`. Both set up everything.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
HPCJOB := $(VENV)/bin/hpcjob
DATA := data/pcam-synth
# The demo keeps its ledger and runs inside the checkout, away from your own ~/.local/share/hpcjob.
DEMO_ENV := HPCJOB_HOME=$(CURDIR)/.hpcjob-demo HPCJOB_PROFILE=local

.PHONY: venv demo test lint bench clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	# constraints.txt pins torch's CPU build, which keeps this fast; the cluster installs its own.
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[workloads,dev]'
	touch $@

venv: $(VENV)/.installed

$(DATA)/synth.json: $(VENV)/.installed
	$(PY) workloads/synth.py $(DATA) --flavour official --train 4096 --valid 512 --test 512 --seed 0

demo: $(VENV)/.installed $(DATA)/synth.json
	$(DEMO_ENV) $(HPCJOB) submit gpu-check --wait
	$(DEMO_ENV) $(HPCJOB) submit train --epochs 2 --data-dir $(DATA) --wait
	$(DEMO_ENV) $(HPCJOB) status
	$(DEMO_ENV) $(HPCJOB) logs last --tail 8
	$(DEMO_ENV) $(HPCJOB) show last --no-script
	@echo
	@echo "Explore further with: $(DEMO_ENV) $(HPCJOB) runs"

test: $(VENV)/.installed
	$(PY) -m pytest

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: $(VENV)/.installed
	$(PY) bench/startup.py
	$(PY) bench/ledger_growth.py
	$(PY) bench/loader.py

clean:
	rm -rf $(VENV) .hpcjob-demo $(DATA) build dist
