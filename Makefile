# Two commands do all set-up on a fresh machine:
#   make demo   create .venv, generate the offline Shapes dataset, train FCOS on CPU, evaluate mAP
#   make test   create .venv, run the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: venv test demo bench clean

venv: $(STAMP)

# Re-install when pyproject.toml changes; the stamp file records a finished install.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[dev]'
	touch $(STAMP)

# Two test processes (one per core), each with one intra-op thread: on 2 cores this is about twice as fast as
# one process with two threads (the suite is many small CPU models). Files stay whole on one worker
# (--dist loadfile) so that module fixtures are built once.
test: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -n 2 --dist loadfile tests

# The demo recipe is data in eecs598/recipes.py (PRESETS["demo"]): the Shapes settings with the "improved"
# model, no augmentation, 1600 iterations, flip TTA at evaluation.
demo: $(STAMP)
	$(PY) train_fcos.py --dataset shapes --preset demo --run-dir runs/shapes-demo

bench: $(STAMP)
	$(PY) benchmarks/bench_nms.py
	$(PY) benchmarks/bench_eval.py
	$(PY) benchmarks/bench_train_step.py
	$(PY) benchmarks/bench_inference.py

clean:
	rm -rf $(VENV) runs mAP .pytest_cache
