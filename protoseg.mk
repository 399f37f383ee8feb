# ProtoSeg on CC359 (seed 003), included by cc359.make: which layers carry the shift, which predictions to trust.
# Per test pair: SA per layer and unit, mu per scan against Dice, for the source baseline on its own validation scans
# and on the target's test scans, and for each source-free model (its last epoch) on the target's test scans.
PS = $(CR)/protoseg
PS_MODELS = adabn sfda sfda_truesize
PS_RUNS = $(foreach p,$(TEST_PAIRS),$(addprefix $(PS)/$(p)/,baseline_on_source baseline $(PS_MODELS)))
ONLINE_SRC = $(call src,$(firstword $(TEST_PAIRS)))# the online-ProtoSeg baseline: the first test pair's source
ONLINE_RUNS = $(CR)/baseline_online/$(ONLINE_SRC)# the baseline trained with ProtoSeg's SA term (seed 003, Table 1)
$(ONLINE_RUNS): OPT = $(TRAIN_BASE) --target_losses="$(L_ONLINE)"
PS_ONLINE = $(PS)/$(firstword $(TEST_PAIRS))/baseline_online_on_source
PS_REPORTS = $(foreach p,$(TEST_PAIRS),$(PS)/$(p)/report.md $(PS)/$(p)/sa_layers.png)
SELECTION = $(CR)/selection.md# the source-free runs' epochs chosen by labels, by mu and the last, tested
SF_SELECTED = $(foreach m,sfda sfda_truesize,$(addprefix $(CR)/$(m)/,$(TEST_PAIRS)))
SHIFT_POLICY = $(PS)/shift_vs_policy.md# per layer: the SA drop under shift against SpotTUnet's fine-tuning share
PS_OUT = $(PS_RUNS) $(PS_ONLINE) $(CR)/baseline_online/$(ONLINE_SRC) $(PS_REPORTS) $(SELECTION) $(SELECTION:.md=.csv) \
	$(SHIFT_POLICY) $(SHIFT_POLICY:.md=.csv)
PROTOSEG = $(LAUNCH) $(CC) $(CFLAGS) protoseg.py --network $(NET) $(if $(THREADS),--threads $(THREADS)) \
	--folders "$(TT_DATA)" --grp_regex "$(G_RGX)" $(DEBUG)
pair = $(notdir $(@D))# the pair of a protoseg/<pair>/<analysis> target
protoseg: $(PS_REPORTS) $(SELECTION) $(SHIFT_POLICY)

$(filter %/baseline_on_source,$(PS_RUNS)): $$(BASE)/$$(call src,$$(pair)) $$(SETS)/baseline_$$(call src,$$(pair)) | $(PYDEP)
	$(PROTOSEG) --model $</last.pkl --split $(word 2,$^)/val --out $@ --title "baseline $(call src,$(pair)) on its validation scans"
$(filter %/baseline,$(PS_RUNS)): $$(BASE)/$$(call src,$$(pair)) $$(SETS)/pair_$$(pair)_all | $(PYDEP)
	$(PROTOSEG) --model $</last.pkl --split $(word 2,$^)/test --out $@ \
		--title "baseline $(call src,$(pair)) on the test scans of domain $(call tgt,$(pair))"
$(filter $(addprefix %/,$(PS_MODELS)),$(PS_RUNS)): $$(CR)/$$(@F)/$$(pair) $$(SETS)/pair_$$(pair)_all | $(PYDEP)
	$(PROTOSEG) --model $</last.pkl --split $(word 2,$^)/test --out $@ --title "$(@F) on the test scans of domain $(call tgt,$(pair))"
$(PS_ONLINE): $(CR)/baseline_online/$(ONLINE_SRC) $(SETS)/baseline_$(ONLINE_SRC) | $(PYDEP)
	$(PROTOSEG) --model $</last.pkl --split $(word 2,$^)/val --out $@ --title "online-ProtoSeg baseline $(ONLINE_SRC) on its validation scans"

# per pair, one report and one figure of its analyses (the first pair's with the online baseline's)
ps_inputs = $(addprefix $(@D)/,baseline_on_source baseline $(PS_MODELS)) $(filter $(@D)/%,$(PS_ONLINE))
$(filter %.md,$(PS_REPORTS)): $$(ps_inputs) | $(PYDEP)
	$(CC) $(CFLAGS) protoseg.py report --runs $^ --out $@ --title "ProtoSeg on CC359, pair $(pair) ($(NET), seed $(SEED))"
$(filter %.png,$(PS_REPORTS)): $$(ps_inputs) | $(PYDEP)
	$(CC) $(CFLAGS) plot.py --sa_runs $^ --out $@
$(SHIFT_POLICY): $(foreach p,$(TEST_PAIRS),$(PS)/$(p)/baseline_on_source $(PS)/$(p)/baseline) $(filter $(CR)/spottune/%,$(FT_RUNS)) | $(PYDEP)
	$(CC) $(CFLAGS) protoseg.py shift --pairs $(addprefix $(PS)/,$(TEST_PAIRS)) --policies $(filter $(CR)/spottune/%,$^) \
		--out $@ --title "CC359: where the shift hits ($(NET) baselines, seed $(SEED)), and what SpotTUnet fine-tunes"
$(SHIFT_POLICY:.md=.csv): | $(SHIFT_POLICY) ;
$(SELECTION): $(SF_SELECTED) | $(PYDEP)
	$(CC) $(CFLAGS) selection.py --runs $^ --out $@ --title "CC359 source-free runs: which epoch ($(NET), seed $(SEED))"
$(SELECTION:.md=.csv): | $(SELECTION) ;
