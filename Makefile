# Two commands do all the set-up on a fresh machine:
#   make demo   features, training, evaluation, index, sample queries, an MLflow run
#   make test   the test suite (less the `heavy` long tail; make test-all runs everything)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-all lint movielens-100k constraints clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/recsys-mtl run pipelines/demo.toml

test: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q -m "not heavy"

test-all: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .

# Real data: writes MovieLens-100K into data/raw/ml-100k, then runs its pipeline.
movielens-100k: $(STAMP)
	test -f data/raw/ml-100k/u.data || $(BIN)/python ../shared/datasets/movielens100k.py data/raw/ml-100k
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/recsys-mtl run pipelines/movielens-100k.toml

constraints: $(STAMP)
	{ echo '# Tested versions. torch is pinned to the local CPU wheel (2.13.0); an unpinned'; \
	  echo '# torch would pull several GB of CUDA packages. Regenerate with: make constraints'; \
	  $(BIN)/python -m pip freeze --exclude-editable | sed 's/+cpu//'; } > constraints.txt.tmp
	mv constraints.txt.tmp constraints.txt

clean:
	rm -rf data/processed mlflow/mlflow.db mlflow/artifacts
