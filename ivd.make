# Source-free adaptation of intervertebral disc segmentation between two Dixon MR contrasts (seed 004's IVD
# application; the SFDA code adapts from water to in-phase images): make -f ivd.make. One structure, the discs.
# Variables: those of prostate.make (common.mk), and the source-free loss's W_SE, W_BG, W_FG, W_KL, KL_WEIGHT
# (sourcefree.mk). The data: synth_ivd.py's water (source) and in-phase (target) contrasts of different subjects
# (your own: data/ivd_water and data/ivd_inphase in the SFDA layout, or SRC/TGT); SRC_CONTRAST / TGT_CONTRAST pick
# other contrasts (water, inphase, opposed, fat).
include common.mk
CLASS_NAMES = IVD
include sourcefree.mk
.DEFAULT_GOAL := $(CHAIN_GOAL)
.PHONY: all sourcefree seeds

SRC_CONTRAST ?= water
TGT_CONTRAST ?= inphase
SRC ?= $(DATA)/ivd_$(SRC_CONTRAST)
TGT ?= $(DATA)/ivd_$(TGT_CONTRAST)
PR = $(RD)/ivd$(if $(filter-out water_inphase,$(SRC_CONTRAST)_$(TGT_CONTRAST)),_$(SRC_CONTRAST)_$(TGT_CONTRAST))
CES = $(RD)/ivd_$(SRC_CONTRAST)/cesource
SOURCE_CES = $(SOURCE_RD)/ivd_$(SRC_CONTRAST)/cesource
M_WEIGHTS = $(SOURCE_CES)/best_3d.pkl
SIZEFILE = $(SIZES)/$(notdir $(PR)).csv
SF_RUNS = $(addprefix $(PR)/,$(SF_METHODS))
SF_EPOCHS = 20
FS_EPOCHS = 30
SF_SCHEDULE = --l_rate 5e-5 --lr_decay 0.9 --entmap
TITLE = SFDA on intervertebral discs, $(SRC_CONTRAST) to $(TGT_CONTRAST) MR
G_RGX = Case\d+_\d+
TT_DATA = [('IMG', png_transform, False), ('GT', gt_transform, False), ('GT', gt_transform, False)]
CHAIN_OPT = --weight_decay 1e-4 --n_epoch $(or $(EPC),$(N_EP)) --hd95 --saveim True
DATASET = $(TGT)
N_EP = 0
SEED_SHARED = $(SIZEFILE)

all: pack report
sourcefree: $(CES) $(SF_RUNS)# the source model and its source-free runs

$(DATA)/ivd_%: | $(PYDEP)
	$(CC) $(CFLAGS) synth_ivd.py --contrast $* --out $@ --seed $(DATA_SEED)

include sfsource.mk
include sfchain.mk
seeds: $(SEEDS_REPORT)
