# Supervised domain adaptation across CC359's six scanner domains, with SpotTUnet (seed 000), and the
# source-free chain of prostate.make on the same pairs: make -f cc359.make [PRESET=paper]
# Variables: those of common.mk, plus PRESET CCDATA SPACING TOL NPD VAL VAL_T NADD BUDGET_FROM VAL_PAIRS TEST_PAIRS
# BUDGETS TAU_BUDGET TAUS LAMBDAS E_BASE IT_BASE LRD_BASE E_FT IT_FT LRD_FT LR BRAIN_ML (see README).
# Domains: 0 Siemens 1.5T, 1 Siemens 3T, 2 GE 1.5T, 3 GE 3T, 4 Philips 1.5T, 5 Philips 3T; a pair s_t adapts
# the baseline of domain s to domain t.
NET ?= ResUNet
include common.mk
.DEFAULT_GOAL := all
.PHONY: all pack report plot runs sourcefree protoseg transfer layers

# ---------------------------------------------------------------- data and protocol
# PRESET=paper: the paper's protocol on the real release (CCDATA=/data/CC359) in one switch; any of
# these can still be overridden on the command line.
PRESET ?=
ifeq ($(PRESET),paper)
SPACING = 1,0.95,0.95
TOL = 1
VAL = 4
VAL_T = 2
NADD = 3
BUDGETS = 8 12 24 45 90 270 800
TAU_BUDGET = 270
TAUS = 0.01 0.1 0.5 1 2 5
LAMBDAS = 0 0.001 0.003 0.005 0.007 0.01 0.012 0.015 0.02
E_BASE = 100
IT_BASE = 100
LRD_BASE = 80
E_FT = 60
IT_FT = 100
LRD_FT = 45
LR = 1e-3
VAL_PAIRS = 0_1 0_2 0_3 0_4 0_5
SF_LRS = 1e-6 1e-5 5e-5 5e-4
TEST_PAIRS = $(foreach s,1 2 3 4 5,$(foreach t,0 1 2 3 4 5,$(if $(filter $(s),$(t)),,$(s)_$(t))))
else ifneq ($(PRESET),)
$(error PRESET=$(PRESET): the only preset is paper)
endif

CCDATA ?= $(DATA)/cc359# meta.csv + volumes; point it at the real release (cc359.py meta writes its meta.csv)
NPD ?= 8# embedded subjects per domain
SPACING ?= 3,2.85,2.85# mm after resampling; the paper's is 1,0.95,0.95 (3x coarser here for the CPU)
TOL ?= 3# surface Dice tolerance (mm): one voxel here, as the paper's 1 mm is at its spacing
VAL ?= 2# validation scans of a source baseline (paper: 4)
VAL_T ?= $(VAL)# validation scans of the target-domain splits: oracle folds and pairs (paper: 2)
NADD ?= 3# scans in a target's annotation pool; the others are its test scans
# scan: a budget below one scan is N slices evenly spaced over one annotated scan, a larger one whole scans
# then the rest (the paper's code); pool: N spread over all NADD pool scans (a deviation: small budgets then
# see several subjects, which flatters them). Use another DATA/RD when switching, the set names do not say.
BUDGET_FROM ?= scan
VAL_PAIRS ?= 0_3# source Siemens 1.5T: these pairs choose SpotTUnet's tau and lambda
TEST_PAIRS ?= 2_5 4_1
BUDGETS ?= 8 45# annotated target slices; the paper's list: 8 12 24 45 90 270 800
TAU_BUDGET ?= $(lastword $(shell printf '%s\n' $(BUDGETS) | sort -n))# tau is chosen once, here, with lambda 0 (paper: 270)
TAUS ?= 0.1 1# paper's grid: .01 .1 .5 1 2 5
LAMBDAS ?= 0 0.01# paper's grid: 0 .001 .003 .005 .007 .01 .012 .015 .02 (must hold 0)
E_BASE ?= 10# baseline / oracle: epochs x iterations of batch BS (paper 100 x 100 x 16)
IT_BASE ?= 20
LRD_BASE ?= 7# lr x0.1 once, after this (0-based) epoch (paper: 80 of 100)
E_FT ?= 8# fine-tuning: epochs x iterations (paper 60 x 100)
IT_FT ?= 10
LRD_FT ?= 5# lr x0.1 once, after this (0-based) epoch (paper: 45 of 60)
LR ?= 1e-2# SGD lr (paper 1e-3 over 50x more iterations)
BRAIN_ML ?= 1883# published brain volume for the SFDA prior: the MNI152 2009a brain mask (nilearn), in mL
PRIOR_PROFILE ?= mni152# the prior's area per tagged slice: the MNI152 brain's axial profile (flat: even)
SF_LRS ?= 5e-5 5e-4# SFDA Adam learning rates tried on the validation pairs

ifneq ($(filter-out scan pool,$(BUDGET_FROM)),)
$(error BUDGET_FROM=$(BUDGET_FROM): scan (the paper's) or pool)
endif
ifeq ($(filter 0,$(LAMBDAS)),)
$(error LAMBDAS=$(LAMBDAS) must hold 0: tau is chosen with lambda = 0 and the tests compare against it)
endif

G_RGX = CC\d+_\d+
TT_DATA = [('IMG', npy_transform, False), ('GT', gt_transform, False)]
PREP = $(DATA)/cc359_prep
SETS = $(DATA)/cc359_sets
SIZEFILE = $(SIZES)/cc359.csv
CR = $(RD)/cc359
TAUFILE = $(CR)/spottune_tau.csv
SF_PARAMS = $(CR)/sfda_params.csv
PARAMS = $(CR)/spottune_params.csv
VAL_SCORES = $(CR)/val_scores.csv

src = $(word 1,$(subst _, ,$(1)))
tgt = $(word 2,$(subst _, ,$(1)))
budget = $(patsubst n%,%,$(word 3,$(subst _, ,$(1))))
epochs = $(or $(EPC),$(1))
PAIRS = $(VAL_PAIRS) $(TEST_PAIRS)
SOURCES = $(sort $(foreach p,$(PAIRS),$(call src,$(p))))
TARGETS = $(sort $(foreach p,$(TEST_PAIRS),$(call tgt,$(p))))
FT_METHODS = ft_all ft_first ft_last
SF_METHODS = noadapt adabn sfda sfda_truesize

BASELINES = $(addprefix $(CR)/baseline/,$(SOURCES))
BASE = $(SOURCE_RD)/cc359/baseline# the baselines every adaptation starts from (SOURCE_RD: another root's)
ORACLES = $(foreach t,$(TARGETS),$(foreach k,0 1 2,$(CR)/oracle/$(t)/fold$(k)))
FT_RUNS = $(foreach m,$(FT_METHODS) spottune,$(foreach p,$(TEST_PAIRS),$(foreach n,$(BUDGETS),$(CR)/$(m)/$(p)_n$(n))))
# SpotTUnet's validation grid, in the paper's order: every tau at TAU_BUDGET with lambda = 0, then every
# lambda at every budget with the chosen tau (read from $(TAUFILE) when the run starts). The (TAU_BUDGET,
# lambda 0) point of the second grid is the first grid's run of the chosen tau, so it is not run twice.
TAU_RUNS = $(foreach p,$(VAL_PAIRS),$(foreach t,$(TAUS),$(CR)/spottune_val/$(p)_n$(TAU_BUDGET)_tau$(t)_lam0))
LAM_RUNS = $(filter-out %_n$(TAU_BUDGET)_lam0,$(foreach p,$(VAL_PAIRS),$(foreach n,$(BUDGETS),$(foreach l,$(LAMBDAS),\
	$(CR)/spottune_val/$(p)_n$(n)_lam$(l)))))
VAL_RUNS = $(TAU_RUNS) $(LAM_RUNS)
SF_RUNS = $(foreach m,hm $(SF_METHODS),$(addprefix $(CR)/$(m)/,$(TEST_PAIRS)))
SF_VAL_RUNS = $(foreach p,$(VAL_PAIRS),$(foreach lr,$(SF_LRS),$(CR)/sfda_val/$(p)_lr$(lr)))
# seed 002's reuse strategies (ttl, lwft, transfusion): the level k searched on the validation pairs, then tested
REUSE_METHODS = $(if $(filter ResUNet,$(NET)),ttl lwft transfusion)# they cut a residual U-Net's levels: ResUNet only
KS_ttl ?= 0 1 2 3# TruncatedTL: encoder levels kept (3: the whole network, i.e. ft_all)
KS_lwft ?= 1 2 3 4# LWFT: top stages fine-tuned, from the output (7: all of them)
KS_transfusion ?= 0 1 2# TransFusion: levels kept; the ones above halved and trained from scratch
K_BUDGET ?= $(lastword $(shell printf '%s\n' $(BUDGETS) | sort -n))# k is chosen once, at the largest budget
REUSE_PARAMS = $(CR)/reuse_params.csv
REUSE_VAL_RUNS = $(foreach m,$(REUSE_METHODS),$(foreach p,$(VAL_PAIRS),$(foreach k,$(KS_$(m)),$(CR)/$(m)_val/$(p)_n$(K_BUDGET)_k$(k))))
REUSE_RUNS = $(foreach m,$(REUSE_METHODS),$(foreach p,$(TEST_PAIRS),$(foreach n,$(BUDGETS),$(CR)/$(m)/$(p)_n$(n))))
TESTED = $(ORACLES) $(FT_RUNS) $(SF_RUNS) $(REUSE_RUNS)
PLT = $(CR)/violin.png $(CR)/lambda_val.png $(CR)/policy.png
REPORT = $(CR)/report.md
PACK = $(ARCH)/$(REPO)-$(DATE)-$(HASH)-$(HOSTNAME)-cc359-seed$(SEED).tar.gz

all: pack report protoseg transfer layers
runs: $(BASELINES) $(TESTED) $(VAL_RUNS) $(SF_VAL_RUNS) $(REUSE_VAL_RUNS)
sourcefree: $(CR)/sourcefree.csv# the source-free chain alone: baselines, the SFDA rate, hm/noadapt/adabn/sfda/sfda_truesize
pack: $(PACK)
report: $(REPORT)
plot: $(PLT)

$(CCDATA)/meta.csv: | $(PYDEP)
	$(CC) $(CFLAGS) synth.py cc359 --out $(CCDATA) --seed $(DATA_SEED) --n_per_domain $(NPD)

$(PREP): $(CCDATA)/meta.csv | $(PYDEP)
	$(CC) $(CFLAGS) cc359.py prep --meta $< --spacing $(SPACING) --out $@

$(SIZEFILE): $(PREP) | $(PYDEP)
	$(CC) $(CFLAGS) sizes.py --gt_dir $(PREP)/slices/GT --volume_ml $(BRAIN_ML) --spacing $(SPACING) \
		--profile $(PRIOR_PROFILE) --grp_regex "$(G_RGX)" --out $@

# slice sets (symlinks into the cache): baseline_<s>, oracle_<t>_f<k>, pair_<s>_<t>_n<N> / _all, hm_<s>_<t>
# (a pair's validation scans depend on its source: the paper draws them in its sequence of pairs)
SPLIT = $(CC) $(CFLAGS) cc359.py split --prep $(PREP) --n_add $(NADD) --out $@
$(SETS)/baseline_%: $(PREP) | $(PYDEP)
	$(SPLIT) --kind baseline --source $* --n_val $(VAL)
$(SETS)/oracle_%: $(PREP) | $(PYDEP)
	$(SPLIT) --kind oracle --target $(call src,$*) --fold $(subst f,,$(call tgt,$*)) --n_val $(VAL_T)
$(SETS)/pair_%: $(PREP) | $(PYDEP)
	$(SPLIT) --kind pair --source $(call src,$*) --target $(call tgt,$*) --n_val $(VAL_T) --budget $(call budget,$*) --budget_from $(BUDGET_FROM)
$(SETS)/hm_%: $(PREP) | $(PYDEP)
	$(SPLIT) --kind hm --source $(call src,$*) --target $(call tgt,$*) --n_val $(VAL_T) --n_val_source $(VAL)

# ---------------------------------------------------------------- runs
# $(1) run dir, $(2) slice set; OPT = what differs. Every run tests its last-epoch weights on the set's test/.
define RUN
	$(call FRESH,$(1))
	$(LAUNCH) $(CC) $(CFLAGS) main.py --workdir $(1)_tmp --target_dataset $(2) --network $(NET) --n_class 2 --metric_axis 1 \
		--grp_regex "$(G_RGX)" --target_folders="$(TT_DATA)" --val_target_folders="$(TT_DATA)" --batch_size $(BS) \
		--spacing $(SPACING) --sdice_tol $(TOL) $(RUN_NUMERICS) --seed $(SEED) $(OPT) $(EXTRA) $(DEBUG)
	rm -rf $(1) && mv $(1)_tmp $(1)
endef
# the lr drops once, x0.1 after epoch LRD, whatever the number of epochs: the paper's dpipe
# Schedule(epoch2value_multiplier={LRD: 0.1}) (prostate.make keeps seed 004's staircase)
SGD = --optimizer sgd --weight_decay 0 --l_rate $(LR) --lr_decay 0.1 --lr_schedule step_once --target_losses="$(L_OR)"
TRAIN_BASE = $(SGD) --n_epoch $(call epochs,$(E_BASE)) --iterations $(IT_BASE) --lr_decay_epoch $(LRD_BASE)
TRAIN_FT = $(SGD) --n_epoch $(call epochs,$(E_FT)) --iterations $(IT_FT) --lr_decay_epoch $(LRD_FT) \
	--val_every $(call epochs,$(E_FT))

$(CR)/baseline/%: OPT = $(TRAIN_BASE) --save_epochs $(TE_EARLY)# the early checkpoint: a transfer candidate
$(CR)/baseline/%: $(SETS)/baseline_% | $(PYDEP)
	$(call RUN,$@,$<)
# the same training with the online ProtoSeg term (seed 003, Table 1), for the first test pair's source
ONLINE_SRC = $(call src,$(firstword $(TEST_PAIRS)))
$(CR)/baseline_online/%: OPT = $(TRAIN_BASE) --target_losses="$(L_ONLINE)"# (the last --target_losses wins)
$(CR)/baseline_online/%: $(SETS)/baseline_% | $(PYDEP)
	$(call RUN,$@,$<)

# oracle: 3-fold cross-validation inside the target domain
define ORACLE
$(CR)/oracle/$(1)/fold$(2): OPT = $(TRAIN_BASE) --test_folder test
$(CR)/oracle/$(1)/fold$(2): $(SETS)/oracle_$(1)_f$(2) | $(PYDEP)
	$$(call RUN,$$@,$$<)
endef
$(foreach t,$(TARGETS),$(foreach k,0 1 2,$(eval $(call ORACLE,$(t),$(k)))))

# fine-tuning from the source's baseline with N annotated target slices: $(1) method, $(2) pair, $(3) N
OPT_ft_all =
OPT_ft_first = --trainable first
OPT_ft_last = --trainable last
define FINETUNE
$(CR)/$(1)/$(2)_n$(3): OPT = $(TRAIN_FT) --test_folder test --model_weights $(BASE)/$(call src,$(2))/last.pkl $(OPT_$(1))
$(CR)/$(1)/$(2)_n$(3): $(SETS)/pair_$(2)_n$(3) $(BASE)/$(call src,$(2)) | $(PYDEP)
	$$(call RUN,$$@,$$<)
endef
$(foreach m,$(FT_METHODS),$(foreach p,$(TEST_PAIRS),$(foreach n,$(BUDGETS),$(eval $(call FINETUNE,$(m),$(p),$(n))))))

# SpotTUnet on the validation pairs: $(1) pair, $(2) N, $(3) the run's name tail, $(4) tau, $(5) lambda, $(6) more
# prerequisites. The lambda grid's tau is the shell's $$(awk ...) of $(TAUFILE), read when the run starts.
define SPOT_VAL
$(CR)/spottune_val/$(1)_n$(2)$(3): OPT = $(TRAIN_FT) --test_folder test --spottune --tau $(4) --k_reg $(5) \
	--model_weights $(BASE)/$(call src,$(1))/last.pkl
$(CR)/spottune_val/$(1)_n$(2)$(3): $(SETS)/pair_$(1)_n$(2) $(BASE)/$(call src,$(1)) $(6) | $(PYDEP)
	$$(call RUN,$$@,$$<)
endef
$(foreach p,$(VAL_PAIRS),$(foreach t,$(TAUS),$(eval $(call SPOT_VAL,$(p),$(TAU_BUDGET),_tau$(t)_lam0,$(t),0))))
$(foreach p,$(VAL_PAIRS),$(foreach n,$(BUDGETS),$(foreach l,$(LAMBDAS),$(if $(filter $(CR)/spottune_val/$(p)_n$(n)_lam$(l),$(LAM_RUNS)),\
	$(eval $(call SPOT_VAL,$(p),$(n),_lam$(l),$$$$(awk -F, 'NR == 2 {print $$$$2}' $(TAUFILE)),$(l),$(TAUFILE)))))))

$(TAUFILE): $(TAU_RUNS) | $(PYDEP)
	$(CC) $(CFLAGS) report.py choose_tau --runs $^ --budget $(TAU_BUDGET) --out $@
$(PARAMS): $(VAL_RUNS) $(TAUFILE) | $(PYDEP)
	$(CC) $(CFLAGS) report.py choose --runs $(VAL_RUNS) --tau_file $(TAUFILE) --out $@

# (the shell reads columns 2 and 3, tau and lambda, of the budget's row when the recipe runs)
define SPOT_TEST
$(CR)/spottune/$(1)_n$(2): OPT = $(TRAIN_FT) --test_folder test --spottune \
	--tau $$$$(awk -F, '$$$$1 == $(2) {print $$$$2}' $(PARAMS)) --k_reg $$$$(awk -F, '$$$$1 == $(2) {print $$$$3}' $(PARAMS)) \
	--model_weights $(BASE)/$(call src,$(1))/last.pkl
$(CR)/spottune/$(1)_n$(2): $(SETS)/pair_$(1)_n$(2) $(BASE)/$(call src,$(1)) $(PARAMS) | $(PYDEP)
	$$(call RUN,$$@,$$<)
endef
$(foreach p,$(TEST_PAIRS),$(foreach n,$(BUDGETS),$(eval $(call SPOT_TEST,$(p),$(n)))))

# which layers to reuse (seed 002; main.py --reuse METHOD:K): TruncatedTL keeps encoder levels 0..k of the baseline,
# LWFT fine-tunes its top k stages (the output layer at LR, the others at LR/10), TransFusion keeps levels 0..k and
# retrains the ones above at half width. Same baselines, splits, budgets and schedule as ft_all. Each method's k is
# chosen once, on the validation pairs at K_BUDGET, into $(REUSE_PARAMS), which the test runs read when they start.
define REUSE_VAL
$(CR)/$(1)_val/$(2)_n$(K_BUDGET)_k$(3): OPT = $(TRAIN_FT) --test_folder test --reuse $(1):$(3) \
	--model_weights $(BASE)/$(call src,$(2))/last.pkl
$(CR)/$(1)_val/$(2)_n$(K_BUDGET)_k$(3): $(SETS)/pair_$(2)_n$(K_BUDGET) $(BASE)/$(call src,$(2)) | $(PYDEP)
	$$(call RUN,$$@,$$<)
endef
$(foreach m,$(REUSE_METHODS),$(foreach p,$(VAL_PAIRS),$(foreach k,$(KS_$(m)),$(eval $(call REUSE_VAL,$(m),$(p),$(k))))))
$(REUSE_PARAMS): $(REUSE_VAL_RUNS) | $(PYDEP)
	$(CC) $(CFLAGS) report.py choose_k --runs $^ --out $@
define REUSE_TEST
$(CR)/$(1)/$(2)_n$(3): OPT = $(TRAIN_FT) --test_folder test --model_weights $(BASE)/$(call src,$(2))/last.pkl \
	--reuse $(1):$$$$(awk -F, '$$$$1 == "$(1)" {print $$$$2}' $(REUSE_PARAMS))
$(CR)/$(1)/$(2)_n$(3): $(SETS)/pair_$(2)_n$(3) $(BASE)/$(call src,$(2)) $(REUSE_PARAMS) | $(PYDEP)
	$$(call RUN,$$@,$$<)
endef
$(foreach m,$(REUSE_METHODS),$(foreach p,$(TEST_PAIRS),$(foreach n,$(BUDGETS),$(eval $(call REUSE_TEST,$(m),$(p),$(n))))))

# no training: histogram matching to the source's training voxels, then the baseline predicts
# source-free (prostate.make's chain): the target's unlabelled pool, the baseline, the size prior
M_EVAL = --n_epoch 0 --test_folder test --target_losses="$(L_OR)"
OPT_hm = $(M_EVAL)
OPT_noadapt = $(M_EVAL)
OPT_adabn = $(M_EVAL) --adabn
# SFDA's Adam learning rate is chosen like SpotTUnet's parameters: sfda on the validation pairs at every rate
# of SF_LRS (sfda_val/<s>_<t>_lr<lr>), the best mean surface Dice -> $(SF_PARAMS), which the test runs read.
# The test runs validate every epoch and log mu (MU_OPT), so that the epochs chosen by the target labels, by mu and
# the last one can be compared (the report's selection table; test scores of all three).
SFDA_OPT = --n_epoch $(call epochs,$(E_FT)) --iterations $(IT_FT) --val_every $(call epochs,$(E_FT)) --test_folder test \
	--lr_decay 1
SF_TEST_OPT = $(SFDA_OPT) --val_every 1 $(MU_OPT)
SF_LR = $$$$(awk -F, 'NR == 2 {print $$$$1}' $(SF_PARAMS))# read by the shell when the run starts (after call + eval)
OPT_sfda = $(SF_TEST_OPT) --l_rate $(SF_LR) --target_losses="$(call SFDA_LOSS,dumbpredwtags)" $(GUARD_OPT)
OPT_sfda_truesize = $(SF_TEST_OPT) --l_rate $(SF_LR) --target_losses="$(call SFDA_LOSS,val_gt_size)" $(GUARD_OPT)
define SOURCE_FREE
$(CR)/$(1)/$(2): OPT = $(OPT_$(1)) --model_weights $(BASE)/$(call src,$(2))/last.pkl
$(CR)/$(1)/$(2): $(if $(filter hm,$(1)),$(SETS)/hm_$(2),$(SETS)/pair_$(2)_all) $(BASE)/$(call src,$(2)) \
		$(if $(filter sfda%,$(1)),$(SIZEFILE) $(SF_PARAMS)) | $(PYDEP)
	$$(call RUN,$$@,$$<)
endef
$(foreach m,hm $(SF_METHODS),$(foreach p,$(TEST_PAIRS),$(eval $(call SOURCE_FREE,$(m),$(p)))))

define SFDA_VAL
$(CR)/sfda_val/$(1)_lr$(2): OPT = $(SFDA_OPT) --l_rate $(2) --target_losses="$(call SFDA_LOSS,dumbpredwtags)" $(GUARD_OPT) \
	--model_weights $(BASE)/$(call src,$(1))/last.pkl
$(CR)/sfda_val/$(1)_lr$(2): $(SETS)/pair_$(1)_all $(BASE)/$(call src,$(1)) $(SIZEFILE) | $(PYDEP)
	$$(call RUN,$$@,$$<)
endef
$(foreach p,$(VAL_PAIRS),$(foreach lr,$(SF_LRS),$(eval $(call SFDA_VAL,$(p),$(lr)))))
$(SF_PARAMS): $(SF_VAL_RUNS) | $(PYDEP)
	$(CC) $(CFLAGS) report.py choose_lr --runs $^ --out $@

# ---------------------------------------------------------------- ProtoSeg (seed 003): which layers carry the shift
# per test pair: the source baseline on its own validation scans and on the target's test scans, and every
# source-free model (last epoch) on the target's test scans; then one report and figure per pair
PS = $(CR)/protoseg
PS_MODELS = adabn sfda sfda_truesize
PS_RUNS = $(foreach p,$(TEST_PAIRS),$(addprefix $(PS)/$(p)/,baseline_on_source baseline $(PS_MODELS)))
PROTOSEG = $(LAUNCH) $(CC) $(CFLAGS) protoseg.py --network $(NET) $(if $(THREADS),--threads $(THREADS)) --folders "$(TT_DATA)" --grp_regex "$(G_RGX)" $(DEBUG)
PS_ONLINE = $(PS)/$(firstword $(TEST_PAIRS))/baseline_online_on_source
SELECTION = $(CR)/selection.md# the source-free runs' epochs chosen by labels, by mu and the last, tested
SF_SELECTED = $(foreach m,sfda sfda_truesize,$(addprefix $(CR)/$(m)/,$(TEST_PAIRS)))
SHIFT_POLICY = $(PS)/shift_vs_policy.md# per layer: the SA drop under shift against SpotTUnet's fine-tuning share
protoseg: $(foreach p,$(TEST_PAIRS),$(PS)/$(p)/report.md $(PS)/$(p)/sa_layers.png) $(SELECTION) $(SHIFT_POLICY)
$(SHIFT_POLICY:.md=.csv): | $(SHIFT_POLICY) ;
$(SHIFT_POLICY): $(foreach p,$(TEST_PAIRS),$(PS)/$(p)/baseline_on_source $(PS)/$(p)/baseline) \
		$(filter $(CR)/spottune/%,$(FT_RUNS)) | $(PYDEP)
	$(CC) $(CFLAGS) protoseg.py shift --pairs $(addprefix $(PS)/,$(TEST_PAIRS)) --policies $(filter $(CR)/spottune/%,$^) \
		--out $@ --title "CC359: where the shift hits ($(NET) baselines, seed $(SEED)), and what SpotTUnet fine-tunes"
$(PS_ONLINE): $(CR)/baseline_online/$(ONLINE_SRC) $(SETS)/baseline_$(ONLINE_SRC) | $(PYDEP)
	$(PROTOSEG) --model $</last.pkl --split $(SETS)/baseline_$(ONLINE_SRC)/val --out $@ \
		--title "online-ProtoSeg baseline $(ONLINE_SRC) on its validation scans"
$(SELECTION:.md=.csv): | $(SELECTION) ;
$(SELECTION): $(SF_SELECTED) | $(PYDEP)
	$(CC) $(CFLAGS) selection.py --runs $^ --out $@ --title "CC359 source-free runs: which epoch ($(NET), seed $(SEED))"
define PROTOSEG_PAIR
$(PS)/$(1)/baseline_on_source: $(BASE)/$(call src,$(1)) $(SETS)/baseline_$(call src,$(1)) | $(PYDEP)
	$(PROTOSEG) --model $(BASE)/$(call src,$(1))/last.pkl --split $(SETS)/baseline_$(call src,$(1))/val --out $$@ \
		--title "baseline $(call src,$(1)) on its validation scans"
$(PS)/$(1)/baseline: $(BASE)/$(call src,$(1)) $(SETS)/pair_$(1)_all | $(PYDEP)
	$(PROTOSEG) --model $(BASE)/$(call src,$(1))/last.pkl --split $(SETS)/pair_$(1)_all/test --out $$@ \
		--title "baseline $(call src,$(1)) on the test scans of domain $(call tgt,$(1))"
$(foreach m,$(PS_MODELS),$(PS)/$(1)/$(m)): $(PS)/$(1)/%: $(CR)/%/$(1) $(SETS)/pair_$(1)_all | $(PYDEP)
	$(PROTOSEG) --model $(CR)/$$*/$(1)/last.pkl --split $(SETS)/pair_$(1)_all/test --out $$@ \
		--title "$$* on the test scans of domain $(call tgt,$(1))"
$(PS)/$(1)/report.md $(PS)/$(1)/sa_layers.png: $(addprefix $(PS)/$(1)/,baseline_on_source baseline $(PS_MODELS)) \
	$(if $(filter $(1),$(firstword $(TEST_PAIRS))),$(PS_ONLINE))
$(PS)/$(1)/report.md: | $(PYDEP)
	$(CC) $(CFLAGS) protoseg.py report --runs $$^ --out $$@ --title "ProtoSeg on CC359, pair $(1) ($(NET), seed $(SEED))"
$(PS)/$(1)/sa_layers.png: | $(PYDEP)
	$(CC) $(CFLAGS) plot.py --sa_runs $$^ --out $$@
endef
$(foreach p,$(TEST_PAIRS),$(eval $(call PROTOSEG_PAIR,$(p))))

# ---------------------------------------------------------------- which pre-trained model to reuse (seed 001)
# per target domain t of TE_TARGETS: a bank of candidate checkpoints, scored by transfer.py on voxels sampled once
# on t's annotated pool (the same voxels for every model), and each fine-tuned (ft_all, the chain's schedule) on
# that pool with every seed of TE_SEEDS, tested on t's test scans: transfer/<t>/{voxels.npz,score/,ft/}, then seed
# 001's tables in transfer/report.md. The pool and test scans are those of the first test pair that targets t, else
# of the pair from the first other domain (a pair's pool and test scans depend on its target alone): any t of 0..5.
TE = $(CR)/transfer
TE_TARGETS ?= $(TARGETS)
TE_SEEDS ?= 0 1# fine-tuning seeds; the first two give the ceiling (their rankings' weighted tau)
TE_EARLY ?= $(if $(filter 1,$(call epochs,$(E_BASE))),0,1)# every baseline after this (0-based) epoch is a candidate too
TE_NARROW ?= 8# width of the narrower baseline (ResUNet's default: 16)
TE_DOMAINS ?= 0 1 2 3 4 5# the domains whose baselines (but the target's own) enter the default bank
TE_SLICES_DEFAULT = 16
TE_SLICES ?= $(TE_SLICES_DEFAULT)# voxels drawn from this many slices per pool case (all: every slice); the forward pass
# scales with it (16 of 57 here: 0.9-1.2 s against 2.5-2.7 s idle, and the taus as close to every slice's as two
# voxel draws' are to each other; README, "Which pre-trained model to reuse")
TE_VOXEL_SEED ?= 0# the voxel draw's seed
# another voxel draw scores the bank again beside the default one, against the same fine-tunings: voxels<TE_VOX>.npz,
# score<TE_VOX>/, report<TE_VOX>.md, scores<TE_VOX>.csv, scatter<TE_VOX>.png
TE_VOX = $(if $(filter-out 0,$(TE_VOXEL_SEED)),_seed$(TE_VOXEL_SEED))$(if $(filter-out $(TE_SLICES_DEFAULT),$(TE_SLICES)),_slices$(TE_SLICES))
TE_TITLE = Which pre-trained model to reuse: CC359 ($(NET) bank, seed $(SEED), targets $(TE_TARGETS); voxels drawn with \
	seed $(TE_VOXEL_SEED) from $(TE_SLICES) slices per case)
te_pair = $(or $(firstword $(foreach p,$(TEST_PAIRS),$(if $(filter $(1),$(call tgt,$(p))),$(p)))),\
	$(firstword $(filter-out $(1),0 1 2 3 4 5))_$(1))
te_others = $(filter-out $(1),$(TE_DOMAINS))
# the default bank of target $(1): every other domain's baseline, also at epoch TE_EARLY; a narrower baseline; a
# random initialisation (the paper's "no pre-train", fine-tuned like the others); prostate.make's source model
# (another organ and scanner: seed 001's bank is cross-task). TE_BANK (checkpoint paths) replaces it for every target.
te_default_bank = $(foreach d,$(call te_others,$(1)),$(CR)/baseline/$(d)/last.pkl $(CR)/baseline/$(d)/epoch$(TE_EARLY).pkl) \
	$(CR)/baseline_narrow/$(firstword $(call te_others,$(1)))/last.pkl $(CR)/random/last.pkl $(RD)/prostate/cesource/best_3d.pkl
TE_BANK ?=
te_bank = $(or $(TE_BANK),$(call te_default_bank,$(1)))
te_name = $(subst /,_,$(patsubst $(RD)/%,%,$(patsubst $(CR)/%,%,$(basename $(1)))))# baseline_1_last, prostate_cesource_best_3d
TRANSFER = $(CC) $(CFLAGS) transfer.py
TE_DATA = --folders "$(TT_DATA)" --grp_regex "$(G_RGX)" --n_class 2
TE_SCORES = $(foreach t,$(TE_TARGETS),$(foreach c,$(call te_bank,$(t)),$(TE)/$(t)/score$(TE_VOX)/$(call te_name,$(c)).csv))
TE_FT = $(foreach t,$(TE_TARGETS),$(foreach c,$(call te_bank,$(t)),$(foreach k,$(TE_SEEDS),$(TE)/$(t)/ft/$(call te_name,$(c))_s$(k))))
transfer: $(TE)/report$(TE_VOX).md

# the candidates the chain trains: checkpoints of run directories, made by the run (an empty recipe; order-only, as a
# run directory's time changes after its checkpoints are written); a .csv beside a .md: written with it
$(CR)/baseline/%/last.pkl $(CR)/baseline/%/epoch$(TE_EARLY).pkl: | $(CR)/baseline/% ;
$(CR)/baseline_narrow/%/last.pkl: | $(CR)/baseline_narrow/% ;
$(CR)/random/last.pkl: | $(CR)/random ;
$(CR)/baseline_narrow/%: OPT = $(TRAIN_BASE) --net_width $(TE_NARROW)
$(CR)/baseline_narrow/%: $(SETS)/baseline_% | $(PYDEP)
	$(call RUN,$@,$<)
# what the pattern rules make on the way is kept, where make would delete it as an intermediate file (.PRECIOUS takes
# the rules' target patterns as written). Not a bare .SECONDARY:, which makes every target intermediate: a missing
# file is then never remade while what needs it is newer (a TE_TARGETS added was called up to date).
.PRECIOUS: $(SETS)/baseline_% $(SETS)/oracle_% $(SETS)/pair_% $(SETS)/hm_% $(CR)/baseline/% $(CR)/baseline_online/% \
	$(CR)/baseline/%/last.pkl $(CR)/baseline/%/epoch$(TE_EARLY).pkl $(CR)/baseline_narrow/% $(CR)/baseline_narrow/%/last.pkl
$(CR)/random: OPT = --n_epoch 0 --target_losses="$(L_OR)"# weights as initialised with the run's seed
$(CR)/random: $(SETS)/baseline_0 | $(PYDEP)
	$(call RUN,$@,$<)
$(RD)/prostate/cesource/best_3d.pkl: | $(PYDEP)
	+$(MAKE) -f prostate.make $(RD)/prostate/cesource

# $(1) target, $(2) checkpoint
define TRANSFER_CANDIDATE
$(TE)/$(1)/score$(TE_VOX)/$(call te_name,$(2)).csv: $(2) $(TE)/$(1)/voxels$(TE_VOX).npz | $(PYDEP)
	$(LAUNCH) $(TRANSFER) score --model $(2) --name $(call te_name,$(2)) --voxels $(TE)/$(1)/voxels$(TE_VOX).npz \
		--pool $(SETS)/pair_$(call te_pair,$(1))_all/train $(TE_DATA) $(if $(THREADS),--threads $(THREADS)) --out $$@
$(TE)/$(1)/ft/$(call te_name,$(2))_s%: OPT = $(TRAIN_FT) --test_folder test --model_weights $(2) --network checkpoint \
	--new_head --seed $$*
$(TE)/$(1)/ft/$(call te_name,$(2))_s%: $(2) $(SETS)/pair_$(call te_pair,$(1))_all | $(PYDEP)
	$$(call RUN,$$@,$(SETS)/pair_$(call te_pair,$(1))_all)
endef
define TRANSFER_TARGET
$(TE)/$(1)/voxels$(TE_VOX).npz: $(SETS)/pair_$(call te_pair,$(1))_all | $(PYDEP)
	$(TRANSFER) sample --pool $$</train $(TE_DATA) --seed $(TE_VOXEL_SEED) $(if $(filter-out all,$(TE_SLICES)),--slices_per_case $(TE_SLICES)) \
		--out $$@
endef
$(if $(filter-out 0 1 2 3 4 5,$(TE_TARGETS)),$(error TE_TARGETS=$(TE_TARGETS): target domains are 0..5))
$(foreach t,$(TE_TARGETS),$(eval $(call TRANSFER_TARGET,$(t))))
$(foreach t,$(TE_TARGETS),$(foreach c,$(call te_bank,$(t)),$(eval $(call TRANSFER_CANDIDATE,$(t),$(c)))))
$(TE)/report$(TE_VOX).md: $(TE_SCORES) $(TE_FT) | $(PYDEP)
	$(TRANSFER) report --scores $(TE_SCORES) --ft $(TE_FT) --out $@ --table $(TE)/scores$(TE_VOX).csv \
		--plot $(TE)/scatter$(TE_VOX).png --title "$(TE_TITLE)"

# ---------------------------------------------------------------- which layers carry the shift (seed 002)
# per test pair, at K_BUDGET: SVCCA per feature layer between the baseline and each fine-tuned model (SpotTUnet: its
# tuned copy) on the target's test slices, with a randomly initialised network's line, and every baseline layer
# against every ft_all layer (layers/<pair>/); the size, multiply-adds and CPU time of every fine-tuned model beside
# its test scores (layers/complexity.csv, .md), after the runs (order-only: never beside a training of this
# make); and per layer the three views of the shift side by side (layers/anatomy.md, .csv, .png).
LY = $(CR)/layers
LY_MODELS = ft_all $(REUSE_METHODS) spottune
LY_PAIRS = $(addprefix $(LY)/,$(TEST_PAIRS))
# what the timings wait for: every other job of the chain (empty: time at once)
LY_AFTER ?= $(TESTED) $(VAL_RUNS) $(SF_VAL_RUNS) $(REUSE_VAL_RUNS) $(LY_PAIRS) $(PS_RUNS) $(PS_ONLINE) $(TE_SCORES) $(TE_FT)
SVCCA = $(CC) $(CFLAGS) svcca.py
LY_OUT = $(if $(REUSE_METHODS),$(LY)/anatomy.md $(LY)/complexity.csv $(LY)/complexity.md $(LY_PAIRS))
layers: $(LY_OUT)
define LAYERS_PAIR
$(LY)/$(1): $(BASE)/$(call src,$(1)) $(foreach m,$(LY_MODELS),$(CR)/$(m)/$(1)_n$(K_BUDGET)) $(SETS)/pair_$(1)_all | $(PYDEP)
	$(LAUNCH) $(SVCCA) layers --base $(BASE)/$(call src,$(1))/last.pkl \
		--models $(foreach m,$(LY_MODELS),$(m)=$(CR)/$(m)/$(1)_n$(K_BUDGET)/last.pkl) --split $(SETS)/pair_$(1)_all/test \
		--folders "$(TT_DATA)" --grp_regex "$(G_RGX)" --seed $(SEED) $(if $(THREADS),--threads $(THREADS)) $(DEBUG) \
		--out $$@ --title "pair $(1), N = $(K_BUDGET): SVCCA of each layer with the baseline's, target test slices"
endef
$(foreach p,$(TEST_PAIRS),$(eval $(call LAYERS_PAIR,$(p))))
$(LY)/complexity.md: | $(LY)/complexity.csv ;
$(LY)/complexity.csv: $(filter-out $(CR)/ft_first/% $(CR)/ft_last/%,$(FT_RUNS)) $(REUSE_RUNS) $(REUSE_PARAMS) \
		| $(PYDEP) $(LY_AFTER)
	$(SVCCA) complexity --runs $(filter-out $(REUSE_PARAMS),$^) --params $(REUSE_PARAMS) \
		--split $(SETS)/pair_$(firstword $(TEST_PAIRS))_all/test --folders "$(TT_DATA)" --grp_regex "$(G_RGX)" $(DEBUG) \
		--out $@ --title "Which layers to reuse (seed 002): score, size and cost of the fine-tuned models ($(NET), seed $(SEED))"
$(LY)/anatomy.md: $(SHIFT_POLICY) $(LY_PAIRS) | $(PYDEP)
	$(SVCCA) anatomy --shift $(SHIFT_POLICY:.md=.csv) --svcca $(LY_PAIRS) --out $@ \
		--title "CC359: which layers carry the shift, three views ($(NET) baselines, seed $(SEED))"

# ---------------------------------------------------------------- several training seeds
# make -f cc359.make SEEDS="0 1 2" [-j2 THREADS=1] [SEED_GOAL=sourcefree]: $(RD)/seed<s>/cc359/..., then the tables
# as mean ± sd over seeds
ALL_SETS = $(addprefix $(SETS)/,$(addprefix baseline_,$(SOURCES)) $(foreach t,$(TARGETS),$(foreach k,0 1 2,oracle_$(t)_f$(k))) \
	$(foreach p,$(PAIRS),$(foreach n,$(BUDGETS),pair_$(p)_n$(n)) pair_$(p)_all) $(addprefix hm_,$(TEST_PAIRS)))
SEEDS_REPORT = $(RD)/seeds/cc359$(if $(filter sourcefree,$(SEED_GOAL)),_sourcefree).md
SEED_SCORES = $(if $(filter sourcefree,$(SEED_GOAL)),sourcefree.csv,scores.csv)
$(eval $(call SEED_CHAINS,$(SIZEFILE) $(ALL_SETS)))
SEEDS_SELECTION = $(RD)/seeds/cc359_selection.md
seeds: $(SEEDS_REPORT) $(SEEDS_SELECTION)
$(SEEDS_SELECTION): $(SEED_ROOTS) | $(PYDEP)
	$(CC) $(CFLAGS) selection.py --runs $(foreach r,$(SEED_ROOTS),$(patsubst $(CR)/%,$(r)/cc359/%,$(SF_SELECTED))) \
		--out $@ --title "CC359 source-free runs: which epoch ($(NET), seeds $(SEEDS))"
$(SEEDS_REPORT): $(SEED_ROOTS) | $(PYDEP)
	$(CC) $(CFLAGS) report.py cc359_seeds --scores $(addsuffix /cc359/$(SEED_SCORES),$(SEED_ROOTS)) --out $@ \
		--title "CC359 domain adaptation ($(NET), seeds $(SEEDS), spacing $(SPACING) mm, surface Dice at $(TOL) mm)"

# ---------------------------------------------------------------- report, plots, archive
$(CR)/scores.csv: $(TESTED) | $(PYDEP)
	$(CC) $(CFLAGS) report.py collect --runs $^ --out $@
$(CR)/sourcefree.csv: $(SF_RUNS) | $(PYDEP)
	$(CC) $(CFLAGS) report.py collect --runs $^ --out $@
$(CR)/violin.png: $(CR)/scores.csv | $(PYDEP)
	$(CC) $(CFLAGS) moustache.py --scores $< --out $@
$(CR)/lambda_val.png: $(VAL_RUNS) | $(PYDEP)
	$(CC) $(CFLAGS) plot.py --lambda_runs $^ --out $@
$(CR)/policy.png: $(filter $(CR)/spottune/%,$(FT_RUNS)) | $(PYDEP)
	$(CC) $(CFLAGS) plot.py --policy_runs $^ --out $@
$(VAL_SCORES): $(VAL_RUNS) | $(PYDEP)
	$(CC) $(CFLAGS) report.py collect --runs $^ --out $@
$(REPORT): $(CR)/scores.csv $(PARAMS) $(TAUFILE) $(VAL_SCORES) | $(PYDEP)
	$(CC) $(CFLAGS) report.py cc359 --scores $< --params $(PARAMS) --tau_file $(TAUFILE) --val_scores $(VAL_SCORES) --out $@ \
		--title "CC359 domain adaptation ($(NET), seed $(SEED), spacing $(SPACING) mm, surface Dice at $(TOL) mm)"

# the archive keeps every file of every run but the checkpoints, except the baselines' final weights
$(PACK): $(BASELINES) $(TESTED) $(VAL_RUNS) $(SF_VAL_RUNS) $(if $(REUSE_METHODS),$(REUSE_VAL_RUNS) $(REUSE_PARAMS)) $(SF_PARAMS) $(TAUFILE) $(PARAMS) $(CR)/scores.csv $(VAL_SCORES) $(PLT) $(REPORT) $(SIZEFILE) \
		$(PS_RUNS) $(PS_ONLINE) $(CR)/baseline_online/$(ONLINE_SRC) $(foreach p,$(TEST_PAIRS),$(PS)/$(p)/report.md $(PS)/$(p)/sa_layers.png) \
		$(SELECTION) $(SELECTION:.md=.csv) $(SHIFT_POLICY) $(SHIFT_POLICY:.md=.csv) $(TE)/report$(TE_VOX).md $(TE_SCORES) $(TE_FT) \
		$(LY_OUT)
	mkdir -p $(@D)
	{ find $^ -type f ! -name '*.pkl'; ls $(addsuffix /last.pkl,$(BASELINES)); } | tar cf - -T - | $(ZIP) > $@_tmp
	mv $@_tmp $@
