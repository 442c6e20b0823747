# lesionlite — the two entry points the README promises: `make demo` and `make test`.
# Both create .venv (Python 3.11), install pinned dependencies and run; re-runs reuse the venv.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
DEMO_RUN ?= runs/demo
DEMO_EXPORT ?= artifacts/demo
export PYTHONUNBUFFERED := 1

.PHONY: demo test test-fast lint install install-test browser clean help arm-board arm-board-down

help:
	@echo "make demo   - install, train a small student on the embedded default data (CPU), export it, bench it"
	@echo "make test   - install and run the test suite (everything CI runs)"
	@echo "make lint   - ruff check . (make test runs it first)"
	@echo "make test-fast - the suite without tests marked slow (real conversions, training runs, the board, fuzzers)"
	@echo "make arm-board      - build (cached) and start the emulated aarch64 board: qemu-aarch64 + arm64 Python + loopback sshd"
	@echo "make arm-board-down - stop the board's sshd"

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(VENV)/.installed-all: pyproject.toml | $(VENV)/bin/python
	$(PIP) install -q -e '.[all]'
	touch $@

$(VENV)/.installed-dev: pyproject.toml $(VENV)/.installed-all
	$(PIP) install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed-all
install-test: $(VENV)/.installed-dev

# Headless Chromium for the web-page test (Debian package); best effort, the test says why it skips.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || echo "note: chromium not installed; the browser test will be skipped"; }

demo: install
	$(PY) -m distill --demo --out $(DEMO_RUN)
	$(PY) -m export --checkpoint $(DEMO_RUN) --format all --precision fp32,fp16,int8 --out $(DEMO_EXPORT)
	$(PY) -m mobile_benchmarks $(DEMO_EXPORT) --threads 1,2 --runs 50 --warmup 5 --out $(DEMO_EXPORT)/bench
	@echo ""
	@echo "demo artifacts:"
	@echo "  trained student + metrics + plots : $(DEMO_RUN)/"
	@echo "  exported models + export report   : $(DEMO_EXPORT)/export_report.md"
	@echo "  benchmark report                  : $(DEMO_EXPORT)/bench/"
	@echo "  serve it with                     : $(VENV)/bin/lesionlite serve $(DEMO_EXPORT)"

# The linter first (rules and why in pyproject.toml [tool.ruff]): seconds, and it fails before a long suite does.
lint: install-test
	$(PY) -m ruff check .

test: install-test browser lint
	OMP_NUM_THREADS=2 $(PY) -m pytest -q

# The quick loop while editing: deselects `@pytest.mark.slow` (CI and `make test` run them).
test-fast: install-test lint
	OMP_NUM_THREADS=2 $(PY) -m pytest -q -m "not slow"

# Emulated aarch64 board for `lesionlite bench MODEL_DIR --target board` (ARM-kernel outputs; times are an emulator's).
# Built into $${LESIONLITE_CACHE:-~/.cache/lesionlite}/board-aarch64 from Debian + PyPI (~135 MB download, ~370 MB on disk).
arm-board: install
	$(PY) -m mobile_benchmarks board up

arm-board-down:
	$(PY) -m mobile_benchmarks board down

clean:
	rm -rf runs artifacts .pytest_cache
