# Source-free domain adaptation on prostate MRI (seed 004): make -f prostate.make
# Variables: CC CFLAGS NET EPC DEBUG BS PREC EXTRA RD DATA SIZES ARCH SEED (see common.mk and README).
include common.mk
.DEFAULT_GOAL := all
.PHONY: all pack report plot

G_RGX = Case\d+_\d+
TT_DATA = [('IMG', png_transform, False), ('GT', gt_transform, False), ('GT', gt_transform, False)]
SRC = $(DATA)/prostate_source
TGT = $(DATA)/prostate_target
SIZEFILE = $(SIZES)/prostate.csv
PR = $(RD)/prostate
# the source model the adaptation starts from: the epoch chosen on the *source* validation set
M_WEIGHTS = $(PR)/cesource/best_3d.pkl
N_EP = 0

TRN = $(PR)/cesource $(PR)/noadapt $(PR)/adabn $(PR)/sfda $(PR)/sfda_truesize $(PR)/adaent $(PR)/fs
PLT = $(PR)/val_dice_3d.png $(PR)/boxplot.png
REPORT = $(PR)/report.md
PACK = $(ARCH)/$(REPO)-$(DATE)-$(HASH)-$(HOSTNAME)-prostate.tar.gz

all: pack report
pack: $(PACK)
report: $(REPORT)
plot: $(PLT)

# ---------------------------------------------------------------- data and prior
$(DATA)/prostate_%: | $(PYDEP)
	$(CC) $(CFLAGS) synth.py prostate --domain $* --out $@ --seed $(SEED)

$(SIZEFILE): $(SRC) $(TGT) | $(PYDEP)
	$(CC) $(CFLAGS) sizes.py --source $(SRC) --target $(TGT) --out $@

# ---------------------------------------------------------------- runs
# CE on the source; everything else runs on the target and starts from the source model
$(PR)/cesource: OPT = --target_dataset $(SRC) --target_losses="$(L_OR)" --l_rate 5e-4 --lr_decay 1
$(PR)/cesource: N_EP = 30
$(PR)/cesource: $(SRC)

$(PR)/noadapt: OPT = --target_losses="$(L_OR)" --model_weights $(M_WEIGHTS) --n_epoch 0
$(PR)/adabn: OPT = --target_losses="$(L_OR)" --model_weights $(M_WEIGHTS) --n_epoch 0 --adabn

SFDA_OPT = --l_rate 5e-5 --lr_decay 0.9 --model_weights $(M_WEIGHTS) --entmap
$(PR)/sfda: OPT = --target_losses="$(call SFDA_LOSS,dumbpredwtags)" $(SFDA_OPT)
$(PR)/sfda_truesize: OPT = --target_losses="$(call SFDA_LOSS,val_gt_size)" $(SFDA_OPT)
$(PR)/adaent: OPT = --target_losses="[('SelfEntropy', {'idc': [0,1], 'weights':[0.1,0.9]}, None, None, None, 1)]" $(SFDA_OPT)
$(PR)/sfda $(PR)/sfda_truesize $(PR)/adaent: N_EP = 20
$(PR)/sfda $(PR)/sfda_truesize: $(SIZEFILE)

# full supervision on the target (oracle), from scratch
$(PR)/fs: OPT = --target_losses="$(L_OR)" --l_rate 5e-4 --lr_decay 1
$(PR)/fs: N_EP = 30

$(filter-out $(PR)/cesource,$(TRN)): $(TGT)
$(filter-out $(PR)/cesource $(PR)/fs,$(TRN)): $(PR)/cesource

$(TRN): | $(PYDEP)
	rm -rf $@_tmp
	$(CC) $(CFLAGS) main.py --workdir $@_tmp --target_dataset $(TGT) --network $(NET) --n_class 2 --metric_axis 1 \
		--dice_3d --grp_regex "$(G_RGX)" --target_folders="$(TT_DATA)" --val_target_folders="$(TT_DATA)" \
		--batch_size $(BS) --weight_decay 1e-4 --n_epoch $(or $(EPC),$(N_EP)) --do_hd 90 --saveim True \
		$(RUN_NUMERICS) --seed $(SEED) $(OPT) $(EXTRA) $(DEBUG)
	rm -rf $@ && mv $@_tmp $@

# ---------------------------------------------------------------- plots, report, archive
$(PR)/val_dice_3d.png: $(TRN) | $(PYDEP)
	$(CC) $(CFLAGS) plot.py --runs $(TRN) --out $@
$(PR)/boxplot.png: $(TRN) | $(PYDEP)
	$(CC) $(CFLAGS) moustache.py --runs $(filter-out $(PR)/cesource,$(TRN)) --out $@
$(REPORT): $(TRN) | $(PYDEP)
	$(CC) $(CFLAGS) report.py --runs $(TRN) --out $@ --title "SFDA on prostate MRI ($(NET), seed $(SEED))"

$(PACK): $(TRN) $(PLT) $(REPORT) $(SIZEFILE)
	mkdir -p $(@D)
	tar cf - $^ | $(ZIP) > $@_tmp
	mv $@_tmp $@
