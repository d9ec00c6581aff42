# nova-libvirt-checks: set-up, demo, tests, sandbox, install, bench.
# Every target installs what it needs on a fresh Debian 12 machine (as root).
SHELL := /bin/bash
PYTHON_SYS := /usr/bin/python3
VENV := $(CURDIR)/.venv
PY := $(VENV)/bin/python
NODE := $(CURDIR)/tests/data/nova-node.xml
APT_INSTALL := DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=900 install -y -qq --no-install-recommends
# to build libvirt-python and run the checks on libvirt's test driver
APT_BUILD := gcc pkg-config libvirt-dev python3-dev python3-venv libvirt-clients
# the real services the tests start: libvirtd + QEMU guests, the cloud's MariaDB and RabbitMQ,
# Icinga 2, Nagios 4, NRPE
APT_SERVICES := libvirt-daemon-system qemu-system-x86 qemu-utils busybox-static cpio iproute2 \
	mariadb-server rabbitmq-server icinga2 icinga2-bin icinga2-common nagios4-core \
	nagios-nrpe-server nagios-nrpe-plugin monitoring-plugins-basic rrdtool librrds-perl \
	curl jq procps bc openssl util-linux php-cli faketime strace nbdkit
# to build the Debian packages (make deb; tests/test_debian.py builds and installs them)
APT_DEB := build-essential debhelper dh-python python3-all python3-setuptools lintian
# a monitoring server's pip install without a compiler: Debian's bindings in a venv made with
# --system-site-packages (README's Installing; tests/test_install_server.py)
APT_SERVER_PIP := python3-libvirt python3-lxml python3-venv
# make deb: the packages land here, built in a copy of the tree (no build files in the checkout)
DEBDIR ?= $(CURDIR)/build/deb
PYTEST_ARGS ?=
# where `make install` puts the venv and the plugin links (NRPE's default plugin dir)
PREFIX ?= /opt/nova-libvirt-checks
PLUGINDIR ?= /usr/lib/nagios/plugins
# make install writes the NRPE commands for the checks in PLUGINDIR here (copy it to
# /etc/nagios/nrpe.d/); the Debian package installs it there itself
NRPE_CFG ?= $(PREFIX)/etc/nrpe.d/nova-libvirt-checks.cfg

.PHONY: all demo test venv apt-build apt-services apt-deb apt-server-pip deb sandbox sandbox-stop install nrpe-cfg bench clean

all: venv

apt-build:
	@dpkg -s $(APT_BUILD) >/dev/null 2>&1 || { apt-get -o DPkg::Lock::Timeout=900 update -qq && $(APT_INSTALL) $(APT_BUILD) >/dev/null; }

apt-services: apt-build
	@dpkg -s $(APT_SERVICES) >/dev/null 2>&1 || { apt-get -o DPkg::Lock::Timeout=900 update -qq && $(APT_INSTALL) $(APT_SERVICES) >/dev/null; }

apt-deb:
	@dpkg -s $(APT_DEB) >/dev/null 2>&1 || { apt-get -o DPkg::Lock::Timeout=900 update -qq && $(APT_INSTALL) $(APT_DEB) >/dev/null; }

apt-server-pip:
	@dpkg -s $(APT_SERVER_PIP) >/dev/null 2>&1 || { apt-get -o DPkg::Lock::Timeout=900 update -qq && $(APT_INSTALL) $(APT_SERVER_PIP) >/dev/null; }

$(PY): setup.py constraints.txt | apt-build
	test -x $(PY) || $(PYTHON_SYS) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[test,nova]'
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt ruff
	touch $(PY)

venv: $(PY)

demo: venv
	@echo '$$ ./checks/check_libvirtd -U test:///default'
	@./checks/check_libvirtd -U test:///default; echo "(exit $$?)"
	@echo '$$ ./checks/check_libvirtd -U test://$(NODE) --domains-warning paused=0 --domains-critical crashed=0'
	@./checks/check_libvirtd -U test://$(NODE) --domains-warning paused=0 --domains-critical crashed=0; echo "(exit $$?)"
	@echo '$$ ./checks/check_libvirt_instances -U test://$(NODE) -w disk_write_bytes=20K -c cpu=95 --tenant acme'
	@./checks/check_libvirt_instances -U test://$(NODE) -w disk_write_bytes=20K -c cpu=95 --tenant acme; echo "(exit $$?)"
	@echo '$$ ./checks/check_libvirt_instances -U test://$(NODE) --perfdata totals --top 4'
	@./checks/check_libvirt_instances -U test://$(NODE) --perfdata totals --top 4; echo "(exit $$?)"

# every service is installed and started here: a skip is a failure (tests/conftest.py)
test: apt-services apt-deb apt-server-pip venv
	$(PY) -m ruff check lib tests checks bench
	NLC_REQUIRE_SERVICES=1 $(PY) -m pytest $(PYTEST_ARGS)

sandbox: apt-services venv
	tests/harness/libvirt/start
	tests/harness/cloud/start
	@. $${NLC_CLOUD_DIR:-/var/tmp/nlc-test/cloud}/openrc; set -x; \
	./checks/check_libvirtd; \
	./checks/check_libvirt_instances -w disk_write_bytes=100K -c cpu=90; \
	./checks/check_nova_hypervisors -w vcpus=80% -c vcpus=95%; true

sandbox-stop:
	-tests/harness/cloud/stop
	-tests/harness/libvirt/stop

install: apt-build
	test -x $(PREFIX)/bin/python || $(PYTHON_SYS) -m venv $(PREFIX)
	$(PREFIX)/bin/pip install -q --disable-pip-version-check -c constraints.txt '.[nova]'
	$(PREFIX)/bin/pip install -q --disable-pip-version-check --no-deps --force-reinstall .
	chmod -R a+rX $(PREFIX)
	mkdir -p $(PLUGINDIR)
	for check in check_libvirtd check_libvirt_instances check_nova_hypervisors; do \
		ln -sf $(PREFIX)/bin/$$check $(PLUGINDIR)/$$check; done
	@$(MAKE) --no-print-directory nrpe-cfg

# icinga/nrpe/nova-libvirt-checks.cfg with the plugin paths of PLUGINDIR
nrpe-cfg:
	mkdir -p $(dir $(NRPE_CFG))
	sed 's|/usr/lib/nagios/plugins/|$(PLUGINDIR)/|' icinga/nrpe/nova-libvirt-checks.cfg > $(NRPE_CFG)
	chmod 0644 $(NRPE_CFG)
	@echo "NRPE commands for the checks in $(PLUGINDIR): $(NRPE_CFG)"
	@echo "  on a compute node: cp $(NRPE_CFG) /etc/nagios/nrpe.d/ && systemctl restart nagios-nrpe-server"

# nova-libvirt-checks-{common,compute,server}_VERSION_all.deb in $(DEBDIR)
deb: apt-deb
	rm -rf $(DEBDIR) && mkdir -p $(DEBDIR)/src
	tar -C $(CURDIR) --exclude=./.git --exclude=./.venv --exclude=./build --exclude=__pycache__ \
		--exclude=./.pytest_cache --exclude=./.hypothesis --exclude=./bench/out -cf - . \
		| tar -C $(DEBDIR)/src -xf -
	cd $(DEBDIR)/src && dpkg-buildpackage -us -uc -b
	lintian --fail-on error $(DEBDIR)/*.changes
	@ls -1 $(DEBDIR)/*.deb

bench: apt-services venv
	$(PY) bench/run

clean:
	rm -rf $(VENV) build lib/*.egg-info .pytest_cache .hypothesis
