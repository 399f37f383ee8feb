# Shared variables and rules of the experiment makefiles (included by prostate.make, later cc359.make).
SHELL = bash
.SHELLFLAGS = -e -o pipefail -c
.DELETE_ON_ERROR:

# Python: the project's .venv (built from requirements.txt on first use) unless CC=... is given.
VENV = .venv
ifneq ($(filter default environment,$(origin CC)),)
CC = $(VENV)/bin/python
PYDEP = $(VENV)/.installed
endif
CFLAGS ?=
NET ?= UNet
EPC ?=
DEBUG ?=
BS ?= 16
PREC ?= fp32
EXTRA ?=
RD ?= results
DATA ?= data
SIZES ?= sizes
ARCH ?= archives
SEED ?= 0

REPO := $(shell basename "$$(git rev-parse --show-toplevel 2>/dev/null || pwd)")
DATE := $(shell date +"%y%m%d")
HASH := $(shell git rev-parse --short HEAD 2>/dev/null || echo nogit)
HOSTNAME := $(shell hostname)
ZIP := $(shell command -v pigz >/dev/null 2>&1 && echo pigz || echo gzip)

$(VENV)/.installed: requirements.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --disable-pip-version-check -r requirements.txt
	touch $@
