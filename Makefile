# Thin on purpose: bootstrap system packages and the virtualenv, then hand over to Python.
# `make test` and `make run` work on a fresh Debian 12 machine as root, with nothing but Debian's
# own apt archive and the Python package index: `make run` installs only what it runs
# (redis-server, postfix), `make test` also the test tools (scripts/install-system-deps.sh).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SERVICES := common Receiver HttpReceiver Transformer Redis BackData PostfixLog MxServer
STAMP := $(VENV)/.installed

.PHONY: test run bench chaos lint typecheck unit deps run-deps sysdeps sysdeps-run clean

# pytest-xdist workers for `make test` (TEST_WORKERS=0: one process). Each test file stays on
# one worker and the e2e files sharing one stack stay together (tests/conftest.py), so
# module-scoped servers and that stack start once. 2 on the 2-core CI machine.
TEST_WORKERS ?= 2

test: deps
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy
	@# pytest exits 5 when it collected nothing: for us that is a broken suite, not a pass.
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile || { rc=$$?; [ $$rc -ne 5 ] || echo "make test: pytest collected no tests" >&2; exit $$rc; }

unit: deps
	$(PY) -m pytest tests/unit

lint: deps
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

run: run-deps
	$(PY) -m devstack

# The longer fault suite (`make test` runs a short one): a few thousand messages while every
# service is killed twice, Redis and PostfixLog stop gracefully, the webhook inbox is down a
# minute and the sink MX hangs; about 8-15 minutes. MANYCORE_CHAOS_MESSAGES sets how many.
# Then the Sentinel failover with 10,000 messages (about a minute and a half).
chaos: deps
	MANYCORE_CHAOS=1 $(PY) -m pytest -s tests/e2e/test_faults.py tests/integration/test_failover.py \
		tests/integration/test_redis_roles.py

# Not part of CI (minutes, and noisy machines); `make test` runs a quick smoke of it.
bench: deps
	$(PY) -m bench.transformer
	$(PY) -m bench.backdata
	$(PY) -m bench.ingest
	$(PY) -m bench.idempotency
	$(PY) -m bench.e2e
	$(PY) -m bench.growth
	$(PY) -m bench.retention
	$(PY) -m bench.feedback
	$(PY) -m bench.suppression
	$(PY) -m bench.rediscost

# Everything `make test` needs (and bench, chaos); `make run` needs less.
deps: sysdeps $(STAMP)

run-deps: sysdeps-run $(STAMP)

sysdeps:
	@bash scripts/install-system-deps.sh test

sysdeps-run:
	@bash scripts/install-system-deps.sh run

# Reinstall when a pin or a package definition changes.
$(STAMP): requirements.txt requirements-dev.txt constraints.txt $(addsuffix /pyproject.toml,$(SERVICES))
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt -c constraints.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-build-isolation --no-deps $(addprefix -e ./,$(SERVICES))
	touch $(STAMP)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis .run
