# The two commands a fresh Debian machine needs: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Debian packages the integration tests use (real tools, not mocks).
# postfix: tests/deploy runs the Postfix set-up of docs/deployment.md (a private
# instance in a temporary directory; the system's postfix service need not run).
# libnet-ssleay-perl: swaks's STARTTLS (a Recommends, skipped by --no-install-recommends).
TEST_DEBS := libreoffice-writer-nogui libreoffice-calc-nogui libreoffice-impress-nogui python3-uno swaks libnet-ssleay-perl ghostscript qpdf poppler-utils dovecot-imapd fonts-dejavu-core fonts-wqy-zenhei s-nail libtiff-tools systemd postfix chromium postgresql-15
# The benchmarks also compare against Postfix (smtp-source) and ImageMagick.
BENCH_DEBS := $(TEST_DEBS) imagemagick
# Two workers (pytest-xdist): the tests use their own tmp_path, ports and
# Dovecot/Postfix instances, so they run in parallel.
PYTEST_ARGS ?= -n 2

.PHONY: demo test check lock bench venv test-deps bench-deps fonts clean

# Dependencies come from requirements/lock.txt, pinned with hashes (the
# `test` extra included); docs/development.md says how to refresh it.
# check_lock.py stops here when pyproject.toml lists what the lock lacks.
$(VENV)/.installed: pyproject.toml requirements/lock.txt
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "gatewayd needs Python 3.11 or newer")'
	$(PYTHON) requirements/check_lock.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --require-hashes -r requirements/lock.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

# Refresh the lock after pyproject.toml changed (docs/development.md):
# keeps the pins that still fit and adds what is new;
# `make lock LOCK_ARGS=--upgrade` moves every pin to the newest release.
LOCK_ARGS ?=
lock:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q pip-tools
	$(VENV)/bin/pip-compile -q --generate-hashes --extra test --no-emit-index-url --no-emit-find-links --strip-extras $(LOCK_ARGS) --output-file requirements/lock.txt pyproject.toml

venv: $(VENV)/.installed

demo: $(VENV)/.installed fonts
	$(VENV)/bin/gatewayd demo

# Installs only what is missing; needs root (CI and the dev machines run as root).
define install_debs
	@missing=$$(for p in $(1); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" != 0 ]; then echo "missing Debian packages: $$missing (run as root, or install them)"; exit 1; fi; \
		echo "installing: $$missing"; \
		echo 'postfix postfix/main_mailer_type select No configuration' | debconf-set-selections; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
endef

fonts:
	$(call install_debs,fonts-dejavu-core fonts-wqy-zenhei)

test-deps:
	$(call install_debs,$(TEST_DEBS))

bench-deps:
	$(call install_debs,$(BENCH_DEBS))

# Static checks (docs/development.md): lint, types, and the import layers of
# docs/architecture.md. `make test` runs them before the tests. tests/ and
# bench/ get ruff's unused-import, redefinition and unused-local rules only.
check: $(VENV)/.installed
	$(VENV)/bin/ruff check gatewayd
	$(VENV)/bin/ruff check --select F401,F811,F841 tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache

test: $(VENV)/.installed test-deps
	$(MAKE) --no-print-directory check
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(VENV)/.installed bench-deps
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache .import_linter_cache .grimp_cache
