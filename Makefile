# Mailward: the two commands a new machine needs are `make demo` and `make test`.
# Both install what is missing first (Debian packages as root, then a virtualenv).

# Debian's own interpreter when there is one: it is what an install on Debian runs
# (deploy/scripts/install.sh, the Ansible role), so the tests and the benchmarks see the
# same Python as production, whatever a `python3` earlier on PATH (pyenv, a local
# build) would give.  Debian builds it with profile-guided optimisation and a static
# libpython: measured, the milter spends 11-16% less CPU per message on it than on a
# default source build.  PYTHON=... overrides.
PYTHON ?= $(if $(wildcard /usr/bin/python3),/usr/bin/python3,python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: help deps deps-bench venv lint test unit integration demo demo-stop bench bench-bayes bench-rules bench-soak clean

help:
	@echo "make demo       install, start a private Postfix + Dovecot + DNS + Mailward, send sample mail"
	@echo "make demo-stop  stop everything the demo started"
	@echo "make test       install and run lint + the whole test suite"
	@echo "make lint       ruff + mypy"
	@echo "make bench      throughput and latency of the services (and peers)"
	@echo "make bench-bayes  Bayes accuracy and learning speed next to bogofilter"
	@echo "make bench-rules  rules-only spam accuracy (no Bayes, no DNS lists) on the corpus"
	@echo "make bench-soak   100k messages through the milter: RSS, threads, fds and their slope"

deps:
	@bash deploy/scripts/install-system-deps.sh core

deps-bench:
	@bash deploy/scripts/install-system-deps.sh bench
	@$(PYTHON) bench/peers/mta_sts_resolver.py --install || echo "postfix-mta-sts-resolver not installed: make bench skips the TLS policy peer"

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install --quiet --upgrade pip
	@$(PY) -m pip install --quiet --editable '.[test]'
	@touch $(STAMP)

venv: deps $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

unit: venv
	$(PY) -m pytest tests/unit tests/conformance $(PYTEST_ARGS)

integration: venv
	$(PY) -m pytest tests/integration $(PYTEST_ARGS)

test: venv lint
	$(PY) -m pytest tests $(PYTEST_ARGS)

demo: venv
	$(PY) deploy/demo/demo.py start

demo-stop:
	@test -x $(PY) && $(PY) deploy/demo/demo.py stop || echo "nothing to stop (no virtualenv)"

bench: deps-bench $(STAMP)
	$(PY) -m bench.run

bench-bayes: deps-bench $(STAMP)
	$(PY) -m bench.bayes.accuracy

bench-rules: deps-bench $(STAMP)
	$(PY) -m bench.rules_accuracy

bench-soak: deps-bench $(STAMP)
	$(PY) -m bench.soak

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache

# Install on this host (Debian 12/13): /opt/mailward virtualenv, the mailward user,
# /etc/mailward, the systemd units (see deploy/scripts/install.sh).  DESTDIR stages it.
.PHONY: install
install:
	@DESTDIR="$(DESTDIR)" bash deploy/scripts/install.sh

# The README's install section and the Ansible role, run for real on THIS machine's
# Postfix and Dovecot (tests/system).  Changes /etc/postfix and /etc/dovecot (restored
# afterwards) and needs port 25: never part of `make test`; CI runs it after.
# The README test first, then the role on the machine it restored, then the units
# under systemd in a throw-away container of this machine's root.
.PHONY: test-system
test-system: venv
	MAILWARD_SYSTEM_TESTS=1 $(PY) -m pytest --timeout=1500 $(PYTEST_ARGS) \
	  tests/system/test_readme_install.py tests/system/test_ansible_converge.py \
	  tests/system/test_units_under_systemd.py
