# edgeresnet: every target is one `python -m pipeline <stage>` call, and each stage's
# output is a file the next depends on, so Make rebuilds only what is stale.
#
#   make demo                                 digits: train -> export (offline, ~2 min)
#   make demo DATA=../shared/data/imagenette  any ImageFolder tree (train/ and val/)
#   make demo DATASET=imagenette|cifar10      torchvision's datasets (under build/datasets)
#   make test                                 the test suite (CPU)
#
# Variables: RUN=name (artifacts in build/<name>/), MODEL=resnet56, CONFIG=file.toml,
# SET="--set train.epochs=3 ..." (any configuration override).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
READY := $(VENV)/.installed

DATASET ?= digits
DATA ?=
RECIPE_digits := digits
RECIPE_cifar10 := cifar10
RECIPE_imagenette := photos
RECIPE := $(if $(DATA),photos,$(RECIPE_$(DATASET)))
ifeq ($(RECIPE),)
$(error unknown DATASET '$(DATASET)': choose digits, cifar10 or imagenette, or give DATA=<folder>)
endif
CONFIG ?= configs/$(RECIPE).toml
MODEL ?= $(shell $(PYTHON) -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["model"]["name"])' $(CONFIG))
DATA_ID := $(if $(DATA),$(notdir $(abspath $(DATA))),$(DATASET))
RUN ?= $(DATA_ID)-$(MODEL)
B := build/$(RUN)
ARGS = --config $(CONFIG) --run $(RUN) --model $(MODEL) \
       $(if $(DATA),--data $(DATA),--dataset $(DATASET)) $(SET)

.PHONY: demo train export setup test clean help
.DELETE_ON_ERROR:

demo: $(B)/model.fp32.onnx
	@echo "demo done: artifacts in $(B)/"

train: $(B)/model.pt
export: $(B)/model.fp32.onnx
setup: $(READY)

$(READY): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --disable-pip-version-check -q -r requirements.txt
	touch $@

$(B)/model.pt: $(CONFIG) | $(READY)
	$(PY) -m pipeline train $(ARGS)

$(B)/model.fp32.onnx: $(B)/model.pt
	$(PY) -m pipeline export $(ARGS)

test: $(READY)
	$(PY) -m pytest -q tests

help: | $(READY)
	$(PY) -m pipeline --help

clean:
	rm -rf build
