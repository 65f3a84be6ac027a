# The two commands a fresh Debian machine needs: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Debian packages the integration tests use (real tools, not mocks).
# postfix: tests/deploy runs the Postfix set-up of docs/deployment.md (a private
# instance in a temporary directory; the system's postfix service need not run).
# libnet-ssleay-perl: swaks's STARTTLS (a Recommends, skipped by --no-install-recommends).
TEST_DEBS := libreoffice-writer-nogui libreoffice-calc-nogui libreoffice-impress-nogui python3-uno swaks libnet-ssleay-perl ghostscript qpdf poppler-utils dovecot-imapd fonts-dejavu-core s-nail libtiff-tools systemd postfix
# The benchmarks also compare against Postfix (smtp-source) and ImageMagick.
BENCH_DEBS := $(TEST_DEBS) imagemagick
PYTEST_ARGS ?=

.PHONY: demo test bench venv test-deps bench-deps fonts clean

$(VENV)/.installed-%: pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "gatewayd needs Python 3.11 or newer")'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[$*]'
	touch $@

venv: $(VENV)/.installed-test

demo: $(VENV)/.installed-test fonts
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
	$(call install_debs,fonts-dejavu-core)

test-deps:
	$(call install_debs,$(TEST_DEBS))

bench-deps:
	$(call install_debs,$(BENCH_DEBS))

test: $(VENV)/.installed-test test-deps
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(VENV)/.installed-test bench-deps
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
