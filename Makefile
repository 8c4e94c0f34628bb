# cdrd: `make run` starts it on the embedded store; `make test` installs
# everything the tests need (system packages included) and runs them all.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
CONFIG ?= etc/cdrd.toml

# Debian packages the integration tests start as real peers.
SYSTEM_PACKAGES := freeradius freeradius-utils rsyslog chromium

.PHONY: run test unit integration venv system-deps bench clean

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]' --config-settings editable_mode=compat
	touch $@

venv: $(VENV)/.installed

system-deps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
	@# the tests start their own FreeRADIUS and rsyslog; the distribution's must not hold their ports
	-@systemctl disable --now freeradius rsyslog >/dev/null 2>&1 || true

run: venv
	mkdir -p var
	$(VENV)/bin/twistd -n cdrd --config $(CONFIG)

test: system-deps venv
	$(PY) -m pytest tests

unit: venv
	$(PY) -m pytest tests -m "not integration"

integration: system-deps venv
	$(PY) -m pytest tests -m integration

bench: venv
	$(PY) bench/ingest.py
	$(PY) bench/calls.py

clean:
	rm -rf $(VENV) var build *.egg-info .pytest_cache .hypothesis test-artifacts
