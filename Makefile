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
APT_DEPS   := libomp-19-dev libpng-dev libjpeg62-turbo-dev zlib1g-dev python3-venv
BIN        := .build-omp/release

.PHONY: all setup build build-plain test test-omp test-plain demo bench fixtures clean

all: build

# Installs the Debian packages that are missing (root, or sudo when available).
setup:
	@missing=""; for p in $(APT_DEPS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

build: setup
	$(SWIFT) build -c release $(OMP_BUILD)

build-plain:
	$(SWIFT) build -c release

# The README's test command: the whole suite on the OpenMP build, then on the plain build.
test: setup test-omp test-plain

test-omp:
	BILRP_EXPECT_OPENMP=1 $(SWIFT) test -c release $(OMP_BUILD)

test-plain:
	BILRP_EXPECT_OPENMP=0 $(SWIFT) test -c release

# Regenerates the PyTorch fixtures (needs PyPI; the results are committed).
fixtures:
	python3 -m venv .venv-fixtures
	.venv-fixtures/bin/pip install -q "torch==2.13.0+cpu" numpy safetensors
	.venv-fixtures/bin/python scripts/make-fixtures.py

clean:
	rm -rf .build .build-omp
