# The prostate data and source model: prostate.make adapts it, and cc359.make's transfer bank holds it as its
# cross-task candidate. Its chain options are the run's own, so that either makefile trains the same model.
P_RGX = Case\d+_\d+
P_TRANSFORM ?= $(if $(SRC_VOLS),nii_transform,png_transform)# the image slices' transform: nii_transform2 for NIfTI slices (dataloader.py)
P_DATA = [('IMG', $(P_TRANSFORM), False), ('GT', gt_transform, False), ('GT', gt_transform, False)]
P_OPT = --weight_decay 1e-4 --n_epoch $(or $(EPC),$(N_EP)) --hd95 --saveim True
P_NET = $(if $(filter command line,$(origin NET)),$(NET),UNet)
SRC ?= $(DATA)/prostate_source# (prostate.make: your own volumes' slices, SRC_VOLS)
SRC_NAME ?= prostate# the source's results folder (prostate.make: the SRC_VOLS folder's name)
CES = $(RD)/$(SRC_NAME)/cesource
CES_ONLINE = $(RD)/$(SRC_NAME)/cesource_online# the same training with the online ProtoSeg term (seed 003, Table 1)

$(DATA)/prostate_%: | $(PYDEP)
	$(CC) $(CFLAGS) synth.py prostate --domain $* --out $@ --seed $(DATA_SEED)

$(CES): OPT = --target_losses="$(L_OR)" --l_rate 5e-4 --lr_decay 1
$(CES_ONLINE): OPT = --target_losses="$(L_ONLINE)" --l_rate 5e-4 --lr_decay 1
$(CES) $(CES_ONLINE): private DATASET = $(SRC)
$(CES) $(CES_ONLINE): private G_RGX = $(P_RGX)
$(CES) $(CES_ONLINE): private TT_DATA = $(P_DATA)
$(CES) $(CES_ONLINE): private CHAIN_OPT = $(P_OPT)
$(CES) $(CES_ONLINE): private NET = $(P_NET)
$(CES) $(CES_ONLINE): private N_EP = 30
$(CES) $(CES_ONLINE): $(SRC) | $(PYDEP)
	$(TRAIN)
$(CES)/best_3d.pkl: | $(CES) ;
