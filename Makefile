# The README's two commands: `make run` and `make test`. Both build .venv once; a second call installs nothing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: run test data lint

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch and torchvision first, as the pinned pair (pip takes them from local disk where it can).
	$(BIN)/python -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Fashion-MNIST: Debian's package where apt is available, else torchvision's download into the data root.
data: $(STAMP)
	@if [ -f $(FMNIST) ] || [ -n "$$BNSWEEP_DATA" -a -d "$$BNSWEEP_DATA" ]; then \
		echo "fashion-mnist: present"; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		apt-get install -y -qq dataset-fashion-mnist || (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist); \
	else \
		$(BIN)/python -c "from bnsweep.data import load_dataset; load_dataset('fashion-mnist')"; \
	fi

# The main job: the headline sweep (paper scale on a GPU or cluster, cpu scale on a laptop), its figures and
# the paper's claims. Rerunning it continues the sweep.
run: $(STAMP) data
	$(BIN)/bnsweep run lr_grid --results results/lr_grid
	$(BIN)/bnsweep figures results/lr_grid
	$(BIN)/bnsweep check results/lr_grid

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check bnsweep analysis tests
