# A slice chain's source model (whs.make, ivd.make): cross-entropy on the source slices $(SRC) for SRC_EPOCHS epochs,
# its epoch chosen on the source validation patients -> $(CES) (prostate's lives in prostate_source.mk, which
# cc359.make's transfer bank shares).
SRC_EPOCHS ?= 30
$(CES): OPT = --target_losses="$(L_OR)" --l_rate 5e-4 --lr_decay 1
$(CES): private DATASET = $(SRC)
$(CES): N_EP = $(SRC_EPOCHS)
$(CES): $(SRC) | $(PYDEP)
	$(TRAIN)
$(CES)/best_3d.pkl: | $(CES) ;
