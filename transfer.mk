# Which pre-trained model to reuse (seed 001), included by cc359.make. Per target domain t of TE_TARGETS: a bank of
# candidate checkpoints, scored by transfer.py on voxels sampled once on t's annotated pool (the same voxels for
# every model), and each fine-tuned (ft_all's schedule) on that pool with every seed of TE_SEEDS and tested on t's
# test scans: transfer/<t>/{voxels.npz,score/,ft/}, then seed 001's tables in transfer/report.md. The pool and test
# scans are those of the first test pair that targets t, else of the pair from the first other domain (a pair's pool
# and test scans depend on its target alone).
include prostate_source.mk
TE = $(CR)/transfer
TE_TARGETS ?= $(TARGETS)
TE_SEEDS ?= 0 1# fine-tuning seeds; the first two give the ceiling (their rankings' weighted tau)
TE_EARLY ?= $(if $(filter 1,$(call epochs,$(E_BASE))),0,1)# every baseline after this (0-based) epoch is a candidate too
TE_NARROW ?= 8# width of the narrower baseline (ResUNet's default: 16)
TE_DOMAINS ?= 0 1 2 3 4 5# the domains whose baselines (but the target's own) enter the default bank
TE_SLICES_DEFAULT = 16
TE_SLICES ?= $(TE_SLICES_DEFAULT)# voxels drawn from this many slices per pool case (all: every slice)
TE_VOXEL_SEED ?= 0# the voxel draw's seed
# another voxel draw scores the bank again beside the default one, against the same fine-tunings: voxels<TE_VOX>.npz,
# score<TE_VOX>/, report<TE_VOX>.md, scores<TE_VOX>.csv, scatter<TE_VOX>.png
TE_VOX = $(if $(filter-out 0,$(TE_VOXEL_SEED)),_seed$(TE_VOXEL_SEED))$(if $(filter-out $(TE_SLICES_DEFAULT),$(TE_SLICES)),_slices$(TE_SLICES))
# the features every estimator scores: raw (the decoder taps as they are) or instnorm (standardised per case and
# channel, then LeakyReLU: what the official CC-FV code reads from nnU-Net); instnorm scores into score<TE_TAG>/ etc.
TE_FEATURES ?= raw
$(if $(filter-out raw instnorm,$(TE_FEATURES)),$(error TE_FEATURES=$(TE_FEATURES): expected raw or instnorm))
TE_TAG = $(TE_VOX)$(if $(filter instnorm,$(TE_FEATURES)),_instnorm)
$(if $(filter-out $(DOMAINS),$(TE_TARGETS)),$(error TE_TARGETS=$(TE_TARGETS): target domains are 0..5))

te_pair = $(or $(firstword $(foreach p,$(TEST_PAIRS),$(if $(filter $(1),$(call tgt,$(p))),$(p)))),\
	$(firstword $(filter-out $(1),$(DOMAINS)))_$(1))
te_others = $(filter-out $(1),$(TE_DOMAINS))
# the default bank of target $(1): every other domain's baseline, also at epoch TE_EARLY; a narrower baseline; a random
# initialisation (the paper's "no pre-train", fine-tuned like the others); prostate's source model (another organ and
# scanner: seed 001's bank is cross-task). TE_BANK (checkpoint paths) replaces it for every target.
te_default_bank = $(foreach d,$(call te_others,$(1)),$(CR)/baseline/$(d)/last.pkl $(CR)/baseline/$(d)/epoch$(TE_EARLY).pkl) \
	$(CR)/baseline_narrow/$(firstword $(call te_others,$(1)))/last.pkl $(CR)/random/last.pkl $(CES)/best_3d.pkl
TE_BANK ?=
te_bank = $(or $(TE_BANK),$(call te_default_bank,$(1)))
te_name = $(subst /,_,$(patsubst $(RD)/%,%,$(patsubst $(CR)/%,%,$(basename $(1)))))# baseline_1_last, prostate_cesource_best_3d
te_target = $(word 1,$(subst /, ,$(patsubst $(TE)/%,%,$(1))))# the target of a transfer/<t>/... file
te_checkpoint = $(firstword $(foreach c,$(call te_bank,$(call te_target,$(1))),$(if $(filter $(2),$(call te_name,$(c))),$(c))))
te_pool = $(SETS)/pair_$(call te_pair,$(call te_target,$(1)))_all
TE_SCORES = $(foreach t,$(TE_TARGETS),$(foreach c,$(call te_bank,$(t)),$(TE)/$(t)/score$(TE_TAG)/$(call te_name,$(c)).csv))
TE_FT = $(foreach t,$(TE_TARGETS),$(foreach c,$(call te_bank,$(t)),$(foreach k,$(TE_SEEDS),$(TE)/$(t)/ft/$(call te_name,$(c))_s$(k))))
TE_VOXELS = $(foreach t,$(TE_TARGETS),$(TE)/$(t)/voxels$(TE_VOX).npz)
TE_REPORT = $(TE)/report$(TE_TAG).md
TE_OUT = $(TE_REPORT) $(TE_SCORES) $(TE_FT)
TE_TITLE = Which pre-trained model to reuse: CC359 ($(NET) bank, seed $(SEED), targets $(TE_TARGETS); voxels drawn with \
	seed $(TE_VOXEL_SEED) from $(TE_SLICES) slices per case; $(TE_FEATURES) features)
TE_DATA = --folders "$(TT_DATA)" --grp_regex "$(G_RGX)" --n_class 2
transfer: $(TE_REPORT)

# the candidates the chain trains (the baselines are cc359.make's): checkpoints, made by their run (an empty recipe;
# order-only, as a run directory's time changes after its checkpoints are written)
NARROW_RUNS = $(addprefix $(CR)/baseline_narrow/,$(DOMAINS))
$(NARROW_RUNS): OPT = $(TRAIN_BASE) --net_width $(TE_NARROW)
$(CR)/random: OPT = --n_epoch 0 --target_losses="$(L_OR)"# weights as initialised with the run's seed
$(NARROW_RUNS): $$(SETS)/baseline_$$(@F) | $(PYDEP)
	$(TRAIN)
$(CR)/random: $(SETS)/baseline_0 | $(PYDEP)
	$(TRAIN)
$(sort $(filter-out $(CES)/%,$(filter $(CR)/%.pkl,$(foreach t,$(TE_TARGETS),$(call te_bank,$(t)))))): | $$(@D) ;

$(TE_VOXELS): $$(call te_pool,$$@) | $(PYDEP)
	$(CC) $(CFLAGS) transfer.py sample --pool $</train $(TE_DATA) --seed $(TE_VOXEL_SEED) \
		$(if $(filter-out all,$(TE_SLICES)),--slices_per_case $(TE_SLICES)) --out $@
$(TE_SCORES): $$(call te_checkpoint,$$@,$$(basename $$(@F))) $$(dir $$(@D))voxels$(TE_VOX).npz $$(call te_pool,$$@) | $(PYDEP)
	$(LAUNCH) $(CC) $(CFLAGS) transfer.py score --model $< --name $(basename $(@F)) --voxels $(word 2,$^) \
		--pool $(word 3,$^)/train $(TE_DATA) $(if $(THREADS),--threads $(THREADS)) --features $(TE_FEATURES) --out $@
$(TE_FT): OPT = $(TRAIN_FT) --model_weights $(word 2,$^) --network checkpoint --new_head --seed $(patsubst s%,%,$(lastword $(subst _, ,$(@F))))
$(TE_FT): $$(call te_pool,$$@) $$(call te_checkpoint,$$@,$$(patsubst %_$$(lastword $$(subst _, ,$$(@F))),%,$$(@F))) | $(PYDEP)
	$(TRAIN)
$(TE_REPORT): $(TE_SCORES) $(TE_FT) | $(PYDEP)
	$(CC) $(CFLAGS) transfer.py report --scores $(TE_SCORES) --ft $(TE_FT) --out $@ --table $(TE)/scores$(TE_TAG).csv \
		--plot $(TE)/scatter$(TE_TAG).png --title "$(TE_TITLE)"
