# Environment, tests, benchmark. The experiments: make -f prostate.make, make -f cc359.make (see README).
include common.mk
.DEFAULT_GOAL := help
.PHONY: help venv test bench clean

help:
	@echo "make venv                 create .venv from requirements.txt"
	@echo "make test                 unit tests and end-to-end smoke runs (pytest)"
	@echo "make bench                machine peak, training throughput, epoch overhead, metric speed -> $(RD)/bench"
	@echo "make -f prostate.make     the SFDA experiment on the embedded (or your) prostate data"
	@echo "make -f cc359.make        fine-tuning / SpotTUnet / SFDA across the six CC359 scanner domains"
	@echo "make clean                remove results, generated data, sizes and archives"

venv: $(PYDEP)

test: | $(PYDEP)
	$(CC) $(CFLAGS) -m pytest -q tests

# the reference metric packages are installed for the benchmark only
bench: | $(PYDEP)
	$(CC) -m pip install --disable-pip-version-check -q medpy==0.5.2
	$(CC) $(CFLAGS) bench.py --out $(RD)/bench

clean:
	rm -rf $(RD) $(DATA)/prostate_source $(DATA)/prostate_target $(DATA)/cc359 $(DATA)/cc359_prep $(DATA)/cc359_sets \
		$(SIZES) $(ARCH)
