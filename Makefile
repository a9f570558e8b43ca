# kjumpd — developer entry points. Everything runs as root on Debian 12; each
# target installs the packages it needs before it uses them (README.md):
#   make demo        the full hibernate/resume cycle on the simulated machine
#   make check       lint, then the whole test suite (packaging tests included)
#   make check-fast  only the tests marked unit: seconds, no buses, no roots
#   make lint        ruff over kjumpd, tests and bench
#   make bench       image engine benchmark against lz4/zstd/cp
#   make fuzz        fuzzing of the parsers and whole images (docs/fuzzing.md)
#   make vm-test     the real path in QEMU (tests/vm, docs/vm-test.md)
#   make deb, make deb-test   the Debian package (packaging/deb.mk)
SHELL := /bin/bash
PYTHON_SYS := /usr/bin/python3
VENV := .venv
PY := $(VENV)/bin/python
APT_GET := DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 -q
pkglist = $(shell sed -e 's/\#.*//' $(1) | tr -s ' \n' ' ')
# Run pytest with the arguments given; pytest's exit 5 (nothing collected) is a
# failure too, and -rs lists every skip with its reason.
pytest = set +e; $(1) $(PY) -m pytest -rs -p no:cacheprovider $(2); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "$@: no tests were collected" >&2; exit 1; fi; exit $$rc

.PHONY: all deps test-deps demo lint check check-fast bench vm-test clean

all: check

# Debian package targets (make deb, make deb-test) live beside the packaging;
# make check uses their package stamp.
include packaging/deb.mk
# The system tests (make system-test), once they exist.
-include tests/system/system.mk
# make fuzz (not part of make check).
-include tests/fuzz/fuzz.mk
# make vm-bench: kjumpd against swsusp in the VM test's guest (not part of make check).
-include tests/vm/bench.mk

# Debian packages first (the venv sees them through --system-site-packages),
# then only pure-Python tools from PyPI. venv.txt is what creating the venv and
# the editable install need (ensurepip, wheel); runtime.txt what kjumpd needs.
$(VENV)/.runtime-stamp: packaging/deps/runtime.txt packaging/deps/venv.txt pyproject.toml
	$(APT_GET) update
	$(APT_GET) install -y --no-install-recommends \
	    $(call pkglist,packaging/deps/runtime.txt) $(call pkglist,packaging/deps/venv.txt)
	$(PYTHON_SYS) -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .
	touch $@

$(VENV)/.test-stamp: $(VENV)/.runtime-stamp packaging/deps/test.txt packaging/deps/test-pip.txt
	$(APT_GET) install -y --no-install-recommends $(call pkglist,packaging/deps/test.txt)
	$(PY) -m pip install -q -r packaging/deps/test-pip.txt
	touch $@

deps: $(VENV)/.runtime-stamp
test-deps: $(VENV)/.test-stamp

demo: $(VENV)/.test-stamp
	$(PY) -m kjumpd.host.demo

bench: $(VENV)/.test-stamp
	$(PY) bench/image.py

lint: $(VENV)/.test-stamp
	$(PY) -m ruff check kjumpd tests bench

# Lint first (cheap, fails early), then every test; the packaging tools
# (packaging/deps/deb.txt) are installed so the packaging tests run too.
check: lint $(VENV)/.test-stamp $(DEB_DEPS_STAMP)
	@$(call pytest,umockdev-wrapper,-q)

check-fast: $(VENV)/.test-stamp
	@$(call pytest,,-q -m unit)

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .hypothesis

# The real path: a kernel with CONFIG_KEXEC_JUMP (built once, cached outside
# the work tree) booted in QEMU/TCG through the whole cycle. See tests/vm/.
$(VENV)/.vm-stamp: $(VENV)/.test-stamp packaging/deps/vm.txt
	$(APT_GET) install -y --no-install-recommends $(call pkglist,packaging/deps/vm.txt)
	touch $@

vm-test: $(VENV)/.vm-stamp
	@$(call pytest,,-m vm -v tests/vm)
