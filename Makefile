# Burrow: build, install, test. Run as root on Debian 12 (see README.md).
PREFIX      ?= /usr/local
DESTDIR     ?=
BINDIR      ?= $(PREFIX)/bin
LIBEXECDIR  ?= $(PREFIX)/libexec/burrow
DBUS_SYSTEM_CONF_DIR     ?= /usr/share/dbus-1/system.d
DBUS_SYSTEM_SERVICES_DIR ?= /usr/share/dbus-1/system-services
POLKIT_ACTIONS_DIR       ?= /usr/share/polkit-1/actions
POLKIT_RULES_DIR         ?= /etc/polkit-1/rules.d
SYSTEMD_UNIT_DIR         ?= /lib/systemd/system
CARGO       ?= cargo
PROFILE     ?= release
HELPERS     := idmapd devd mountd
TARGET_DIR  := target/$(if $(filter dev,$(PROFILE)),debug,$(PROFILE))

.PHONY: bench-pods bench-system all build install install-files uninstall run test test-clean bench bench-runtimes deps lint clean

all: build

# The product's binaries only (the test crate's need a protobuf compiler for the CRI client).
build:
	$(CARGO) build $(foreach p,runtime-cli idmapd devd mountd,-p burrow-$(p)) --bins --profile $(PROFILE)

# System packages the tests and helpers need (Debian 12).
deps:
	./.ci/deps.sh

install: build install-files

# What `install` copies, from an existing build (PROFILE=dev for target/debug).
install-files:
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(LIBEXECDIR)
	install -m 0755 $(TARGET_DIR)/burrow $(DESTDIR)$(BINDIR)/burrow
	for h in $(HELPERS); do install -m 0755 $(TARGET_DIR)/burrow-$$h $(DESTDIR)$(LIBEXECDIR)/burrow-$$h; done
	install -d $(DESTDIR)$(DBUS_SYSTEM_CONF_DIR) $(DESTDIR)$(DBUS_SYSTEM_SERVICES_DIR) \
		$(DESTDIR)$(POLKIT_ACTIONS_DIR) $(DESTDIR)$(POLKIT_RULES_DIR) $(DESTDIR)$(SYSTEMD_UNIT_DIR)
	install -m 0644 dbus-policy/org.burrow.conf $(DESTDIR)$(DBUS_SYSTEM_CONF_DIR)/org.burrow.conf
	for h in $(HELPERS); do \
		svc=$$(grep -l "burrow-$$h\$$" dbus-policy/*.service); \
		sed 's|@LIBEXECDIR@|$(LIBEXECDIR)|' $$svc > $(DESTDIR)$(DBUS_SYSTEM_SERVICES_DIR)/$$(basename $$svc); \
		sed 's|@LIBEXECDIR@|$(LIBEXECDIR)|' systemd-units/burrow-$$h.service > $(DESTDIR)$(SYSTEMD_UNIT_DIR)/burrow-$$h.service; \
	done
	install -m 0644 dbus-policy/org.burrow.policy $(DESTDIR)$(POLKIT_ACTIONS_DIR)/org.burrow.policy
	install -m 0644 dbus-policy/50-burrow.rules $(DESTDIR)$(POLKIT_RULES_DIR)/50-burrow.rules

uninstall:
	rm -f $(DESTDIR)$(BINDIR)/burrow
	for h in $(HELPERS); do \
		rm -f $(DESTDIR)$(LIBEXECDIR)/burrow-$$h $(DESTDIR)$(SYSTEMD_UNIT_DIR)/burrow-$$h.service; \
	done
	rm -f $(DESTDIR)$(DBUS_SYSTEM_SERVICES_DIR)/org.burrow.*.service
	rm -f $(DESTDIR)$(DBUS_SYSTEM_CONF_DIR)/org.burrow.conf
	rm -f $(DESTDIR)$(POLKIT_ACTIONS_DIR)/org.burrow.policy $(DESTDIR)$(POLKIT_RULES_DIR)/50-burrow.rules
	-rmdir $(DESTDIR)$(LIBEXECDIR)

# The main job: install what is missing, build, install, start a system bus and polkitd if
# none runs, and run a demo system container.
run:
	./scripts/run-demo.sh

# The test command of README and CI: black-box tests against a private system bus and a real
# polkitd, plus the unit tests. Needs root.
test: deps
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace

# Removes the test users, group and polkit rule, and any harness leftovers. The polkit action file and
# example rule the harness installs are the shipped ones (`make uninstall` removes them).
test-clean:
	-userdel --remove burrow-alice 2>/dev/null
	-userdel --remove burrow-bob 2>/dev/null
	-userdel --remove burrow-carol 2>/dev/null
	-groupdel burrow 2>/dev/null
	rm -f /etc/polkit-1/rules.d/60-burrow-test-carol.rules
	rm -rf /tmp/burrow-test-bin /tmp/burrow-harness-*

bench:
	$(CARGO) build --workspace --bins --release
	BURROW_BIN_DIR=$(CURDIR)/target/release ./target/release/burrow-bench-idmap
	BURROW_BIN_DIR=$(CURDIR)/target/release ./target/release/burrow-bench-mount

# Pod start through containerd's CRI, handler burrow vs runc (a containerd of its own).
bench-pods:
	$(CARGO) build --workspace --bins --release
	BURROW_BIN_DIR=$(CURDIR)/target/release ./target/release/burrow-bench-pods

# burrow vs runc vs crun (and docker run with each, given DOCKER_HOST); needs `make run` first.
bench-runtimes:
	./bench/runtimes.sh

# Boot time, inner docker run latency and idle memory of systemd+Docker system containers;
# needs `make run` first and DOCKER_HOST pointing at a dockerd with runtime burrow.
bench-system:
	./bench/system.sh

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	# No dependency a crate does not use.
	command -v cargo-machete >/dev/null || $(CARGO) install --locked cargo-machete
	$(CARGO) machete

clean:
	$(CARGO) clean
