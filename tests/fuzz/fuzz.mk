# make fuzz: coverage-guided fuzzing (atheris, from PyPI) of every parser of
# untrusted input and of whole images through kjumpctl and the resume check
# (tests/fuzz/fuzz.py). Not part of make check. Each parser target gets
# FUZZ_RUNS inputs, whole images FUZZ_IMAGE_RUNS, or every target FUZZ_SECONDS
# when that is set; FUZZ_TARGETS picks targets (records cmdline iomem image).
# Crashes are kept in build/fuzz/crashes/TARGET/, the corpus in build/fuzz/corpus/.
FUZZ_RUNS ?= 1000000
FUZZ_IMAGE_RUNS ?= 20000
FUZZ_SECONDS ?=
FUZZ_TARGETS ?=

.PHONY: fuzz

$(VENV)/.fuzz-stamp: $(VENV)/.test-stamp
	$(PY) -m pip install -q 'atheris>=2.3'
	touch $@

fuzz: $(VENV)/.fuzz-stamp
	$(PY) tests/fuzz/fuzz.py --runs $(FUZZ_RUNS) --image-runs $(FUZZ_IMAGE_RUNS) \
	    $(if $(FUZZ_SECONDS),--seconds $(FUZZ_SECONDS)) \
	    --crashes build/fuzz/crashes --corpus build/fuzz/corpus $(FUZZ_TARGETS)
