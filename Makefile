# edgeresnet: every target is one `python -m pipeline <stage>` call, and each stage's
# output is a file the next depends on, so Make rebuilds only what is stale.
#
#   make demo                                 digits: train -> export -> calibrate -> quantize -> evaluate
#   make demo DATA=../shared/data/imagenette  any ImageFolder tree (train/ and val/)
#   make demo DATASET=imagenette|cifar10      torchvision's datasets (under build/datasets)
#   make import RUN=r ONNX=m.onnx CLASSES=labels.txt DATA=...   a classifier trained elsewhere
#       (or TORCHVISION=mobilenet_v3_small WEIGHTS=sd.pth); then make quantize/bundle/... RUN=r DATA=...
#   make bench / make report [ACCEPT=1]       latency + regression report (exit 1 on regression)
#   make quant-search / make bench-quant      INT8 settings compared (tuning half); FP32 vs INT8 vs peers
#   make test                                 the test suite (CPU)
#   make device-sim                           the Jetson journey in a simulated JetPack (CI runs it)
#
# Variables: RUN=name (artifacts in build/<name>/; BUILD=folder moves build/), MODEL=resnet56, CONFIG=file.toml,
# SET="--set train.epochs=3 ..." (any configuration override).
# On the device (README, "On the Jetson"): TARGET=jetson RUN=<run> BUNDLE=<bundle>.

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
ifeq ($(wildcard $(CONFIG)),)
$(error CONFIG=$(CONFIG): no such file; the recipes are in configs/)
endif
# the [model] name of the recipe, read without Python (JetPack's Python has no tomllib)
MODEL ?= $(shell awk -F'"' '/^\[/{s=$$0} s=="[model]" && /^name *=/{print $$2; exit}' $(CONFIG))
DATA_ID := $(if $(DATA),$(notdir $(abspath $(DATA))),$(DATASET))
RUN ?= $(DATA_ID)-$(MODEL)
BUILD ?= build
B := $(BUILD)/$(RUN)
ARGS = --config $(CONFIG) --run $(RUN) --set model.name=$(MODEL) $(if $(filter-out build,$(BUILD)),--set run.root=$(BUILD)) \
       $(if $(DATA),--data $(DATA),--dataset $(DATASET)) $(SET)

# --- where the deployment stages run --------------------------------------------------
TARGET ?= cpu
BUNDLE ?=
# The machine's own files (device-tree model, L4T release, nvpmodel) are read under this
# root: "/" on a real machine; `make device-sim` points it at a fake Jetson tree.
EDGERESNET_SYSROOT ?= /
export EDGERESNET_SYSROOT
ON_JETSON := $(wildcard $(EDGERESNET_SYSROOT)/etc/nv_tegra_release)
DEVICE_PYTHON ?= python3
DEVICE_VENV ?= .venv-device
DEVICE_PY := $(DEVICE_VENV)/bin/python
ENGINE_PY := $(if $(ON_JETSON),$(DEVICE_PY),$(PY))
ENGINE_READY := $(if $(ON_JETSON),$(DEVICE_VENV)/.installed,$(READY))
# A device run was unpacked from a bundle (or is about to be): its targets depend only on
# the bundle's files, and the workstation's chain (train -> export -> quantize) does not
# exist for it, so nothing can retrain or overwrite what the bundle brought.
DEVICE_RUN := $(or $(BUNDLE),$(wildcard $(B)/bundle.json))
# TARGET as every stage resolves it (jetson -> this Jetson's profile), asked once.
ifneq ($(TARGET),cpu)
ifneq ($(filter engine evaluate camera bench crosscheck report triton deepstream,$(MAKECMDGOALS)),)
PROFILE := $(shell EDGERESNET_SYSROOT=$(EDGERESNET_SYSROOT) $(ENGINE_PY) -m pipeline resolve-target --target $(TARGET) 2>/dev/null || echo $(TARGET))
endif
endif

FORCE:
.PHONY: FORCE experiment-degradation demo import train export calibrate quantize evaluate bench-quant quant-search engine bundle crosscheck \
        camera clip bench-camera bench report triton bench-triton deepstream targets setup setup-device device-pycuda device-sim test clean help
.DELETE_ON_ERROR:

demo: $(B)/eval/onnxruntime-int8.json
	@echo "demo done: artifacts in $(B)/"

train: $(B)/model.pt
export: $(B)/model.fp32.onnx
calibrate: $(B)/calibration/manifest.json
quantize: $(B)/model.int8.onnx
setup: $(READY)

# NVIDIA's TensorRT binding wheels are kept (not installed: they need libnvinfer), and
# pycuda's source, so the tests can hold our TensorRT code and the emulator to the real
# APIs' names. No 8.5 wheel exists (JetPack 5's version): 8.6.1, the nearest, stands in,
# with the names 8.6 added listed in tests/test_tensorrt_api.py.
TRT_BINDINGS := tensorrt-bindings==8.6.1 tensorrt-cu12-bindings==10.3.0 tensorrt-cu13-bindings==11.4.0.106
PYCUDA := pycuda==2025.1.2

$(READY): requirements.txt requirements-pytriton.txt requirements-triton-stub.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --disable-pip-version-check -q -r requirements.txt
	$(VENV)/bin/pip install --disable-pip-version-check -q --no-deps -r requirements-pytriton.txt
	$(VENV)/bin/python -m venv --without-pip --clear $(VENV)/triton-stub
	$(VENV)/bin/pip install --disable-pip-version-check -q --no-deps -r requirements-triton-stub.txt \
	    --target $(VENV)/triton-stub/lib/python$$($(PY) -c 'import sys; print("%d.%d" % sys.version_info[:2])')/site-packages
	$(VENV)/bin/pip download --disable-pip-version-check -q --no-deps --only-binary=:all: \
	    --python-version 3.11 -d $(VENV)/trt-bindings $(TRT_BINDINGS)
	$(VENV)/bin/pip download --disable-pip-version-check -q --no-deps --no-binary=:all: --no-build-isolation \
	    -d $(VENV)/trt-bindings $(PYCUDA)
	touch $@

# --- the workstation: train -> export -> calibrate -> quantize (never in a device run) ---
# A run made by `import` (a classifier trained elsewhere; README, Bring your own model) has
# no model.pt: nothing trains or exports over its model.fp32.onnx, calibration follows it.
IMPORTED := $(shell grep -ls '"stage": "import"' $(B)/model.fp32.onnx.json 2>/dev/null)
ONNX ?=
TORCHVISION ?=
WEIGHTS ?=
CLASSES ?=
PREPROCESSING ?= imagenet
import: | $(READY)
	$(PY) -m pipeline import $(ARGS) $(if $(ONNX),--onnx $(ONNX)) \
	    $(if $(TORCHVISION),--torchvision $(TORCHVISION) --weights $(WEIGHTS)) --classes '$(CLASSES)' \
	    --preprocessing $(PREPROCESSING)

ifeq ($(DEVICE_RUN),)
# The resolved configuration (recipe + SET overrides), one stamp per stage, rewritten only
# when it changes: Make sees `SET="--set train.lr=0.05"` as a changed file.
S := $(B)/stamps
$(S)/train.toml $(S)/export.toml $(S)/calibrate.toml $(S)/quantize.toml &: $(CONFIG) FORCE | $(READY)
	@$(PY) -m pipeline config-stamps $(ARGS)

ifeq ($(IMPORTED),)
$(B)/model.pt: $(S)/train.toml
	$(PY) -m pipeline train $(ARGS)

$(B)/model.fp32.onnx: $(B)/model.pt $(S)/export.toml
	$(PY) -m pipeline export $(ARGS)
MODEL_SOURCE := $(B)/model.pt
else
MODEL_SOURCE := $(B)/model.fp32.onnx
endif

$(B)/calibration/manifest.json: $(MODEL_SOURCE) $(S)/calibrate.toml
	$(PY) -m pipeline calibrate $(ARGS)

# one calibration, two renderings: model.int8.onnx (TensorRT rules) and model.int8.cpu.onnx
$(B)/model.int8.onnx: $(B)/model.fp32.onnx $(B)/calibration/manifest.json $(S)/quantize.toml
	$(PY) -m pipeline quantize $(ARGS)

# the peer: ONNX Runtime's quantize_static on the same model and manifest
$(B)/model.int8.ort.onnx: $(B)/model.fp32.onnx $(B)/calibration/manifest.json
	$(PY) -m pipeline quantize $(ARGS) --method onnxruntime

$(B)/eval/onnxruntime-int8-ort.json: $(B)/model.int8.ort.onnx $(B)/model.int8.onnx
	$(PY) -m pipeline evaluate $(ARGS)

bench-quant: $(B)/eval/onnxruntime-int8-ort.json
	$(PY) -m pipeline bench-quant $(ARGS)

# NNCF's range estimators, calibration sizes and weight granularity compared on the tuning
# half of val (bench/quant-search.{json,png}); bench-quant shows the table when it exists
quant-search: $(B)/model.fp32.onnx
	$(PY) -m pipeline quant-search $(ARGS)

bundle: $(B)/bundle-$(TARGET).tar.gz
$(B)/bundle-%.tar.gz: $(B)/model.int8.onnx
	$(PY) -m pipeline bundle $(ARGS) --target $*
MODELS := $(B)/model.int8.onnx
else
$(B)/bundle.json: $(BUNDLE) | $(ENGINE_READY)
	$(ENGINE_PY) -m pipeline unpack $(ARGS) --bundle $(BUNDLE)
MODELS := $(B)/bundle.json
endif

# --- deployment: engines built, scored and reported on the machine that runs them -------
ifeq ($(TARGET),cpu)
DEPLOYED := $(MODELS)
EVALUATED := $(B)/eval/onnxruntime-int8.json
# what the cpu target deploys is measured here, not assumed: bench times every CPU runtime
# on both INT8 renderings and writes its choice (made again by every `make bench`)
CHOSEN := $(B)/deploy/$(TARGET).json
$(CHOSEN): $(MODELS) | $(ENGINE_READY)
	$(ENGINE_PY) -m pipeline bench $(ARGS) --target $(TARGET)
engine: $(MODELS) | $(ENGINE_READY)
	$(ENGINE_PY) -m pipeline engine $(ARGS) --target $(TARGET)
else
DEPLOYED := $(B)/engines/$(PROFILE)/model.fp32.engine
EVALUATED := $(B)/eval/tensorrt-fp32.json
engine: $(DEPLOYED)
# the FP32 reference engine is built last, beside the target's INT8 (or FP16) engine
$(DEPLOYED): $(MODELS) | $(ENGINE_READY)
	$(ENGINE_PY) -m pipeline engine $(ARGS) --target $(TARGET)
endif

evaluate: $(EVALUATED)
$(EVALUATED): $(DEPLOYED) | $(ENGINE_READY)
	$(ENGINE_PY) -m pipeline evaluate $(ARGS) --target $(TARGET)

# --- the live loop: INT8 beside its FP32 reference -------------------------------------
SOURCE ?= 0
HEADLESS ?=
CLIP ?= $(B)/clip.avi

camera: $(DEPLOYED) $(CHOSEN) | $(ENGINE_READY)
	$(ENGINE_PY) -m pipeline camera $(ARGS) --source '$(SOURCE)' --target $(TARGET) $(if $(HEADLESS),--headless)

clip: $(B)/model.int8.onnx
	$(PY) -m pipeline make-clip $(ARGS) --out $(CLIP) $(if $(DATA),--data $(DATA),--data build/datasets/$(DATASET))

bench-camera: $(B)/model.int8.onnx $(CHOSEN)
	$(PY) -m pipeline bench-camera $(ARGS) --target $(TARGET)

# --- Triton: a model repository of the deployed engine and the ONNX models (README, Triton);
# always rewritten (cheap), as one repository folder serves whichever TARGET was named last.
# bench-triton serves the INT8 ONNX with a real Triton server (PyTriton) and times it from
# the client at concurrency 1, 4 and 16.
triton: $(DEPLOYED) | $(ENGINE_READY)
	$(ENGINE_PY) -m pipeline triton $(ARGS) --target $(TARGET)
bench-triton: $(MODELS) | $(READY)
	$(PY) -m pipeline triton $(ARGS) --target cpu
	$(PY) -m pipeline bench-triton $(ARGS)

# --- DeepStream: nvinfer config, the models with normalisation folded in, and their engine,
# built on the machine that runs them (README, DeepStream); a TARGET change needs make -B
deepstream: $(B)/deepstream/deepstream.json
$(B)/deepstream/deepstream.json: $(MODELS) | $(ENGINE_READY)
	$(ENGINE_PY) -m pipeline deepstream $(ARGS) --target $(TARGET)

# --- regression reports: history in build/reports/history.sqlite -------------------------
bench: $(EVALUATED) | $(ENGINE_READY)
	$(ENGINE_PY) -m pipeline bench $(ARGS) --target $(TARGET)
	$(if $(filter cpu,$(TARGET)),$(MAKE) --no-print-directory bench-triton)

# NVIDIA's Polygraphy runs our engine, its own build of the ONNX and ONNX Runtime side by side
crosscheck: $(DEPLOYED) | $(ENGINE_READY)
	$(ENGINE_PY) -m pipeline crosscheck $(ARGS) --target $(TARGET)

report: $(EVALUATED) $(CHOSEN) | $(ENGINE_READY)
	$(ENGINE_PY) -m pipeline report $(ARGS) --target $(TARGET) $(if $(ACCEPT),--accept) \
	    $(if $(ACCEPT_REGRESSION),--accept-regression) $(if $(BASELINE),--baseline $(BASELINE))

# --- the degradation experiment (plain vs residual), default data: the shared Imagenette --
EXPERIMENT_DATA ?= $(or $(DATA),../shared/data/imagenette)
experiment-degradation: | $(READY)
	$(PY) -m pipeline experiment-degradation --config configs/degradation.toml --run degradation \
	    --data $(EXPERIMENT_DATA) $(SET)

targets: | $(READY)
	$(PY) -m pipeline targets

# --- the device's environment ------------------------------------------------------------
# JetPack's Python with the system's TensorRT and OpenCV (JetPack's, with GStreamer) through
# system site packages (SYSTEM_SITE adds folders, e.g. JetPack's dist-packages for another
# Python), plus only what deployment needs: no torch, no NNCF, no ONNX Runtime. pycuda has
# no aarch64 wheel: it is compiled here against CUDA (nvcc on PATH, CUDA's headers/libraries).
SYSTEM_SITE ?=
CUDA_HOME ?= /usr/local/cuda
setup-device: $(DEVICE_VENV)/.installed
$(DEVICE_VENV)/.installed: requirements-device.txt
	$(DEVICE_PYTHON) -m venv --system-site-packages $(DEVICE_VENV)
	$(if $(SYSTEM_SITE),printf '%s\n' $(abspath $(SYSTEM_SITE)) > "$$($(DEVICE_PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/system-site.pth")
	$(DEVICE_PY) -m pip install --disable-pip-version-check -q -r requirements-device.txt
	$(MAKE) --no-print-directory device-pycuda
	@$(DEVICE_PY) -c "import tensorrt" 2>/dev/null || echo "note: TensorRT is not importable in $(DEVICE_VENV); JetPack installs it (sudo apt install nvidia-jetpack)"
	@$(DEVICE_PY) -c "import cv2" 2>/dev/null || echo "note: OpenCV is not importable in $(DEVICE_VENV); JetPack installs it (sudo apt install nvidia-opencv)"
	touch $@

# pycuda: the one installed (JetPack's, or a simulation's), else compiled against CUDA with
# nvcc on PATH and CUDA's headers and libraries, and built against the venv's own NumPy (no
# build isolation: its newest NumPy makes a module NumPy 1.x cannot load). PIP_PYCUDA adds
# pip options (e.g. --no-index --find-links DIR on a device without a network).
PIP_PYCUDA ?=
device-pycuda:
	@if $(DEVICE_PY) -c "import pycuda.driver" 2>/dev/null; then \
	    echo "pycuda: $$($(DEVICE_PY) -c 'import os, pycuda; print(os.path.dirname(pycuda.__file__))')"; \
	elif [ -x "$(CUDA_HOME)/bin/nvcc" ]; then \
	    echo "pycuda: compiling $(PYCUDA) against $(CUDA_HOME) (no aarch64 wheel exists; minutes on a Jetson)"; \
	    $(DEVICE_PY) -c "import setuptools, wheel" 2>/dev/null || $(DEVICE_PY) -m pip install -q setuptools wheel; \
	    PATH="$(CUDA_HOME)/bin:$$PATH" CUDA_ROOT="$(CUDA_HOME)" CPATH="$(CUDA_HOME)/include" \
	    LIBRARY_PATH="$(CUDA_HOME)/lib64:$(CUDA_HOME)/lib64/stubs" \
	    $(DEVICE_PY) -m pip install --disable-pip-version-check -q --no-build-isolation $(PIP_PYCUDA) "$(PYCUDA)"; \
	else \
	    echo "error: pycuda must be compiled against CUDA and $(CUDA_HOME)/bin/nvcc is missing: install JetPack's CUDA (sudo apt install nvidia-jetpack) or give CUDA_HOME=<folder>" >&2; exit 2; \
	fi

# The device journey in a simulated JetPack: JetPack 6 (Orin Nano, Python 3.10, TensorRT
# 10.3) and JetPack 5 (Xavier NX, Python 3.8, TensorRT 8.5), each in a fresh venv made by
# setup-device with the TensorRT emulator of tests/emulator standing in for JetPack's
# TensorRT and pycuda, on a copy of this tree, from the bundle this machine packs.
SIM_BOARDS ?= orin-nano xavier-nx
device-sim: $(B)/bundle-jetson.tar.gz | $(READY)
	$(PY) tests/sim/device_sim.py --bundle $(B)/bundle-jetson.tar.gz --out build/device-sim $(SIM_BOARDS)

test: $(READY)
	$(PY) -m pytest -q tests

help: | $(READY)
	$(PY) -m pipeline --help

clean:
	rm -rf build
