# Debian package targets, included by the top Makefile.
#   make deb       build build/deb/kjumpd_VERSION_all.deb from a clean copy of the tree
#   make deb-test  build it, lint it, install it into a debootstrap root and purge it
#                  (tests/test_packaging.py; also part of make check)
#
# The debian/ directory lives in packaging/debian and is copied next to the
# sources in the build directory, so the work tree never has a top-level
# debian/. The copy holds the files git tracks plus untracked, not ignored
# ones (work in progress is built as it is).

# The build directory (absolute or relative to the top of the tree); the
# tests pass a private one.
DEB_BUILD_DIR := build/deb
DEB_VERSION = $(shell dpkg-parsechangelog -l packaging/debian/changelog -S Version)
DEB_SRC = $(DEB_BUILD_DIR)/kjumpd-$(DEB_VERSION)
DEB_DEPS_STAMP := build/.deb-deps-stamp
# Debian's tools must see the system Python, not the venv, and no preload
# library (make check runs under umockdev-wrapper).
DEB_ENV := env -u LD_PRELOAD -u VIRTUAL_ENV -u PYTHONPATH PATH=/usr/sbin:/usr/bin:/sbin:/bin

.PHONY: deb deb-test

$(DEB_DEPS_STAMP): packaging/deps/deb.txt
	$(APT_GET) update
	$(APT_GET) install -y --no-install-recommends $(call pkglist,packaging/deps/deb.txt)
	mkdir -p $(@D)
	touch $@

deb: $(DEB_DEPS_STAMP)
	rm -rf $(DEB_BUILD_DIR)
	mkdir -p $(DEB_SRC)
	git ls-files -z --cached --others --exclude-standard --deduplicate \
	    | tar --null --files-from=- --ignore-failed-read -cf - \
	    | tar -x -C $(DEB_SRC)
	cp -r packaging/debian $(DEB_SRC)/debian
	cd $(DEB_SRC) && $(DEB_ENV) dpkg-buildpackage --build=binary --no-sign
	@ls -1 $(DEB_BUILD_DIR)/*.deb

deb-test: $(VENV)/.test-stamp $(DEB_DEPS_STAMP)
	@$(call pytest,,-q tests/test_packaging.py)
