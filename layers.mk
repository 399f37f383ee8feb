# Which layers to reuse (seed 002), included by cc359.make. The reuse strategies (main.py --reuse METHOD:K; ResUNet
# only: they cut its levels) fine-tune like ft_all from the same baselines, sets and budgets: TruncatedTL keeps encoder
# levels 0..k, LWFT fine-tunes the top k stages (the output layer at LR, the others at LR/10), TransFusion keeps levels
# 0..k and retrains the ones above at half width. Each method's k is chosen once, on the validation pairs at K_BUDGET.
REUSE_METHODS = $(if $(filter ResUNet,$(NET)),ttl lwft transfusion)
KS_ttl ?= 0 1 2 3# TruncatedTL: encoder levels kept (3: the whole network, i.e. ft_all)
KS_lwft ?= 1 2 3 4# LWFT: top stages fine-tuned, from the output
KS_transfusion ?= 0 1 2# TransFusion: levels kept; the ones above halved and trained from scratch
K_BUDGET ?= $(lastword $(shell printf '%s\n' $(BUDGETS) | sort -n))
REUSE_RUNS = $(foreach m,$(REUSE_METHODS),$(foreach p,$(TEST_PAIRS),$(foreach n,$(BUDGETS),$(CR)/$(m)/$(p)_n$(n))))
REUSE_VAL_RUNS = $(foreach m,$(REUSE_METHODS),$(foreach p,$(VAL_PAIRS),$(foreach k,$(KS_$(m)),$(CR)/$(m)_val/$(p)_n$(K_BUDGET)_k$(k))))
$(REUSE_RUNS): OPT = $(TRAIN_FT) --model_weights $(start) --reuse $(method) --chosen $(REUSE_PARAMS):method=$(method)
$(REUSE_VAL_RUNS): OPT = $(TRAIN_FT) --reuse $(patsubst %_val,%,$(method)):$(call field,$(@F),k) --model_weights $(start)
$(REUSE_RUNS): $$(SETS)/pair_$$(@F) $$(BASE)/$$(call src,$$(@F)) $(REUSE_PARAMS) | $(PYDEP)
	$(TRAIN)
$(REUSE_VAL_RUNS): $$(SETS)/$$(val_set) $$(BASE)/$$(call src,$$(@F)) | $(PYDEP)
	$(TRAIN)
$(REUSE_PARAMS): $(REUSE_VAL_RUNS) | $(PYDEP)
	$(CC) $(CFLAGS) report.py choose_k --runs $^ --out $@

# Per test pair, at K_BUDGET: SVCCA per feature layer
# between the baseline and each fine-tuned model (SpotTUnet: its tuned copy) on the target's test slices, with a
# randomly initialised network's line, and every baseline layer against every ft_all layer (layers/<pair>/); the
# size, multiply-adds and CPU time of every fine-tuned model beside its test scores (layers/complexity.csv, .md),
# timed after every other job of the chain (LY_AFTER, order-only: never beside a training of this make); per layer
# the three views of the shift side by side (layers/anatomy.md, .csv, .png). ResUNet only, like the reuse runs.
LY = $(CR)/layers
LY_MODELS = ft_all $(REUSE_METHODS) spottune
LY_PAIRS = $(addprefix $(LY)/,$(TEST_PAIRS))
LY_AFTER ?= $(TESTED) $(VAL_RUNS) $(SF_VAL_RUNS) $(REUSE_VAL_RUNS) $(LY_PAIRS) $(PS_RUNS) $(PS_ONLINE) $(TE_SCORES) $(TE_FT)
LY_OUT = $(if $(REUSE_METHODS),$(LY)/anatomy.md $(LY)/complexity.csv $(LY)/complexity.md $(LY_PAIRS))
SVCCA = $(CC) $(CFLAGS) svcca.py
layers: $(LY_OUT)

$(LY_PAIRS): $$(BASE)/$$(call src,$$(@F)) $$(foreach m,$(LY_MODELS),$(CR)/$$(m)/$$(@F)_n$(K_BUDGET)) $$(SETS)/pair_$$(@F)_all | $(PYDEP)
	$(LAUNCH) $(SVCCA) layers --base $</last.pkl --models $(foreach m,$(LY_MODELS),$(m)=$(CR)/$(m)/$(@F)_n$(K_BUDGET)/last.pkl) \
		--split $(lastword $^)/test --folders "$(TT_DATA)" --grp_regex "$(G_RGX)" --seed $(SEED) \
		$(if $(THREADS),--threads $(THREADS)) $(DEBUG) --out $@ \
		--title "pair $(@F), N = $(K_BUDGET): SVCCA of each layer with the baseline's, target test slices"
$(LY)/complexity.md: | $(LY)/complexity.csv ;
$(LY)/complexity.csv: $(filter-out $(CR)/ft_first/% $(CR)/ft_last/%,$(FT_RUNS)) $(REUSE_RUNS) $(REUSE_PARAMS) | $(PYDEP) $(LY_AFTER)
	$(SVCCA) complexity --runs $(filter-out $(REUSE_PARAMS),$^) --params $(REUSE_PARAMS) \
		--split $(SETS)/pair_$(firstword $(TEST_PAIRS))_all/test --folders "$(TT_DATA)" --grp_regex "$(G_RGX)" $(DEBUG) \
		--out $@ --title "Which layers to reuse (seed 002): score, size and cost of the fine-tuned models ($(NET), seed $(SEED))"
$(LY)/anatomy.md: $(SHIFT_POLICY) $(LY_PAIRS) | $(PYDEP)
	$(SVCCA) anatomy --shift $(SHIFT_POLICY:.md=.csv) --svcca $(LY_PAIRS) --out $@ \
		--title "CC359: which layers carry the shift, three views ($(NET) baselines, seed $(SEED))"
