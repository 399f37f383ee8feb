# CC359's six scanner domains (0 Siemens 1.5T, 1 Siemens 3T, 2 GE 1.5T, 3 GE 3T, 4 Philips 1.5T, 5 Philips 3T): a
# pair s_t adapts domain s's baseline to domain t by fine-tuning with N annotated slices, SpotTUnet (seed 000) and the
# source-free chain; the studies are included: layers.mk, protoseg.mk, transfer.mk. make -f cc359.make [PRESET=paper]
# (docs/cc359-protocol.md). Every run's pair, budget and grid point are read from its name.
NET ?= ResUNet
include common.mk
include sourcefree.mk
.DEFAULT_GOAL := $(CHAIN_GOAL)
.PHONY: all pack report plot runs sourcefree protoseg transfer layers routes

# ---------------------------------------------------------------- protocol and names
# PRESET=paper: the paper's protocol on the real release (CCDATA=/data/CC359), from cc359_paper.mk
$(if $(filter-out paper,$(PRESET)),$(error PRESET=$(PRESET): the only preset is paper))
include $(if $(PRESET),cc359_$(PRESET).mk)
CCDATA ?= $(DATA)/cc359# meta.csv + volumes; point it at the real release (cc359.py meta writes its meta.csv)
NPD ?= 8# embedded subjects per domain
SPACING ?= 3,2.85,2.85# mm after resampling (the paper's 1,0.95,0.95, 3x coarser for the CPU)
TOL ?= 3# surface Dice tolerance (mm): one voxel, as the paper's 1 mm is at its spacing
VAL ?= 2# validation scans of a source baseline (paper: 4)
VAL_T ?= $(VAL)# validation scans of the target-domain splits: oracle folds and pairs (paper: 2)
NADD ?= 3# scans in a target's annotation pool; the others are its test scans
BUDGET_FROM ?= scan# scan: a budget below one scan is N slices of one scan (the paper's code); pool: spread over all
VAL_PAIRS ?= 0_3# the pairs that choose every method's parameters (SpotTUnet's tau and lambda, the SFDA rate, k)
TEST_PAIRS ?= 2_5 4_1
BUDGETS ?= 8 45# annotated target slices
TAU_BUDGET ?= $(lastword $(shell printf '%s\n' $(BUDGETS) | sort -n))# tau is chosen once, here, with lambda 0
TAUS ?= 0.1 1
LAMBDAS ?= 0 0.01# must hold 0
E_BASE ?= 10# baseline / oracle: epochs x iterations of batch BS (paper 100 x 100 x 16)
IT_BASE ?= 20
LRD_BASE ?= 7# lr x0.1 once, after this (0-based) epoch (paper: 80 of 100)
E_FT ?= 8# fine-tuning: epochs x iterations (paper 60 x 100)
IT_FT ?= 10
LRD_FT ?= 5
LR ?= 1e-2# SGD lr (paper 1e-3 over 50x more iterations)
POLICY_LR ?= $(shell awk 'BEGIN { print 10 * $(LR) }')# SpotTUnet's policy SGD lr: the reference's 10 x the network's
BRAIN_ML ?= 1883# the SFDA prior's brain volume (mL): the MNI152 2009a brain mask
PRIOR_PROFILE ?= mni152# the prior's area per tagged slice: the MNI152 brain's axial profile (flat: even)
SF_LRS ?= 5e-5 5e-4# SFDA Adam learning rates tried on the validation pairs
$(if $(filter-out scan pool,$(BUDGET_FROM)),$(error BUDGET_FROM=$(BUDGET_FROM): scan (the paper's) or pool))
$(if $(filter 0,$(LAMBDAS)),,$(error LAMBDAS=$(LAMBDAS) must hold 0: tau is chosen with lambda = 0))
G_RGX = CC\d+_\d+
TT_DATA = [('IMG', npy_transform, False), ('GT', gt_transform, False)]
CHAIN_OPT = --spacing $(SPACING) --sdice_tol $(TOL)
DATASET = $<# a run's slice set is its first prerequisite
PREP = $(DATA)/cc359_prep
SETS = $(DATA)/cc359_sets
SIZEFILE = $(SIZES)/cc359.csv
CR = $(RD)/cc359
BASE = $(SOURCE_RD)/cc359/baseline# the baselines every adaptation starts from (SOURCE_RD: another root's)
TAUFILE = $(CR)/spottune_tau.csv
PARAMS = $(CR)/spottune_params.csv
SF_PARAMS = $(CR)/sfda_params.csv
REUSE_PARAMS = $(CR)/reuse_params.csv
VAL_SCORES = $(CR)/val_scores.csv
src = $(word 1,$(subst _, ,$(1)))
tgt = $(word 2,$(subst _, ,$(1)))
budget = $(patsubst n%,%,$(word 3,$(subst _, ,$(1))))
field = $(patsubst $(2)%,%,$(filter $(2)%,$(subst _, ,$(1))))# $(call field,0_3_n8_lam0.01,lam) = 0.01
method = $(notdir $(@D))# a run's method: the directory above it
start = $(BASE)/$(call src,$(@F))/last.pkl# the baseline a run of pair $(@F) starts from
epochs = $(or $(EPC),$(1))
val_set = pair_$(call src,$(@F))_$(call tgt,$(@F))_n$(call field,$(@F),n)# the set of a validation-grid run
DOMAINS = 0 1 2 3 4 5
PAIRS = $(VAL_PAIRS) $(TEST_PAIRS)
SOURCES = $(sort $(foreach p,$(PAIRS),$(call src,$(p))))
TARGETS = $(sort $(foreach p,$(TEST_PAIRS),$(call tgt,$(p))))
FT_METHODS = ft_all ft_first ft_last spottune

BASELINES = $(addprefix $(CR)/baseline/,$(SOURCES))
ORACLES = $(foreach t,$(TARGETS),$(foreach k,0 1 2,$(CR)/oracle/$(t)/fold$(k)))
FT_RUNS = $(foreach m,$(FT_METHODS),$(foreach p,$(TEST_PAIRS),$(foreach n,$(BUDGETS),$(CR)/$(m)/$(p)_n$(n))))
# SpotTUnet's grid, in the paper's order: every tau at TAU_BUDGET with lambda 0, then every lambda at every budget
# with the chosen tau; the (TAU_BUDGET, lambda 0) point of the second is the first's run of the chosen tau
TAU_RUNS = $(foreach p,$(VAL_PAIRS),$(foreach t,$(TAUS),$(CR)/spottune_val/$(p)_n$(TAU_BUDGET)_tau$(t)_lam0))
LAM_RUNS = $(filter-out %_n$(TAU_BUDGET)_lam0,$(foreach p,$(VAL_PAIRS),$(foreach n,$(BUDGETS),$(foreach l,$(LAMBDAS),\
	$(CR)/spottune_val/$(p)_n$(n)_lam$(l)))))
VAL_RUNS = $(TAU_RUNS) $(LAM_RUNS)
SF_RUNS = $(foreach m,$(SF_METHODS),$(addprefix $(CR)/$(m)/,$(TEST_PAIRS)))
HM_RUNS = $(addprefix $(CR)/hm/,$(TEST_PAIRS))
SF_VAL_RUNS = $(foreach p,$(VAL_PAIRS),$(foreach lr,$(SF_LRS),$(CR)/sfda_val/$(p)_lr$(lr)))
SF_START_RUNS = $(foreach p,$(VAL_PAIRS),$(CR)/noadapt_val/$(p) $(CR)/adabn_val/$(p))# what SFDA must beat there
SF_CHOICE = $(CR)/sfda_choice.csv# sfda, or adabn / noadapt where no rate beats them on the validation pairs
TESTED = $(ORACLES) $(FT_RUNS) $(HM_RUNS) $(SF_RUNS) $(REUSE_RUNS)
QUALITATIVE = $(foreach p,$(TEST_PAIRS),$(CR)/qualitative_$(p).png)# the source-free runs on a pair's test volumes
PLT = $(CR)/violin.png $(CR)/lambda_val.png $(CR)/policy.png $(QUALITATIVE)
REPORT = $(CR)/report.md
PACK = $(ARCH)/$(REPO)-$(DATE)-$(HASH)-$(HOSTNAME)-cc359-seed$(SEED).tar.gz

include protoseg.mk transfer.mk layers.mk
all: pack report protoseg transfer layers
runs: $(BASELINES) $(TESTED) $(VAL_RUNS) $(SF_VAL_RUNS) $(SF_START_RUNS) $(REUSE_VAL_RUNS)
sourcefree: $(CR)/sourcefree.csv $(QUALITATIVE) $(SF_CHOICE)# the source-free chain alone: baselines, the SFDA rate, hm/noadapt/adabn/sfda/sfda_truesize
pack: $(PACK)
report: $(REPORT)
plot: $(PLT)

# ---------------------------------------------------------------- data
$(CCDATA)/meta.csv: | $(PYDEP)
	$(CC) $(CFLAGS) synth.py cc359 --out $(CCDATA) --seed $(DATA_SEED) --n_per_domain $(NPD)
$(PREP): $(CCDATA)/meta.csv | $(PYDEP)
	$(CC) $(CFLAGS) cc359.py prep --meta $< --spacing $(SPACING) --out $@
$(SIZEFILE): $(PREP) | $(PYDEP)
	$(CC) $(CFLAGS) sizes.py --gt_dir $(PREP)/slices/GT --volume_ml $(BRAIN_ML) --spacing $(SPACING) \
		--profile $(PRIOR_PROFILE) --grp_regex "$(G_RGX)" --out $@
# slice sets (symlinks into the cache): baseline_<s>, oracle_<t>_f<k>, pair_<s>_<t>_n<N> / _all, hm_<s>_<t>
SPLIT = $(CC) $(CFLAGS) cc359.py split --prep $(PREP) --n_add $(NADD) --out $@
$(SETS)/baseline_%: $(PREP) | $(PYDEP)
	$(SPLIT) --kind baseline --source $* --n_val $(VAL)
$(SETS)/oracle_%: $(PREP) | $(PYDEP)
	$(SPLIT) --kind oracle --target $(call src,$*) --fold $(subst f,,$(call tgt,$*)) --n_val $(VAL_T)
$(SETS)/pair_%: $(PREP) | $(PYDEP)
	$(SPLIT) --kind pair --source $(call src,$*) --target $(call tgt,$*) --n_val $(VAL_T) --budget $(call budget,$*) \
		--budget_from $(BUDGET_FROM)
$(SETS)/hm_%: $(PREP) | $(PYDEP)
	$(SPLIT) --kind hm --source $(call src,$*) --target $(call tgt,$*) --n_val $(VAL_T) --n_val_source $(VAL)

# ---------------------------------------------------------------- runs: one rule per kind, one OPT line per run
# SGD; the lr drops once, x0.1 after epoch LRD (the paper's dpipe schedule). Every run tests its last weights.
SGD = --optimizer sgd --weight_decay 0 --l_rate $(LR) --lr_decay 0.1 --lr_schedule step_once --target_losses="$(L_OR)"
TRAIN_BASE = $(SGD) --n_epoch $(call epochs,$(E_BASE)) --iterations $(IT_BASE) --lr_decay_epoch $(LRD_BASE)
TRAIN_FT = $(SGD) --n_epoch $(call epochs,$(E_FT)) --iterations $(IT_FT) --lr_decay_epoch $(LRD_FT) \
	--val_every $(call epochs,$(E_FT)) --test_folder test

# baselines (the early checkpoint: a transfer candidate; ONLINE_RUNS: protoseg.mk's), oracles (3-fold CV in the target)
BASE_RUNS = $(addprefix $(CR)/baseline/,$(DOMAINS))
$(BASE_RUNS): OPT = $(TRAIN_BASE) --save_epochs $(TE_EARLY)
$(ORACLES): OPT = $(TRAIN_BASE) --test_folder test
$(BASE_RUNS) $(ONLINE_RUNS): $(CR)/%: $$(SETS)/baseline_$$(@F) | $(PYDEP)
	$(TRAIN)
$(ORACLES): $(CR)/oracle/%: $$(SETS)/oracle_$$(subst /fold,_f,$$*) | $(PYDEP)
	$(TRAIN)

# fine-tuning <method>/<s>_<t>_n<N> from s's baseline; the test runs read what the validation pairs chose
OPT_ft_first = --trainable first
OPT_ft_last = --trainable last
OPT_spottune = --spottune --policy_lr $(POLICY_LR) --chosen $(PARAMS):budget=$(call budget,$(@F))
$(FT_RUNS): OPT = $(TRAIN_FT) --model_weights $(start) $(OPT_$(method))
$(FT_RUNS): $$(SETS)/pair_$$(@F) $$(BASE)/$$(call src,$$(@F)) $$(if $$(filter spottune,$$(method)),$(PARAMS)) | $(PYDEP)
	$(TRAIN)
# SpotTUnet's validation grid: tau, then lambda with the chosen tau
$(TAU_RUNS): OPT = $(TRAIN_FT) --spottune --policy_lr $(POLICY_LR) --tau $(call field,$(@F),tau) --k_reg 0 \
	--model_weights $(start)
$(LAM_RUNS): OPT = $(TRAIN_FT) --spottune --policy_lr $(POLICY_LR) --chosen $(TAUFILE) --k_reg $(call field,$(@F),lam) \
	--model_weights $(start)
$(LAM_RUNS): $(TAUFILE)
$(VAL_RUNS): $$(SETS)/$$(val_set) $$(BASE)/$$(call src,$$(@F)) | $(PYDEP)
	$(TRAIN)
$(TAUFILE): $(TAU_RUNS) | $(PYDEP)
	$(CC) $(CFLAGS) report.py choose_tau --runs $^ --budget $(TAU_BUDGET) --out $@
$(PARAMS): $(VAL_RUNS) $(TAUFILE) | $(PYDEP)
	$(CC) $(CFLAGS) report.py choose --runs $(VAL_RUNS) --tau_file $(TAUFILE) --out $@

# source-free (sourcefree.mk) with this chain's schedule; the test runs validate every epoch to compare the epochs
# chosen by labels, by mu and the last. Histogram matching (hm): the source model on target scans matched to it.
SF_SCHEDULE = --n_epoch $(call epochs,$(E_FT)) --iterations $(IT_FT) --lr_decay 1
$(SF_RUNS) $(HM_RUNS): OPT = $(SF_$(method)) $(if $(filter sfda%,$(method)),--val_every 1 \
	--chosen $(SF_PARAMS)) --test_folder test --model_weights $(start)
$(SF_RUNS): $$(SETS)/pair_$$(@F)_all $$(BASE)/$$(call src,$$(@F)) $$(if $$(filter sfda%,$$(method)),$(SIZEFILE) $(SF_PARAMS)) | $(PYDEP)
	$(TRAIN)
$(HM_RUNS): $$(SETS)/hm_$$(@F) $$(BASE)/$$(call src,$$(@F)) | $(PYDEP)
	$(TRAIN)
$(SF_VAL_RUNS): OPT = $(SF_sfda) --val_every $(call epochs,$(E_FT)) --test_folder test --l_rate $(call field,$(@F),lr) --model_weights $(start)
$(SF_VAL_RUNS): private MU_OPT =
$(SF_VAL_RUNS): $$(SETS)/pair_$$(call src,$$(@F))_$$(call tgt,$$(@F))_all $$(BASE)/$$(call src,$$(@F)) $(SIZEFILE) | $(PYDEP)
	$(TRAIN)
$(SF_PARAMS): $(SF_VAL_RUNS) | $(PYDEP)
	$(CC) $(CFLAGS) report.py choose_lr --runs $^ --out $@
$(SF_START_RUNS): OPT = $(SF_$(patsubst %_val,%,$(method))) --test_folder test --model_weights $(start)
$(SF_START_RUNS): $$(SETS)/pair_$$(@F)_all $$(BASE)/$$(call src,$$(@F)) | $(PYDEP)
	$(TRAIN)
$(SF_CHOICE): $(SF_VAL_RUNS) $(SF_START_RUNS) | $(PYDEP)
	$(CC) $(CFLAGS) report.py choose_source_free --runs $^ --out $@

# ---------------------------------------------------------------- a run's model on scans (predict.py)
# make -f cc359.make predict [PREDICT_PAIR=2_5 (ft runs: 2_5_n8)] [PREDICT_RUN=sfda] [PREDICT_WEIGHTS=last.pkl]
# [PREDICT_IN=<folder of NIfTI scans>]: the run's NIfTI segmentations of the pair's test scans (or of PREDICT_IN), the
# cc359.py prep steps replayed, mu's flag threshold from the source baseline's validation scans
# -> $(CR)/predict/<run>/<pair>[_<input folder>]/
PREDICT_PAIR ?= $(firstword $(TEST_PAIRS))
PREDICT_RUN ?= sfda
PREDICT_WEIGHTS ?= last.pkl
PREDICT_IN ?=
PREDICT_SETS = $(SETS)/pair_$(call src,$(PREDICT_PAIR))_$(call tgt,$(PREDICT_PAIR))_all $(SETS)/baseline_$(call src,$(PREDICT_PAIR))
PREDICTION = $(CR)/predict/$(PREDICT_RUN)/$(PREDICT_PAIR)$(if $(PREDICT_IN),_$(notdir $(abspath $(PREDICT_IN))))
$(if $(filter hm,$(PREDICT_RUN)),$(error PREDICT_RUN=hm reads histogram-matched scans; predict replays the plain preprocessing))
.PHONY: predict
predict: $(PREDICTION)
$(PREDICTION): $(CR)/$(PREDICT_RUN)/$(PREDICT_PAIR) $(PREDICT_SETS) $(if $(PREDICT_IN),$(shell find $(PREDICT_IN) -type f)) | $(PYDEP)
	$(LAUNCH) $(CC) $(CFLAGS) predict.py --run $< --weights $(PREDICT_WEIGHTS) --cc359_prep $(PREP) \
		--input $(or $(PREDICT_IN),$(CCDATA)/meta.csv --cases_from $(word 1,$(PREDICT_SETS))/test/IMG) \
		--reference $(word 2,$(PREDICT_SETS))/val $(if $(THREADS),--threads $(THREADS)) --out $@

# ---------------------------------------------------------------- reports, several seeds, archive
OUTPUTS = $(BASELINES) $(TESTED) $(VAL_RUNS) $(SF_VAL_RUNS) $(SF_START_RUNS) $(REUSE_VAL_RUNS) $(TAUFILE) $(PARAMS) \
	$(SF_PARAMS) $(SF_CHOICE) \
	$(if $(REUSE_METHODS),$(REUSE_PARAMS)) $(CR)/scores.csv $(VAL_SCORES) \
	$(PLT) $(REPORT) $(SIZEFILE) $(PS_OUT) $(TE_OUT) $(LY_OUT)
.PRECIOUS: $(OUTPUTS)
$(CR)/scores.csv: $(TESTED) | $(PYDEP)
	$(CC) $(CFLAGS) report.py collect --runs $^ --out $@
$(CR)/sourcefree.csv: $(HM_RUNS) $(SF_RUNS) | $(PYDEP)
	$(CC) $(CFLAGS) report.py collect --runs $^ --out $@
$(VAL_SCORES): $(VAL_RUNS) | $(PYDEP)
	$(CC) $(CFLAGS) report.py collect --runs $^ --out $@
$(CR)/violin.png: $(CR)/scores.csv | $(PYDEP)
	$(CC) $(CFLAGS) moustache.py --scores $< --out $@
$(CR)/lambda_val.png: $(VAL_RUNS) | $(PYDEP)
	$(CC) $(CFLAGS) plot.py --lambda_runs $^ --out $@
$(CR)/policy.png: $(filter $(CR)/spottune/%,$(FT_RUNS)) | $(PYDEP)
	$(CC) $(CFLAGS) plot.py --policy_runs $^ --out $@
# make -f cc359.make routes: each SpotTUnet test run's routes on its test volumes (its policy, sampled as in training,
# every unit tuned, every unit frozen) and each unit's use on its training slices against the test volumes
ROUTES = $(patsubst $(CR)/spottune/%,$(CR)/routes/%/summary.md,$(filter $(CR)/spottune/%,$(FT_RUNS)))
routes: $(CR)/routes.md
$(CR)/routes/%/summary.md: $(CR)/spottune/% | $(PYDEP)
	$(LAUNCH) $(CC) $(CFLAGS) routes.py --run $< $(if $(THREADS),--threads $(THREADS)) --out $(@D)
$(CR)/routes.md: $(ROUTES) | $(PYDEP)
	$(CC) $(CFLAGS) routes.py report --runs $(dir $(ROUTES)) --out $@
$(QUALITATIVE): $(CR)/qualitative_%.png: $(foreach m,$(SF_METHODS),$(CR)/$(m)/%) | $(PYDEP)
	$(CC) $(CFLAGS) qualitative.py --runs $^ --baseline noadapt --adapted sfda --split test --views slice cross --out $@
TITLE = CC359 domain adaptation ($(NET), seed$(if $(SEEDS),s $(SEEDS), $(SEED)), spacing $(SPACING) mm, surface Dice at $(TOL) mm)
$(REPORT): $(CR)/scores.csv $(PARAMS) $(TAUFILE) $(VAL_SCORES) $(SF_CHOICE) | $(PYDEP)
	$(CC) $(CFLAGS) report.py cc359 --scores $< --params $(PARAMS) --tau_file $(TAUFILE) --val_scores $(VAL_SCORES) \
		--sf_choice $(SF_CHOICE) --out $@ --title "$(TITLE)"
# SEEDS="0 1 2" [-j2 THREADS=1] [SEED_GOAL=sourcefree]: $(RD)/seed<s>/cc359/..., then the tables as mean ± sd
SEED_SHARED = $(SIZEFILE) $(addprefix $(SETS)/,$(addprefix baseline_,$(SOURCES)) $(foreach t,$(TARGETS),$(foreach k,0 1 2,\
	oracle_$(t)_f$(k))) $(foreach p,$(PAIRS),$(foreach n,$(BUDGETS),pair_$(p)_n$(n)) pair_$(p)_all) $(addprefix hm_,$(TEST_PAIRS)))
SEEDS_REPORT = $(RD)/seeds/cc359$(if $(filter sourcefree,$(SEED_GOAL)),_sourcefree).md
seeds: $(SEEDS_REPORT) $(RD)/seeds/cc359_selection.md
$(RD)/seeds/cc359_selection.md: $(SEED_ROOTS) | $(PYDEP)
	$(CC) $(CFLAGS) selection.py --runs $(foreach r,$(SEED_ROOTS),$(patsubst $(CR)/%,$(r)/cc359/%,$(SF_SELECTED))) \
		--out $@ --title "CC359 source-free runs: which epoch ($(NET), seeds $(SEEDS))"
$(SEEDS_REPORT): $(SEED_ROOTS) | $(PYDEP)
	$(CC) $(CFLAGS) report.py cc359_seeds --out $@ --title "$(TITLE)" \
		--scores $(addsuffix /cc359/$(if $(filter sourcefree,$(SEED_GOAL)),sourcefree.csv,scores.csv),$(SEED_ROOTS))
# the archive keeps every file of every output but the checkpoints, except the baselines' final weights
$(PACK): $(OUTPUTS)
	mkdir -p $(@D)
	{ find $^ -type f ! -name '*.pkl'; ls $(addsuffix /last.pkl,$(BASELINES)); } | tar cf - -T - | $(ZIP) > $@_tmp
	mv $@_tmp $@
