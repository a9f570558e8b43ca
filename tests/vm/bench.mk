# make vm-bench: kjumpd against the kernel's own hibernation (swsusp) in the
# same QEMU guest as make vm-test (bench/vm.py, bench/README.md). Not part of
# make check: under TCG it takes about half an hour. VM_BENCH_RUNS cycles per
# system (medians), VM_BENCH_AGE MiB written and freed by the ageing workload;
# the JSON goes to VM_BENCH_JSON.
VM_BENCH_RUNS ?= 3
VM_BENCH_AGE ?= 500
VM_BENCH_JSON ?= build/vm-bench.json

.PHONY: vm-bench

vm-bench: $(VENV)/.vm-stamp
	@mkdir -p $(dir $(VM_BENCH_JSON))
	$(PY) bench/vm.py --runs $(VM_BENCH_RUNS) --age $(VM_BENCH_AGE) --json $(VM_BENCH_JSON)
