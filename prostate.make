# Source-free domain adaptation on prostate MRI (seed 004): make -f prostate.make
# Variables: CC CFLAGS NET EPC DEBUG BS PREC EXTRA RD DATA SIZES ARCH SEED DATA_SEED (see common.mk and README),
# SHIFT: default (the target scanner) or hard (target_hard: a source model barely transfers to it).
include common.mk
include sourcefree.mk
# your own volumes: SRC_VOLS and TGT_VOLS, each a dataset (dataset.json: nnU-Net v2, Decathlon) or a folder with images/
# and labels/, sliced by volumes.py into $(DATA)/<folder name>_slices (VOL_OPT: its options for the source, e.g.
# --channel 0 --labels 1,2:1 --spacing 0.6,0.6; the target is sliced like the source); the chain runs on those slices
# into $(RD)/<target folder name>. make predict PREDICT_IN=<volumes> [PREDICT_RUN=sfda]: a run's NIfTI segmentations.
SRC_VOLS ?=
TGT_VOLS ?=
VOL_OPT ?=
# TGT_TAGS=<csv>: the target's volumes have no labels, only tags (volume,class,first,last: the first and last slice,
# in the volume file's voxel index, that contain the class); the label-free chain runs: noadapt, adabn, sfda (no fs, no
# TrueSize, no Dice: they read target labels), and mu chooses the model to deploy ($(PR)/label_free.md)
TGT_TAGS ?=
LABEL_FREE = $(if $(TGT_TAGS),--label_free)
vol_name = $(notdir $(abspath $(1)))
ifneq ($(SRC_VOLS)$(TGT_VOLS)$(TGT_TAGS),)
$(if $(and $(SRC_VOLS),$(TGT_VOLS)),,$(error SRC_VOLS and TGT_VOLS go together (TGT_TAGS: the tags of TGT_VOLS)))
SRC_NAME = $(call vol_name,$(SRC_VOLS))
SRC = $(DATA)/$(SRC_NAME)_slices
SHIFT = $(call vol_name,$(TGT_VOLS))
endif
include prostate_source.mk
.DEFAULT_GOAL := $(if $(filter seed,$(RECIPE)),$(if $(SEEDS),seeds,recipe),$(CHAIN_GOAL))
.PHONY: all recipe lrgrid protoseg sourcefree

SHIFT ?= default
ifneq ($(SRC_VOLS),)
TDOM = $(SHIFT)_slices
PR = $(RD)/$(SHIFT)
SIZEFILE = $(SIZES)/$(SHIFT).csv
else ifeq ($(SHIFT),default)
TDOM = prostate_target
PR = $(RD)/prostate
SIZEFILE = $(SIZES)/prostate.csv
else ifeq ($(SHIFT),hard)
TDOM = prostate_target_hard
PR = $(RD)/prostate_hard
SIZEFILE = $(SIZES)/prostate_hard.csv
else
$(error SHIFT=$(SHIFT): expected default or hard)
endif
# RECIPE=seed: seed 004's own SFDA schedule (Adam at 1e-6, 100 epochs, x0.9 every 20, batch 10) for sfda and
# sfda_truesize, unguarded (the guard's ratio is logged all the same), into <root>_recipe_seed, from the same source model
RECIPE ?= project
SF_LR = 5e-5
SF_EPOCHS = 20
ifeq ($(RECIPE),seed)
PR := $(PR)_recipe_seed
SEED_GOAL = recipe
SF_LR = 1e-6
SF_EPOCHS = 100
else ifneq ($(RECIPE),project)
$(error RECIPE=$(RECIPE): expected project (the default) or seed (seed 004's own schedule))
endif
TGT = $(DATA)/$(TDOM)
G_RGX = $(P_RGX)
TT_DATA = $(P_DATA)
CHAIN_OPT = $(P_OPT)
DATASET = $(TGT)
N_EP = 0
# one source model for both shifts (prostate_source.mk); the adaptation starts from its epoch chosen on the *source*
# validation set, in this root or in SOURCE_RD's
SOURCE_CES = $(SOURCE_RD)/$(SRC_NAME)/cesource
M_WEIGHTS = $(SOURCE_CES)/best_3d.pkl

SF_RUNS = $(addprefix $(PR)/,$(SF_METHODS) adaent)
FS_EPOCHS = 30
TITLE = SFDA on prostate MRI
SEEDS_TITLE = SFDA on prostate MRI, $(SHIFT) shift
AT_EPOCHS = 20
PACK_EXTRA = $(CES_ONLINE) $(PS_RUNS) $(PS)/report.md $(PS)/sa_layers.png $(SELECTION) $(SELECTION:.md=.csv)

ifeq ($(TGT_TAGS),)
all: pack report protoseg $(PR)/deploy.csv
else
all: $(PR)/label_free.md
endif
recipe: $(PR)/sfda $(PR)/sfda_truesize
sourcefree: $(CES) $(addprefix $(PR)/,$(SF_METHODS))# the source model and its source-free runs

ifneq ($(SRC_VOLS),)
$(SRC): $(shell find $(SRC_VOLS) -type f) | $(PYDEP)
	$(CC) $(CFLAGS) volumes.py slices --volumes $(SRC_VOLS) $(VOL_OPT) --seed $(DATA_SEED) --out $@
$(TGT): $(SRC) $(shell find $(TGT_VOLS) -type f) | $(PYDEP)
	$(CC) $(CFLAGS) volumes.py slices --volumes $(TGT_VOLS) --like $(SRC) --seed $(DATA_SEED) --out $@
endif

# ---------------------------------------------------------------- runs on the target (their rules: sfchain.mk)
# the source-free runs (sourcefree.mk) with seed 004's Adam schedule; full supervision from scratch (the oracle)
SF_SCHEDULE = --l_rate $(SF_LR) --lr_decay 0.9 --entmap
ifeq ($(RECIPE),seed)
$(SF_RUNS): private BS = 10
$(SF_RUNS): private GUARD = 0
endif

# the learning-rate study: make -f prostate.make lrgrid -> $(PR)/lrgrid/sfda_lr<lr>, GRID_EPC epochs each
# (a run's epoch-k row equals a k-epoch run's last row: the staircase only decays after epoch 20, 40, ...)
LR_GRID ?= 1e-6 5e-6 1e-5 5e-5
GRID_EPC ?= 40
GRID = $(foreach lr,$(LR_GRID),$(PR)/lrgrid/sfda_lr$(lr))
lrgrid: $(GRID)
$(PR)/lrgrid/sfda_lr%: OPT = --target_losses="$(call SFDA_LOSS,dumbpredwtags)" --l_rate $* --lr_decay 0.9 \
	--model_weights $(M_WEIGHTS) $(MU_OPT)
$(PR)/lrgrid/sfda_lr%: N_EP = $(GRID_EPC)
$(PR)/lrgrid/sfda_lr%: $(SIZEFILE) $(TGT) $(SOURCE_CES) | $(PYDEP)
	$(TRAIN)
# the size-function study: $(PR)/fn_<fn>/sfda and sfda_truesize measure the class ratio with <fn>, unguarded
$(PR)/fn_%: OPT = $(SF_$(*F)) --model_weights $(M_WEIGHTS)
$(PR)/fn_%: private SFDA_FN = $(*D)
$(PR)/fn_%: private GUARD = 0
$(PR)/fn_%: N_EP = $(SF_EPOCHS)
$(PR)/fn_%: $(SIZEFILE) $(TGT) $(SOURCE_CES) | $(PYDEP)
	$(TRAIN)

# ---------------------------------------------------------------- which model to deploy, a run's model on new volumes
# deploy.csv: the target-side runs' mean mu over the target training images (no label read), the highest deployed
DEPLOY_RUNS = $(addprefix $(PR)/,noadapt adabn sfda)
$(PR)/deploy.csv: $(DEPLOY_RUNS) | $(PYDEP)
	$(CC) $(CFLAGS) deploy.py choose --runs $^ --out $@
$(PR)/label_free.md: $(PR)/deploy.csv | $(PYDEP)
	$(CC) $(CFLAGS) deploy.py report --choice $< --out $@ --title "SFDA without target labels: $(SHIFT) ($(NET), seed $(SEED))"
# make -f prostate.make predict PREDICT_IN=<volumes> [PREDICT_RUN=sfda|auto|...] [PREDICT_WEIGHTS=last.pkl] (with
# SRC_VOLS and TGT_VOLS: the runs' data must come from volumes.py) -> $(PR)/predict/<run>/<input folder name>/; the last
# epoch's weights by default (no target label chose them); auto: the run deploy.csv deploys; mu's flag threshold from
# the source validation patients
PREDICT_RUN ?= sfda
PREDICT_WEIGHTS ?= last.pkl
PREDICT_IN ?=
PREDICTION = $(PR)/predict/$(PREDICT_RUN)/$(call vol_name,$(PREDICT_IN))
PREDICT_FROM = $(if $(filter auto,$(PREDICT_RUN)),$(PR)/deploy.csv,$(PR)/$(PREDICT_RUN))
ifneq ($(filter predict,$(MAKECMDGOALS)),)
$(if $(PREDICT_IN),,$(error predict needs PREDICT_IN=<a folder of volumes or a dataset>))
endif
.PHONY: predict
predict: $(PREDICTION)
$(PREDICTION): $(PREDICT_FROM) $(if $(PREDICT_IN),$(shell find $(PREDICT_IN) -type f)) | $(PYDEP)
	$(LAUNCH) $(CC) $(CFLAGS) predict.py $(if $(filter auto,$(PREDICT_RUN)),--choice $<,--run $< --weights $(PREDICT_WEIGHTS)) \
		--input $(PREDICT_IN) --reference $(SRC)/val $(if $(THREADS),--threads $(THREADS)) --out $@

# ---------------------------------------------------------------- ProtoSeg (seed 003): which layers carry the shift
# SA per feature layer and unit, mu per image against Dice: the source model on source and target validation,
# each adapted model (its last epoch: no label chose it) on target validation; then one report and figure
PS = $(PR)/protoseg
PS_RUNS = $(PS)/cesource_on_source $(PS)/cesource_online_on_source $(PS)/cesource $(PS)/cesource_online \
	$(addprefix $(PS)/,adabn sfda sfda_truesize adaent fs)
PS_FOLDERS = [('IMG', $(P_TRANSFORM), False), ('GT', gt_transform, False)]
PROTOSEG = $(LAUNCH) $(CC) $(CFLAGS) protoseg.py --network $(NET) --n_class $(N_CLASS) $(if $(THREADS),--threads $(THREADS)) --folders "$(PS_FOLDERS)" --grp_regex "$(G_RGX)" $(DEBUG)
SELECTION = $(PR)/selection.md# the source-free runs' epochs chosen by labels, by mu and the last
protoseg: $(PS)/report.md $(PS)/sa_layers.png $(SELECTION)
$(SELECTION:.md=.csv): | $(SELECTION) ;
$(SELECTION): $(PR)/sfda $(PR)/sfda_truesize $(PR)/adaent | $(PYDEP)
	$(CC) $(CFLAGS) selection.py --runs $^ --out $@ --title "Prostate source-free runs: which epoch ($(NET), seed $(SEED))"
$(PS)/cesource_on_source: $(SOURCE_CES) | $(PYDEP)
	$(PROTOSEG) --model $(M_WEIGHTS) --split $(SRC)/val --out $@ --title "source model on source validation"
$(PS)/cesource: $(SOURCE_CES) $(TGT) | $(PYDEP)
	$(PROTOSEG) --model $(M_WEIGHTS) --split $(TGT)/val --out $@ --title "source model on target validation"
$(PS)/cesource_online_on_source: $(CES_ONLINE) | $(PYDEP)
	$(PROTOSEG) --model $</best_3d.pkl --split $(SRC)/val --out $@ --title "online-ProtoSeg source model on source validation"
$(PS)/cesource_online: $(CES_ONLINE) $(TGT) | $(PYDEP)
	$(PROTOSEG) --model $</best_3d.pkl --split $(TGT)/val --out $@ --title "online-ProtoSeg source model on target validation"
$(PS)/%: $(PR)/% $(TGT) | $(PYDEP)
	$(PROTOSEG) --model $</last.pkl --split $(TGT)/val --out $@ --title "$* (last epoch) on target validation"
$(PS)/report.md: $(PS_RUNS) | $(PYDEP)
	$(CC) $(CFLAGS) protoseg.py report --runs $^ --out $@ --title "ProtoSeg on prostate MRI, $(SHIFT) shift ($(NET), seed $(SEED))"
$(PS)/sa_layers.png: $(PS_RUNS) | $(PYDEP)
	$(CC) $(CFLAGS) plot.py --sa_runs $^ --out $@

# ---------------------------------------------------------------- several training seeds (the report: sfchain.mk)
SEED_SHARED = $(SIZEFILE)
SEEDS_SELECTION = $(RD)/seeds/$(notdir $(PR))_selection.md
SEEDS_PROTOSEG = $(if $(filter all protoseg,$(SEED_GOAL)),$(RD)/seeds/$(notdir $(PR))_protoseg.md)
$(SEEDS_PROTOSEG): $(SEED_ROOTS) | $(PYDEP)
	$(CC) $(CFLAGS) protoseg.py seeds --roots $(foreach r,$(SEED_ROOTS),$(r)/$(notdir $(PR))/protoseg) --out $@ \
		--title "ProtoSeg on prostate MRI, $(SHIFT) shift, over seeds ($(NET), seeds $(SEEDS))"
$(SEEDS_SELECTION): $(SEED_ROOTS) | $(PYDEP)
	$(CC) $(CFLAGS) selection.py --runs $(foreach m,sfda sfda_truesize,$(addsuffix /$(notdir $(PR))/$(m),$(SEED_ROOTS))) \
		--out $@ --title "Prostate source-free runs, $(SHIFT) shift: which epoch ($(NET), seeds $(SEEDS))"

# ---------------------------------------------------------------- the chain's runs, plots, report, archive
include sfchain.mk
seeds: $(SEEDS_REPORT) $(SEEDS_SELECTION) $(SEEDS_PROTOSEG)
