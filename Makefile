# Two commands do all the set-up on a fresh machine with only Python:
#   make demo   installs, trains CSFR on the built-in synthetic scenes, evaluates it
#   make test   installs, runs the test suite
# TORCH_SPEC picks the torch to install when none is present (the default installs a CPU
# build here; an unpinned `torch` would pull several GB of CUDA wheels).
#
# On a GPU machine (no package index needed; docs/cuda.md, "make gpu-check"), each under 9 minutes:
#   make gpu-check  builds CUDA in place, pytest -m cuda, compute-sanitizer, GPU + CPU training
#   make gpu-bench  builds, then the operator and training-step benchmarks into benchmarks/RESULTS.md,
#                   and times the segment kernels' butterfly limits (benchmarks/butterfly_tuning.cu)
#   make gpu-all    both in one run (the checks side by side, then the benchmarks alone): a short lease
# GPU_CHECK_OUT gets the logs and summaries (copy it off the machine); GPU_CHECK_ARGS=--dry-run lists
# the steps and their commands without running them. Runtime dependencies the GPU machine lacks come as
# wheels: `make gpu-wheels` (where pip can download) fills .whl/ with GPU_WHEELS and their dependencies
# for GPU_PYTHON (GPU images with torch often lack pydantic); bring .whl/ along and the first step
# installs what is missing.

PYTHON ?= python3
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=
WORK_DIR ?= runs/demo
GPU_CHECK_OUT ?= runs/gpu-check
GPU_CHECK_ARGS ?=
GPU_WHEELS ?= pydantic
GPU_PYTHON ?= 3.12

.PHONY: install test demo bench gpu-check gpu-bench gpu-all gpu-wheels

install:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install "$(TORCH_SPEC)"
	$(PYTHON) -m pip install -q setuptools wheel ninja
	$(PYTHON) -m pip install -q --no-build-isolation -e ".[dev]"

test: install
	@$(PYTHON) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests; failing on purpose" >&2; exit 1; fi; \
	exit $$rc

demo: install
	$(PYTHON) -m csfr.train --work-dir $(WORK_DIR)
	$(PYTHON) -m csfr.evaluate --checkpoint $(WORK_DIR)/checkpoints/best.pt --flip --out $(WORK_DIR)/eval

bench: install
	$(PYTHON) -m benchmarks.bench_ops

# no `install` prerequisite: a GPU machine here has no package index; the first step builds in place
gpu-check:
	@$(PYTHON) tools/gpu_check.py check --out $(GPU_CHECK_OUT) $(GPU_CHECK_ARGS)

gpu-bench:
	@$(PYTHON) tools/gpu_check.py bench --out $(GPU_CHECK_OUT) $(GPU_CHECK_ARGS)

gpu-all:
	@$(PYTHON) tools/gpu_check.py all --out $(GPU_CHECK_OUT) $(GPU_CHECK_ARGS)

gpu-wheels:
	$(PYTHON) tools/gpu_check.py wheels $(GPU_WHEELS) --python-version $(GPU_PYTHON)
