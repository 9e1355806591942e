# Throttler — `make run` serves the whole system, `make test` passes the whole suite.
# Both create or update the virtualenv in .venv themselves.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# `make run` needs the service and its embedded Redis; `make test` adds the dev tools.
RUN_STAMP  := $(VENV)/.installed-run
TEST_STAMP := $(VENV)/.installed-test

.PHONY: run test test-valkey test-sentinel lint typecheck unit bench schema rls-stubs clean help audit

help:
	@echo "make run          start the API (+ in-process worker; embedded Redis unless REDIS_URL)"
	@echo "make test         lint, type-check and run the whole suite against a real Redis"
	@echo "make test-valkey  run the core suite against Valkey (the embedded server)"
	@echo "make audit        pip-audit the locked dependency set (.ci/audit)"
	@echo "make rls-stubs    regenerate api/rls/proto/rls_pb2*.py from rls.proto (committed; needs the dev extras)"
	@echo "make test-sentinel  only the Sentinel failover tests (primary, replica, 3 Sentinels; ~1 min)"
	@echo "make bench        run the benchmark (wrk, redis-benchmark, tests/benchmarks); writes bench/results.json"

$(RUN_STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[embedded]"
	@touch $(RUN_STAMP)

# The service with the dev tools and, beside it, the client distribution of
# clients/python (editable).
$(TEST_STAMP): pyproject.toml clients/python/pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev,embedded]" -e ./clients/python
	@touch $(TEST_STAMP) $(RUN_STAMP)

run: $(RUN_STAMP)
	$(BIN)/throttler serve

lint: $(TEST_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(TEST_STAMP)
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/pytest -q

test-valkey: $(TEST_STAMP)
	THROTTLER_TEST_SERVER=valkey $(BIN)/pytest -q tests/unit tests/integration

audit: $(TEST_STAMP)
	bash .ci/audit

# Also part of `make test`; THROTTLER_TEST_SERVER=valkey runs them on Valkey.
test-sentinel: $(TEST_STAMP)
	$(BIN)/pytest -q -m sentinel

bench: $(TEST_STAMP)
	@command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
	@command -v h2load >/dev/null || { apt-get update -qq && apt-get install -y -qq nghttp2-client; }
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .venv-audit .mypy_cache .ruff_cache .pytest_cache build *.egg-info

# The Envoy RLS stubs are committed (a plain `pip install -e .` needs no protoc); regenerate
# them after editing api/rls/proto/rls.proto.
rls-stubs: $(TEST_STAMP)
	$(BIN)/python -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. api/rls/proto/rls.proto
