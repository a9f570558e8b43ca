# kjumpd — developer entry points. Everything runs as root on Debian 12.
#   make demo   the full hibernate/resume cycle on the simulated machine
#   make check  install test dependencies and run the whole test suite
#   make bench  image engine benchmark against lz4/zstd/cp
SHELL := /bin/bash
PYTHON_SYS := /usr/bin/python3
VENV := .venv
PY := $(VENV)/bin/python
APT_GET := DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 -q
pkglist = $(shell sed -e 's/\#.*//' $(1) | tr -s ' \n' ' ')

.PHONY: all deps test-deps demo check bench vm-test deb clean

all: check

# Debian packages first (the venv sees them through --system-site-packages),
# then only pure-Python test tools from PyPI.
$(VENV)/.runtime-stamp: packaging/deps/runtime.txt pyproject.toml
	$(APT_GET) update
	$(APT_GET) install -y --no-install-recommends $(call pkglist,packaging/deps/runtime.txt)
	$(PYTHON_SYS) -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .
	touch $@

$(VENV)/.test-stamp: $(VENV)/.runtime-stamp packaging/deps/test.txt
	$(APT_GET) install -y --no-install-recommends $(call pkglist,packaging/deps/test.txt)
	$(PY) -m pip install -q 'hypothesis>=6.67'
	touch $@

deps: $(VENV)/.runtime-stamp
test-deps: $(VENV)/.test-stamp

demo: $(VENV)/.test-stamp
	$(PY) -m kjumpd.demo

bench: $(VENV)/.test-stamp
	$(PY) bench/image.py

# pytest exits 5 when it collected nothing: that is a failure here too.
check: $(VENV)/.test-stamp
	@set +e; umockdev-wrapper $(PY) -m pytest -q -p no:cacheprovider; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "check: no tests were collected" >&2; exit 1; fi; exit $$rc

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .hypothesis

# The real path: a kernel with CONFIG_KEXEC_JUMP (built once, cached outside
# the work tree) booted in QEMU/TCG through the whole cycle. See tests/vm/.
$(VENV)/.vm-stamp: $(VENV)/.test-stamp packaging/deps/vm.txt
	$(APT_GET) install -y --no-install-recommends $(call pkglist,packaging/deps/vm.txt)
	touch $@

vm-test: $(VENV)/.vm-stamp
	@set +e; $(PY) -m pytest -p no:cacheprovider -m vm -v tests/vm; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "vm-test: no tests were collected" >&2; exit 1; fi; exit $$rc

# Debian package targets (make deb, make deb-test) live beside the packaging.
-include packaging/deb.mk
