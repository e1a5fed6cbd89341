# The README's two commands: `make run` and `make test`. Both build .venv once and install what the machine
# lacks (Debian's Fashion-MNIST and Chromium); a second call installs nothing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: run test data browser lint

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch and torchvision first, as the pinned pair (pip takes them from local disk where it can).
	$(BIN)/python -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Debian packages, installed where apt is available and we are root; otherwise one line that names them, exit 2.
APT_INSTALL = if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(1) >/dev/null 2>&1 || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(1) >/dev/null); \
	else echo "bnsweep: $(2) is missing: install the Debian package(s) '$(1)' (sudo apt-get install -y $(1)) and run make again" >&2; exit 2; fi

# Fashion-MNIST: Debian's package where apt is available, else torchvision's download into $BNSWEEP_DATA.
data: $(STAMP)
	@if [ -f $(FMNIST) ] || [ -n "$$BNSWEEP_DATA" -a -d "$$BNSWEEP_DATA" ]; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		echo "installing Debian's dataset-fashion-mnist"; $(call APT_INSTALL,dataset-fashion-mnist,Fashion-MNIST); \
	else \
		$(BIN)/python -m bnsweep.data fashion-mnist; \
	fi

# The figures page is tested in a real headless browser.
browser:
	@if command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then :; else \
		echo "installing Debian's chromium"; $(call APT_INSTALL,chromium,Chromium (for the figures page test)); fi

# The main job: the headline sweep (paper scale on a GPU or cluster, cpu scale on a laptop), its figures and
# the paper's claims. Rerunning it continues the sweep.
run: $(STAMP) data
	$(BIN)/bnsweep run lr_grid --results results/lr_grid
	$(BIN)/bnsweep figures results/lr_grid
	$(BIN)/bnsweep check results/lr_grid

test: $(STAMP) data browser
	$(BIN)/python -m pytest -q --durations=10

lint: $(STAMP)
	$(BIN)/ruff check bnsweep analysis tests
