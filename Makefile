# Environment, tests, benchmark. The experiments: make -f prostate.make, make -f cc359.make (see README).
include common.mk
.DEFAULT_GOAL := help
.PHONY: help venv test test-fast test-slurm bench compare clean

help:
	@echo "make venv                 create .venv from requirements.txt"
	@echo "make test                 every test: unit tests, make -n checks, the tiny chains end to end, SLURM where installed"
	@echo "make test-fast            unit tests and make -n checks only (-m \"not slow\"), under a minute"
	@echo "make test-slurm           the SLURM tests, installing slurm-wlm and munge with apt-get if missing (root)"
	@echo "make bench                machine peak, training throughput, epoch overhead, metric speed -> $(RD)/bench"
	@echo "make -f prostate.make     the SFDA experiment on the embedded (or your) prostate data"
	@echo "make -f cc359.make        fine-tuning / SpotTUnet / SFDA across the six CC359 scanner domains, ProtoSeg,"
	@echo "                          and which pre-trained model to reuse (make -f cc359.make transfer)"
	@echo "make compare REF=\"results/seed0/prostate ...\" CAND=\"results_bf16/seed0/prostate ...\""
	@echo "                          two modes run by run, roots paired by seed: the paired mean difference within"
	@echo "                          TOLERANCE (1.5) points and no more collapses -> first CAND root/compare.md"
	@echo "make clean                remove results, generated data, sizes and archives"

venv: $(PYDEP)

test: | $(PYDEP)
	$(CC) $(CFLAGS) -m pytest -q tests

# the tests marked slow (pytest.ini) run make for real or need the tiny chains: minutes; the rest takes seconds
test-fast: | $(PYDEP)
	$(CC) $(CFLAGS) -m pytest -q -m "not slow" tests

# tests/test_slurm.py installs SLURM only when asked (here, or with CI set); elsewhere it runs if SLURM is present
test-slurm: | $(PYDEP)
	SLURM_INSTALL=1 $(CC) $(CFLAGS) -m pytest -q -rs tests/test_slurm.py

# the reference metric packages are installed for the benchmark only
bench: | $(PYDEP)
	$(CC) -m pip install --disable-pip-version-check -q medpy==0.5.2
	$(CC) $(CFLAGS) bench.py --out $(RD)/bench

# e.g. fp32 against bf16: make -f prostate.make SEEDS="0 1 2" PREC=bf16 CL=1 RD=results_bf16, then make compare
# with REF and CAND the per-seed roots in the same seed order
REF ?= $(RD)/prostate
CAND ?= results_bf16/prostate
TOLERANCE ?= 1.5
ONLY ?=# compare only these runs, e.g. ONLY="cesource noadapt adabn sfda sfda_truesize"
compare: | $(PYDEP)
	$(CC) $(CFLAGS) report.py compare --reference $(REF) --candidate $(CAND) --tolerance $(TOLERANCE) \
		$(if $(ONLY),--only $(ONLY)) --out $(firstword $(CAND))/compare.md

clean:
	rm -rf $(RD) $(DATA)/prostate_source $(DATA)/prostate_target $(DATA)/prostate_target_hard $(DATA)/cc359 $(DATA)/cc359_prep $(DATA)/cc359_sets \
		$(SIZES) $(ARCH)
