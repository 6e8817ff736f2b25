# Two commands matter: `make run` and `make test`. Both install into .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
NODE_STAMP := node_modules/.installed-$(shell cat package.json package-lock.json | cksum | cut -d' ' -f1)

.PHONY: run test lint bench clean system-deps
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_PACKAGES := redis-server chromium espeak-ng sox  # sox and espeak-ng make the speech the tests measure

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $@

# wscat (the README's recipes, run by the tests) and the AsyncAPI schemas, from the npm registry.
$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --silent
	touch $@

run: $(STAMP)
	$(PY) -m server

lint: $(STAMP)
	$(VENV)/bin/ruff check server actors tests bench ami
	$(VENV)/bin/mypy

# What the tests need from the system: a real redis-server, Chromium for the page, espeak-ng and sox for speech.
system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; \
	fi

# The unit tier first (no Ray, seconds), then everything on real Ray, uvicorn, Redis and Chromium.
test: $(STAMP) $(NODE_STAMP) system-deps lint
	$(PY) -m pytest tests/unit
	$(PY) -m pytest --ignore=tests/unit

bench: $(STAMP) system-deps
	$(PY) -m pip install --quiet -e '.[test,bench]'
	-$(PY) -m bench soak --minutes 10  # writes bench/SOAK.md (exit 1 if a job was lost or ran twice)
	$(PY) -m bench

clean:
	rm -rf $(VENV) node_modules .pytest_cache .mypy_cache .ruff_cache
