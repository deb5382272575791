# edgeresnet: every target is one `python -m pipeline <stage>` call, and each stage's
# output is a file the next depends on, so Make rebuilds only what is stale.
#
#   make demo                                 digits: train -> export -> calibrate -> quantize -> evaluate
#   make demo DATA=../shared/data/imagenette  any ImageFolder tree (train/ and val/)
#   make demo DATASET=imagenette|cifar10      torchvision's datasets (under build/datasets)
#   make bench / make report [ACCEPT=1]       latency + regression report (exit 1 on regression)
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
ARGS = --config $(CONFIG) --run $(RUN) --set model.name=$(MODEL) \
       $(if $(DATA),--data $(DATA),--dataset $(DATASET)) $(SET)

.PHONY: experiment-degradation demo train export calibrate quantize evaluate bench-quant engine bundle camera clip bench-camera bench report targets setup setup-device test clean help
.DELETE_ON_ERROR:

demo: $(B)/eval/onnxruntime-int8.json
	@echo "demo done: artifacts in $(B)/"

train: $(B)/model.pt
export: $(B)/model.fp32.onnx
calibrate: $(B)/calibration/manifest.json
quantize: $(B)/model.int8.onnx
evaluate: $(B)/eval/onnxruntime-int8.json
setup: $(READY)

# NVIDIA's TensorRT binding wheels are kept (not installed: they need libnvinfer) so the
# tests can hold our TensorRT code and its test fake to the real API's names.
TRT_BINDINGS := tensorrt-cu12-bindings==10.3.0 tensorrt-cu13-bindings==11.4.0.106

$(READY): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --disable-pip-version-check -q -r requirements.txt
	$(VENV)/bin/pip download --disable-pip-version-check -q --no-deps --only-binary=:all: \
	    --python-version 3.11 -d $(VENV)/trt-bindings $(TRT_BINDINGS)
	touch $@

$(B)/model.pt: $(CONFIG) | $(READY)
	$(PY) -m pipeline train $(ARGS)

$(B)/model.fp32.onnx: $(B)/model.pt
	$(PY) -m pipeline export $(ARGS)

$(B)/calibration/manifest.json: $(B)/model.pt
	$(PY) -m pipeline calibrate $(ARGS)

# one calibration, two renderings: model.int8.onnx (TensorRT rules) and model.int8.cpu.onnx
$(B)/model.int8.onnx: $(B)/model.fp32.onnx $(B)/calibration/manifest.json
	$(PY) -m pipeline quantize $(ARGS)

$(B)/eval/onnxruntime-int8.json: $(B)/model.int8.onnx
	$(PY) -m pipeline evaluate $(ARGS)

# the peer: ONNX Runtime's quantize_static on the same model and manifest
$(B)/model.int8.ort.onnx: $(B)/model.fp32.onnx $(B)/calibration/manifest.json
	$(PY) -m pipeline quantize $(ARGS) --method onnxruntime

$(B)/eval/onnxruntime-int8-ort.json: $(B)/model.int8.ort.onnx $(B)/model.int8.onnx
	$(PY) -m pipeline evaluate $(ARGS)

bench-quant: $(B)/eval/onnxruntime-int8-ort.json
	$(PY) -m pipeline bench-quant $(ARGS)

# --- deployment: TensorRT engines are built on the machine that runs them -------------
TARGET ?= cpu
BUNDLE ?=
DEVICE_VENV ?= .venv-device
DEVICE_PY := $(DEVICE_VENV)/bin/python
ON_JETSON := $(wildcard /etc/nv_tegra_release)
ENGINE_PY := $(if $(ON_JETSON),$(DEVICE_PY),$(PY))
ENGINE_READY := $(if $(ON_JETSON),$(DEVICE_VENV)/.installed,$(READY))

engine: | $(ENGINE_READY)
	$(ENGINE_PY) -m pipeline engine $(ARGS) --target $(TARGET) $(if $(BUNDLE),--bundle $(BUNDLE))

bundle: $(B)/model.int8.onnx
	$(PY) -m pipeline bundle $(ARGS) --target $(TARGET)

# --- the live loop: INT8 beside its FP32 reference -------------------------------------
SOURCE ?= 0
CLIP ?= $(B)/clip.avi

camera: | $(ENGINE_READY)
	$(ENGINE_PY) -m pipeline camera $(ARGS) --source $(SOURCE) --target $(TARGET)

clip: $(B)/model.int8.onnx
	$(PY) -m pipeline make-clip $(ARGS) --out $(CLIP) $(if $(DATA),--data $(DATA),--data build/datasets/$(DATASET))

bench-camera: $(B)/model.int8.onnx
	$(PY) -m pipeline bench-camera $(ARGS) --target $(TARGET)

# --- regression reports: history in build/reports/history.sqlite -------------------------
bench: $(B)/eval/onnxruntime-int8.json | $(ENGINE_READY)
	$(ENGINE_PY) -m pipeline bench $(ARGS) --target $(TARGET)

report: | $(ENGINE_READY)
	$(ENGINE_PY) -m pipeline report $(ARGS) --target $(TARGET) $(if $(ACCEPT),--accept) $(if $(BASELINE),--baseline $(BASELINE))

# --- the degradation experiment (plain vs residual), default data: the shared Imagenette --
EXPERIMENT_DATA ?= $(or $(DATA),../shared/data/imagenette)
experiment-degradation: | $(READY)
	$(PY) -m pipeline experiment-degradation --config configs/degradation.toml --run degradation \
	    --data $(EXPERIMENT_DATA) $(SET)

targets: | $(READY)
	$(PY) -m pipeline targets

# The device side: the system's TensorRT and OpenCV (JetPack's, with GStreamer) through
# system site packages, plus only what deployment needs. No torch, no NNCF.
setup-device: $(DEVICE_VENV)/.installed
$(DEVICE_VENV)/.installed: requirements-device.txt
	$(PYTHON) -m venv --system-site-packages $(DEVICE_VENV)
	$(DEVICE_VENV)/bin/pip install --disable-pip-version-check -q -r requirements-device.txt
	touch $@

test: $(READY)
	$(PY) -m pytest -q tests

help: | $(READY)
	$(PY) -m pipeline --help

clean:
	rm -rf build
