# The two quick-start commands. Each creates .venv/ and installs what it needs on first use
# (again only when pyproject.toml or constraints.txt change).
PYTHON ?= python3
VENV := .venv
INSTALLED := $(VENV)/.installed

.PHONY: demo test lint chromium services

demo: $(INSTALLED)
	$(VENV)/bin/tuner demo

test: $(INSTALLED) chromium services
	$(VENV)/bin/python -m pytest

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

$(INSTALLED): pyproject.toml constraints.txt
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "tuner needs Python 3.10+"'
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check \
		-c constraints.txt -e '.[dev,cluster]'
	touch $@
