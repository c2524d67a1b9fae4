# batch-predict: the two commands a newcomer needs are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup demo test bench mutants clean

$(STAMP): setup.py requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip==26.3"
	$(BIN)/python -m pip install -q -c requirements.lock -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)

demo: setup  ## build the demo model + data, score TFRecord and CSV on the local runner
	$(BIN)/python -m pipeline demo $(ARGS)

test: setup  ## the whole test suite (what CI runs)
	$(BIN)/python -m pytest tests $(ARGS)

mutants: setup  ## plant known bugs one at a time and check the tests catch each (minutes)
	$(BIN)/python -m tests.mutants $(ARGS)

bench: setup  ## throughput benchmarks (prints a table)
	$(BIN)/python -m benchmarks $(ARGS)

clean:
	rm -rf $(VENV) demo_output .pytest_cache
