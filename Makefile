# The two quick-start commands. Each creates .venv/ and installs what it needs on first use
# (again only when pyproject.toml or requirements.lock change), every package at the version
# requirements.lock pins: the versions the suite passed on.
PYTHON ?= python3
VENV := .venv
INSTALLED := $(VENV)/.installed
LOCK := requirements.lock
PIP_TOOLS := pip-tools==7.7.0

.PHONY: demo test test-quick test-latest lint lock chromium services

demo: $(INSTALLED)
	$(VENV)/bin/tuner demo

test: $(INSTALLED) chromium services
	$(VENV)/bin/python -m pytest

# The inner loop: the unit tier, without the tests that start a Ray, a server, a cluster or a
# browser or run whole studies (marked `integration`); a few minutes on 2 cores.
test-quick: $(INSTALLED)
	$(VENV)/bin/python -m pytest -m 'not integration and not gpu'

# The dashboard tests draw the report in a real Chromium, a system package: installed here when
# missing (Debian, as root), never by a test. Quick when it is already on PATH.
chromium:
	@if command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then \
		exit 0; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "Installing Chromium with apt-get (the dashboard tests draw in it)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -qq chromium >/dev/null \
		|| echo "warning: apt-get could not install chromium, so the dashboard tests will" \
			"fail; install it yourself or put a chromium on PATH" >&2; \
	else \
		echo "warning: Chromium is not installed, so the dashboard tests will fail; install it" \
			"(Debian/Ubuntu: sudo apt-get install chromium) or put a chromium on PATH" >&2; \
	fi

# The stack tests run a real PostgreSQL (from the pgserver wheel), which refuses to run as root:
# as root, create the unprivileged system user it runs as. Never done by a test.
PG_USER := tuner-pg
services:
	@if [ "$$(id -u)" = 0 ] && ! id $(PG_USER) >/dev/null 2>&1; then \
		echo "Creating the system user $(PG_USER) (PostgreSQL refuses to run as root)"; \
		useradd --system --no-create-home --shell /usr/sbin/nologin $(PG_USER); \
	fi

lint: $(INSTALLED)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

$(INSTALLED): pyproject.toml $(LOCK)
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "tuner needs Python 3.11+"'
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check \
		-c $(LOCK) -e '.[dev,cluster]'
	touch $@

# Re-resolve requirements.lock from pyproject.toml (both extras) with pip-tools, in a venv of its
# own so that its packages never reach .venv/. The torch pin loses its local label (+cpu): here
# torch==2.13.0 takes the CPU wheel on disk, on a PyPI-only machine the CUDA build of the same
# release. The lock is resolved for Linux x86_64 and Python 3.11 (these machines and CI). Then
# `make test`.
lock:
	test -x .venv-lock/bin/pip-compile || { $(PYTHON) -m venv .venv-lock \
		&& .venv-lock/bin/python -m pip install --quiet --disable-pip-version-check $(PIP_TOOLS); }
	CUSTOM_COMPILE_COMMAND='make lock' .venv-lock/bin/pip-compile --quiet --upgrade \
		--strip-extras --allow-unsafe --no-emit-index-url --no-emit-find-links \
		--extra dev --extra cluster --output-file $(LOCK) pyproject.toml
	sed -i 's/^torch==\(.*\)+cpu$$/torch==\1/' $(LOCK)

# The early warning, not part of CI: the newest versions that pyproject.toml's windows allow, in
# a venv of their own (.venv-latest/, made anew each time), then the whole suite.
test-latest: chromium services
	rm -rf .venv-latest && $(PYTHON) -m venv .venv-latest
	.venv-latest/bin/python -m pip install --quiet --disable-pip-version-check \
		--upgrade --upgrade-strategy eager -e '.[dev,cluster]'
	.venv-latest/bin/python -m pip list --format=freeze > .venv-latest/versions.txt
	.venv-latest/bin/python -m pytest --ignore=tests/test_lock.py
