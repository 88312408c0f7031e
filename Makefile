# mailstead: `make run` serves a dev instance, `make test` runs the whole suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
DEV_DIR ?= dev-data
DEV_DOMAIN ?= example.test
DEV_USER ?= demo@$(DEV_DOMAIN)
BIN := $(VENV)/bin

# Debian packages the end-to-end tests drive (installed by `make test` when run as root).
# Postfix is preseeded to "No configuration" and service starts are blocked while installing
# (policy-rc.d), so no system MTA starts on port 25; the tests run private instances.
TEST_DEBS := swaks libnet-ssleay-perl libio-socket-ssl-perl libauthen-sasl-perl mutt tmux postfix \
  isync offlineimap3 getmail6 fetchmail pebble chromium chromium-driver fonts-dejavu-core fail2ban rspamd redis-server \
  ansible ansible-lint debootstrap debian-archive-keyring ruby systemd dovecot-imapd dovecot-pop3d

.PHONY: run test unit lint bench deps venv clean crashtest soak

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@# Debian and Ubuntu ship venv support as a separate package.
	@if ! $(PYTHON) -c 'import ensurepip' 2>/dev/null && [ "$$(id -u)" = 0 ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    python3-venv >/dev/null; \
	fi
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test]'
	@touch $@

run: venv
	@if [ ! -f $(DEV_DIR)/mailstead.toml ]; then \
	  $(BIN)/mailstead init --dev --data-dir $(DEV_DIR) --domain $(DEV_DOMAIN) \
	    --hostname mail.$(DEV_DOMAIN) && \
	  $(BIN)/python -c 'import secrets; print(secrets.token_urlsafe(12))' \
	    > $(DEV_DIR)/demo-password && chmod 600 $(DEV_DIR)/demo-password && \
	  $(BIN)/mailstead -c $(DEV_DIR)/mailstead.toml user add $(DEV_USER) --admin \
	    --password-stdin < $(DEV_DIR)/demo-password; \
	fi
	@echo "---------------------------------------------------------------"
	@echo " mailstead dev instance in $(DEV_DIR)"
	@echo " demo login: $(DEV_USER)  password: $$(cat $(DEV_DIR)/demo-password)"
	@$(BIN)/mailstead -c $(DEV_DIR)/mailstead.toml config check | sed 's/^/ /'
	@echo " admin panel: https://127.0.0.1:8443/ (self-signed certificate; log in as the demo user)"
	@echo " try: swaks --server 127.0.0.1:2525 --to $(DEV_USER) --tls"
	@echo "---------------------------------------------------------------"
	exec $(BIN)/mailstead -c $(DEV_DIR)/mailstead.toml run

deps:
	@if [ "$$(id -u)" = 0 ]; then \
	  missing=$$(for p in $(TEST_DEBS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	  if [ -n "$$missing" ]; then \
	    echo "installing Debian packages for the e2e tests:" $$missing; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections; \
	    made_policy=; if [ ! -e /usr/sbin/policy-rc.d ]; then \
	      printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && \
	      chmod 755 /usr/sbin/policy-rc.d && made_policy=1; \
	    fi; \
	    apt-get update -qq && \
	    apt-get install -y -qq --no-install-recommends --no-remove $$missing >/dev/null; \
	    rc=$$?; [ -z "$$made_policy" ] || rm -f /usr/sbin/policy-rc.d; [ $$rc = 0 ] || exit $$rc; \
	  fi; \
	else \
	  echo "not root: skipping Debian packages ($(TEST_DEBS)); their tests skip outside CI"; \
	fi

test: venv deps
	$(BIN)/python -m pytest -q

unit: venv
	$(BIN)/python -m pytest -q tests/unit

lint: venv
	$(BIN)/ruff check .

bench: venv deps
	$(BIN)/pip install -q --disable-pip-version-check -e '.[bench]'
	$(BIN)/python -m bench $(BENCH_ARGS)

# Crash test (tests/stress/crash.py): 20 clients, 2,000 messages, kill -9 three times; nothing
# that got 250 may be lost or doubled. `make test` runs a small one (tests/e2e/test_crash.py).
crashtest: venv
	$(BIN)/python -m tests.stress.crash --clients 20 --messages 2000 --kills 3

# Load/soak (tests/stress/soak.py): 200 SMTP sessions and 1,000 IMAP IDLE sessions for
# SOAK_SECONDS (default 600): no errors, nothing lost, the server's memory flat.
soak: venv
	$(BIN)/python -m tests.stress.soak --seconds $(or $(SOAK_SECONDS),600)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
