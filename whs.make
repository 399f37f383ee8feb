# Source-free adaptation of whole-heart segmentation from MR to CT (seed 004's cardiac application; the SFDA code's
# whs.make adapts MR -> CT on SIFA's MMWHS slices): make -f whs.make. Four structures, in the SFDA code's label order:
# 1 MYO (left ventricle myocardium), 2 LAC (left atrium cavity), 3 LVC (left ventricle cavity), 4 AA (ascending aorta).
# Variables: those of prostate.make (common.mk), and the source-free loss's W_SE, W_BG, W_FG, W_KL, KL_WEIGHT
# (sourcefree.mk). The data: synth_whs.py's MR-like source and CT-like target (your own: data/whs_mr and data/whs_ct in
# the SFDA layout, or SRC/TGT).
include common.mk
N_CLASS = 5
CLASS_NAMES = MYO LAC LVC AA
# the entropy's class weights of the SFDA code's whs.make (background, MYO, LAC, LVC, AA): the structures weigh 0.18-0.32
W_SE ?= [0.02,0.27,0.18,0.21,0.32]
include sourcefree.mk
.DEFAULT_GOAL := $(CHAIN_GOAL)
.PHONY: all sourcefree seeds

SRC ?= $(DATA)/whs_mr
TGT ?= $(DATA)/whs_ct
PR = $(RD)/whs
CES = $(PR)/cesource
SOURCE_CES = $(SOURCE_RD)/whs/cesource
M_WEIGHTS = $(SOURCE_CES)/best_3d.pkl
SIZEFILE = $(SIZES)/whs.csv
SF_RUNS = $(addprefix $(PR)/,$(SF_METHODS))
SF_EPOCHS = 20
FS_EPOCHS = 30
SF_SCHEDULE = --l_rate 5e-5 --lr_decay 0.9 --entmap
TITLE = SFDA on whole-heart segmentation, MR to CT
G_RGX = Case\d+_\d+
TT_DATA = [('IMG', png_transform, False), ('GT', gt_transform, False), ('GT', gt_transform, False)]
CHAIN_OPT = --weight_decay 1e-4 --n_epoch $(or $(EPC),$(N_EP)) --hd95 --saveim True
DATASET = $(TGT)
N_EP = 0
SEED_SHARED = $(SIZEFILE)

all: pack report
sourcefree: $(CES) $(SF_RUNS)# the source model and its source-free runs

$(DATA)/whs_%: | $(PYDEP)
	$(CC) $(CFLAGS) synth_whs.py --domain $* --out $@ --seed $(DATA_SEED)

include sfsource.mk
include sfchain.mk
seeds: $(SEEDS_REPORT)
