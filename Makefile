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
	@echo "                          two modes run by run, roots paired by seed, judged by the paired rule (best or"
	@echo "                          final score within TOLERANCE 1.5 points, no more collapses, last-epoch moves only"
	@echo "                          within the run's own swing and not all one way) -> first CAND root/compare.md"
	@echo "make clean                remove results, sizes, archives, caches and the embedded data (never your own)"

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
UNJUDGED ?=# runs reported, not judged: a grid point the choice rejects in both modes, e.g. UNJUDGED=cc359/sfda_val/0_3_lr5e-4
compare: | $(PYDEP)
	$(CC) $(CFLAGS) report.py compare --reference $(REF) --candidate $(CAND) --tolerance $(TOLERANCE) \
		$(if $(ONLY),--only $(ONLY)) $(if $(UNJUDGED),--unjudged $(UNJUDGED)) --out $(firstword $(CAND))/compare.md

# results, size files, archives, CC359's caches, and the data folders synth.py wrote (its .embedded marker): a folder
# of your own data under $(DATA) is never deleted
clean:
	rm -rf $(RD) $(SIZES) $(ARCH) $(DATA)/cc359_prep $(DATA)/cc359_sets
	for marker in $(wildcard $(DATA)/*/.embedded); do rm -rf "$$(dirname "$$marker")"; done
