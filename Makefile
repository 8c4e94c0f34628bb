# cdrd: `make run` starts it on the embedded store; `make test` installs
# everything the tests need (system packages included) and runs them all.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
CONFIG ?= etc/cdrd.toml
# make run GATEWAY=tcp:7000 WEB=tcp:7080: override the config's listeners
GATEWAY ?=
WEB ?=

# Debian packages the integration tests start as real peers.
SYSTEM_PACKAGES := freeradius freeradius-utils freeradius-postgresql rsyslog chromium postgresql haproxy

.PHONY: run test unit integration lint venv system-deps postgresql bench clean

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]' --config-settings editable_mode=compat
	@# twisted/plugins/dropin.cache now, not at the first `make run`
	$(PY) -c 'from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))'
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
	@# the tests start their own FreeRADIUS, rsyslog and HAProxy; the distribution's must not hold their ports
	-@systemctl disable --now freeradius rsyslog haproxy >/dev/null 2>&1 || true
	@$(MAKE) --no-print-directory postgresql

# The PostgreSQL tests need a server on 127.0.0.1:5432 that lets user
# postgres in without a password from loopback (trust).  On a test machine
# without one: start Debian's cluster (no systemd needed) and add the trust
# line for 127.0.0.1 at the top of its pg_hba.conf.
PG_CHECK := psql -w -h 127.0.0.1 -p 5432 -U postgres -d postgres -Atqc 'SELECT 1'
postgresql:
	@if $(PG_CHECK) >/dev/null 2>&1; then exit 0; fi; \
	ver=$$(pg_lsclusters -h 2>/dev/null | awk '$$2 == "main" && $$3 == 5432 {print $$1; exit}'); \
	if [ -z "$$ver" ]; then echo "no PostgreSQL cluster 'main' on port 5432 (pg_lsclusters)"; exit 1; fi; \
	hba=/etc/postgresql/$$ver/main/pg_hba.conf; \
	grep -Eq '^host[[:space:]]+all[[:space:]]+all[[:space:]]+127\.0\.0\.1/32[[:space:]]+trust' $$hba \
	  || sed -i '1i host all all 127.0.0.1/32 trust  # added by cdrd make test' $$hba; \
	if pg_isready -q -h 127.0.0.1 -p 5432; then pg_ctlcluster --skip-systemctl-redirect $$ver main reload; \
	else pg_ctlcluster --skip-systemctl-redirect $$ver main start; fi; \
	for i in $$(seq 30); do $(PG_CHECK) >/dev/null 2>&1 && exit 0; sleep 1; done; \
	echo "PostgreSQL does not let postgres in on 127.0.0.1:5432"; exit 1

# everything it writes is under var/ (database, pid file); no bytecode in the checkout
run: venv
	mkdir -p var
	PYTHONDONTWRITEBYTECODE=1 $(VENV)/bin/twistd -n --pidfile=var/twistd.pid cdrd --config $(CONFIG) \
	  $(if $(GATEWAY),--gateway-endpoint $(GATEWAY)) $(if $(WEB),--web-endpoint $(WEB))

test: system-deps venv lint
	$(PY) -m pytest tests

lint: venv
	$(VENV)/bin/ruff check cdrd tests bench twisted

unit: venv
	$(PY) -m pytest tests -m "not integration"

integration: system-deps venv
	$(PY) -m pytest tests -m integration

bench: venv
	$(PY) bench/ingest.py
	$(PY) bench/capacity.py --mode sqlite --closed --window 256 --floor
	$(PY) bench/capacity.py --mode sqlite --rates 500,1000,2000,3000
	$(PY) bench/capacity.py --mode full --rates 500,1000,2000
	$(PY) bench/capacity.py --mode postgresql --rates 500,1000,2000
	$(PY) bench/spool.py
	$(PY) bench/ingest_cpu.py
	$(PY) bench/budgets.py
	$(PY) bench/calls.py
	$(PY) bench/radius.py
	$(PY) bench/report.py
	$(PY) bench/flood_log.py
	$(PY) bench/nodes.py
	$(PY) bench/wal_pages.py
	$(PY) bench/events_reads.py
	$(PY) bench/migration_11.py

clean:
	rm -rf $(VENV) var build *.egg-info .pytest_cache .hypothesis test-artifacts
