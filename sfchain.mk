# The source-free chain on a slice dataset in the SFDA layout (seed 004), written once for prostate.make and whs.make:
# the size prior, the runs on the target, full supervision, the plots, the report, the archive and the report over
# seeds. The including makefile sets, before including it: SRC and TGT (the slice datasets), PR (the results folder),
# CES (its source model) and SOURCE_CES / M_WEIGHTS (the source model the adaptation starts from), SIZEFILE, SF_RUNS
# (its source-free runs), SF_EPOCHS and SF_SCHEDULE, FS_EPOCHS, TITLE (the report's; SEEDS_TITLE over seeds) and
# PACK_EXTRA (what else goes into the archive); the runs' chain options come from G_RGX, TT_DATA and CHAIN_OPT (common.mk's TRAIN).
TRN = $(CES) $(SF_RUNS) $(PR)/fs
PLT = $(PR)/val_dice_3d.png $(PR)/boxplot.png $(PR)/qualitative.png
REPORT = $(PR)/report.md
PACK = $(ARCH)/$(REPO)-$(DATE)-$(HASH)-$(HOSTNAME)-$(notdir $(PR))-seed$(SEED).tar.gz
SEEDS_REPORT = $(RD)/seeds/$(notdir $(PR)).md
SEEDS_TITLE ?= $(TITLE)
AT_EPOCHS ?= $(SF_EPOCHS)# the seeds report's 3D Dice after that many epochs too
# the structures' names in the reports (several structures: one line per class of each table)
CLASS_NAMES ?=
.PHONY: pack report plot
pack: $(PACK)
report: $(REPORT)
plot: $(PLT)

$(SIZEFILE): $(SRC) $(TGT) $(TGT_TAGS) | $(PYDEP)
	$(CC) $(CFLAGS) sizes.py --source $(SRC) --target $(TGT) $(if $(TGT_TAGS),--tags $(TGT_TAGS)) --n_class $(N_CLASS) \
		--out $@

# the source-free runs (sourcefree.mk) from the source model; full supervision from scratch (the oracle)
$(SF_RUNS): OPT = $(SF_$(@F)) --model_weights $(M_WEIGHTS) $(LABEL_FREE)
$(SF_RUNS): N_EP = $(SF_EPOCHS)
$(SF_RUNS): $(TGT) $(SOURCE_CES) $$(if $$(filter sfda%,$$(@F)),$(SIZEFILE)) | $(PYDEP)
	$(TRAIN)
$(PR)/fs: OPT = --target_losses="$(L_OR)" --l_rate 5e-4 --lr_decay 1
$(PR)/fs: N_EP = $(FS_EPOCHS)
$(PR)/fs: $(TGT) | $(PYDEP)
	$(TRAIN)

# ---------------------------------------------------------------- plots, report, archive, seeds
REPORT_CLASSES = $(if $(CLASS_NAMES),--class_names $(CLASS_NAMES))
$(PR)/val_dice_3d.png: $(TRN) | $(PYDEP)
	$(CC) $(CFLAGS) plot.py --runs $(TRN) --out $@
$(PR)/boxplot.png: $(TRN) | $(PYDEP)
	$(CC) $(CFLAGS) moustache.py --runs $(filter-out $(CES),$(TRN)) --out $@
$(PR)/qualitative.png: $(filter-out $(CES),$(TRN)) | $(PYDEP)
	$(CC) $(CFLAGS) qualitative.py --runs $^ --baseline noadapt --adapted sfda --split val --out $@
$(REPORT): $(TRN) | $(PYDEP)
	$(CC) $(CFLAGS) report.py --runs $(TRN) --out $@ --title "$(TITLE) ($(NET), seed $(SEED))" $(REPORT_CLASSES)

$(PACK): $(TRN) $(PLT) $(REPORT) $(SIZEFILE) $(PACK_EXTRA)
	mkdir -p $(@D)
	tar cf - $^ | $(ZIP) > $@_tmp
	mv $@_tmp $@

# make -f <chain> SEEDS="0 1 2" [-j2 THREADS=1]: $(RD)/seed<s>/..., then every run as mean ± sd
$(SEEDS_REPORT): $(SEED_ROOTS) | $(PYDEP)
	$(CC) $(CFLAGS) report.py seeds --roots $(addsuffix /$(notdir $(PR)),$(SEED_ROOTS)) --at_epochs $(AT_EPOCHS) --out $@ \
		--title "$(SEEDS_TITLE) ($(NET), seeds $(SEEDS))" $(REPORT_CLASSES)
