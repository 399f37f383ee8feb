# Shared variables and rules of the experiment makefiles (included by prostate.make and cc359.make).
SHELL = bash
.SHELLFLAGS = -e -o pipefail -c
.DELETE_ON_ERROR:

# Python: the project's .venv (built from requirements.txt on first use) unless CC=... is given.
VENV = .venv
ifneq ($(filter default environment,$(origin CC)),)
CC = $(VENV)/bin/python
PYDEP = $(VENV)/.installed
endif
CFLAGS ?=
NET ?= UNet
EPC ?=
DEBUG ?=
BS ?= 16
PREC ?= fp32
CL ?= 0
THREADS ?=# torch threads per run (empty: torch's default, all cores); e.g. make -j2 THREADS=1
EXTRA ?=
RD ?= results
DATA ?= data
SIZES ?= sizes
ARCH ?= archives
SEED ?= 0# seeds every run (training)
DATA_SEED ?= 0# seeds the data generators, separately from the training seed
# SEEDS="0 1 2": the whole chain once per training seed, seed s into $(RD)/seed<s>, all on the one dataset (built
# first, so parallel seeds never race to write it); then the report over the seeds, in $(RD)/seeds/.
SEEDS ?=
SEED_GOAL ?= all# what each seed's chain builds
SEED_ROOTS = $(foreach s,$(SEEDS),$(RD)/seed$(s))
# the root whose source models (prostate cesource, CC359 baselines) the adaptation runs start from; this root's
# own are still trained. E.g. PREC=bf16 RD=results_bf16 SOURCE_RD=results adapts the fp32 models in bf16.
SOURCE_RD ?= $(RD)
# every main.py run goes through LAUNCH, e.g. LAUNCH="srun -c 4 --mem 8G" sends each run to SLURM (the run dirs
# must be on a filesystem shared with the nodes); make, the _tmp -> run rename and the reports stay local.
LAUNCH ?=

REPO := $(shell basename "$$(git rev-parse --show-toplevel 2>/dev/null || pwd)")
DATE := $(shell date +"%y%m%d")
HASH := $(shell git rev-parse --short HEAD 2>/dev/null || echo nogit)
HOSTNAME := $(shell hostname)
ZIP := $(shell command -v pigz >/dev/null 2>&1 && echo pigz || echo gzip)

# A run's <run>_tmp keeps its state after each complete epoch: the next make resumes it when the command is
# the same (main.py decides) and restarts it otherwise; make -B restarts every run it rebuilds.
FRESH = $(if $(findstring B,$(firstword -$(MAKEFLAGS))),rm -rf $(1)_tmp,:)

# what every main.py run gets from PREC and CL (CL=1: channels_last memory format)
RUN_NUMERICS = --precision $(PREC) $(if $(filter 1,$(CL)),--channels_last) $(if $(THREADS),--threads $(THREADS))

# The classes: N_CLASS (background + structures), every structure reported (METRIC_AXIS) and in the losses (IDC)
N_CLASS ?= 2
comma := ,
empty :=
space := $(empty) $(empty)
py_list = [$(subst $(space),$(comma),$(strip $(1)))]# make words -> a Python list: 0 1 2 -> [0,1,2]
CLASS_IDS = $(shell seq 0 $$(($(N_CLASS) - 1)))
METRIC_AXIS = $(wordlist 2,$(N_CLASS),$(CLASS_IDS))
IDC = $(call py_list,$(CLASS_IDS))
W_CE = $(call py_list,$(foreach k,$(CLASS_IDS),1))

# the supervised losses: cross-entropy, and with it online ProtoSeg's SA term of the last two feature layers (seed 003)
L_OR = [('CrossEntropy', {'idc': $(IDC), 'weights':$(W_CE)}, None, None, None, 1)]
L_ONLINE = [('CrossEntropy', {'idc': $(IDC), 'weights':$(W_CE)}, None, None, None, 1), ('ProtoSegLoss', {'layers': 'last'}, None, None, None, 1)]

# One main.py run. $@: the run directory, written as $@_tmp and renamed when complete; $(DATASET): its slice set;
# $(CHAIN_OPT): what every run of the chain gets; $(OPT): what this run adds (the last of a repeated option wins).
.SECONDEXPANSION:
define TRAIN
	$(call FRESH,$@)
	$(LAUNCH) $(CC) $(CFLAGS) main.py --workdir $@_tmp --target_dataset $(DATASET) --network $(NET) --n_class $(N_CLASS) \
		--metric_axis $(METRIC_AXIS) --grp_regex "$(G_RGX)" --target_folders="$(TT_DATA)" --val_target_folders="$(TT_DATA)" \
		--batch_size $(BS) $(CHAIN_OPT) $(RUN_NUMERICS) --seed $(SEED) $(OPT) $(EXTRA) $(DEBUG)
	rm -rf $@ && mv $@_tmp $@
endef

$(VENV)/.installed: requirements.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --disable-pip-version-check -r requirements.txt
	@# pip writes plain .pyc only; python -O (CFLAGS=-O, the tests) reads .opt-1.pyc, and where
	@# PYTHONDONTWRITEBYTECODE is set (CI, containers) it cannot cache them: every run compiled torch again
	@# (import main + an optimizer: 17.5 s, 5.9 s precompiled, under load). Some packages ship files that are not 3.11
	@# (torch's py312 test helpers): compileall names them and they stay uncompiled, harmlessly.
	$(VENV)/bin/python -O -m compileall -q -j 0 $(VENV)/lib > $(VENV)/compileall.log 2>&1 || true
	touch $@

# SEEDS: one phony target per seed root runs the chain there in a sub-make (make -j runs them side by side), after
# this make has built what every seed shares ($(SEED_SHARED): data, caches, size files), so no two seeds race to.
CHAIN_GOAL = $(if $(strip $(SEEDS)),seeds,all)# a chain's default goal
.PHONY: seeds $(SEED_ROOTS)
$(SEED_ROOTS): $(RD)/seed%: $$(SEED_SHARED) | $(PYDEP)
	+$(MAKE) -f $(firstword $(MAKEFILE_LIST)) SEEDS= SEED=$* RD=$@ \
		$(if $(filter command line,$(origin SOURCE_RD)),SOURCE_RD=$(SOURCE_RD)/$(notdir $@)) $(SEED_GOAL)
