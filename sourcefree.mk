# The source-free methods (seed 004), written once for every chain: what each run adapts with. The runs see the
# target's unlabelled slices, the source model and the size prior, never a source image. A chain names its runs and
# adds its schedule, SF_SCHEDULE (optimiser, learning rate, epochs), and the model they start from.

# the prior's class ratio measured by norm_soft_size (the SFDA code) or soft_ratio (the papers)
SFDA_FN ?= norm_soft_size
# stop a run whose predicted foreground on the training slices falls below GUARD x the prior's, and fall back to
# AdaBN (main.py --collapse_guard; 0: off, the seed's behaviour)
GUARD ?= 0.25
# and, above it, when that foreground grows past GUARD_HIGH x the prior's (over-segmentation; 0: off, its edge not yet
# measured on runs that did not shape it)
GUARD_HIGH ?= 0
GUARD_OPT = $(if $(filter-out 0,$(GUARD)),--collapse_guard $(GUARD)) $(if $(filter-out 0,$(GUARD_HIGH)),--overgrowth_guard $(GUARD_HIGH))
# the label-free epoch choice (ProtoSeg's mu, seed 003) over about MU_IMAGES training slices at every validated epoch,
# the best -> best_mu.pkl (main.py --mu_images; 0: off)
MU_IMAGES ?= 64
MU_OPT = $(if $(filter-out 0,$(MU_IMAGES)),--mu_images $(MU_IMAGES))
# the entropy's class weights: W_BG for the background, W_FG for every structure (seed 004: 0.1 and 0.9), or W_SE the
# whole list (e.g. W_SE=[0.1,0.9,0.9,2,0.9] to weigh a small structure up); KL_WEIGHT: the prior term's weight, W_KL
# (a list, one per class): each class's weight inside the KL (empty: 1 each, the seed's)
W_BG ?= 0.1
W_FG ?= 0.9
W_SE ?= $(call py_list,$(W_BG) $(foreach k,$(METRIC_AXIS),$(W_FG)))
KL_WEIGHT ?= 1
W_KL ?=
# weighted entropy + KL between the prediction's class ratio (measured by $(2) or SFDA_FN) and the prior of column $(1)
SFDA_LOSS = [('EntKLProp', {'lamb_se':1, 'lamb_consprior':$(KL_WEIGHT),'ivd':True,'weights_se':$(W_SE),'idc_c': [1],'curi':True,'power': 1$(if $(W_KL),$(comma)'weights_kl':$(W_KL))},'PredictionBounds', \
	{'margin':0,'dir':'high','idc':$(IDC),'predcol':'$(1)','power': 1, 'mode':'percentage','sizefile':'$(SIZEFILE)'},'$(or $(2),$(SFDA_FN))',1)]
L_ENT = [('SelfEntropy', {'idc': $(IDC), 'weights':$(W_SE)}, None, None, None, 1)]

SF_METHODS = noadapt adabn sfda sfda_truesize
L_EVAL = $(if $(LABEL_FREE),$(L_ENT),$(L_OR))# the loss an evaluation-only run logs (a label-free target: the entropy)
SF_noadapt = --n_epoch 0 --target_losses="$(L_EVAL)"# the source model as it is
SF_adabn = $(SF_noadapt) --adabn# its BatchNorm statistics re-estimated on the target
SF_hm = $(SF_noadapt)# the source model on target images matched to the source's histogram (the chain's sets)
SF_sfda = --target_losses="$(call SFDA_LOSS,dumbpredwtags)" $(SF_SCHEDULE) $(MU_OPT) $(GUARD_OPT)
SF_sfda_truesize = --target_losses="$(call SFDA_LOSS,val_gt_size)" $(SF_SCHEDULE) $(MU_OPT) $(GUARD_OPT)# the upper bound
SF_adaent = --target_losses="$(L_ENT)" $(SF_SCHEDULE) $(MU_OPT)# the entropy term alone (AdaEnt)
