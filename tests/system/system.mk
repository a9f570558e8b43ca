# make system-test: kjumpd on an installed Debian 12 with systemd in QEMU/TCG
# (tests/system, docs/system-test.md). Included by the top Makefile.
.PHONY: system-test

$(VENV)/.system-stamp: $(VENV)/.vm-stamp packaging/deps/system.txt
	$(APT_GET) install -y --no-install-recommends $(call pkglist,packaging/deps/system.txt)
	touch $@

system-test: $(VENV)/.system-stamp
	@set +e; $(PY) -m pytest -p no:cacheprovider -m system -v tests/system; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "system-test: no tests were collected" >&2; exit 1; fi; exit $$rc
