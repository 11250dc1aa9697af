#!/usr/bin/env bash
# One entry point that does all set-up on a fresh machine, then runs what you ask:
#   bash run.sh demo   - generate the bundled sample scene and reconstruct it (photos -> cameras -> Gaussians)
#   bash run.sh test   - run the whole test suite
#   bash run.sh bench  - run the benchmarks and update BENCHMARKS.md
#   bash run.sh gpu-kit   - build the offline GPU check kit in .gpu_kit/ (needs internet)
#   bash run.sh gpu-check - on a CUDA machine: install the kit offline, build, test and measure the GPU
#                           path under a 9-minute cap; --dry-run (or no CUDA): the steps that need no GPU
# Set-up: a virtual environment in .venv (it sees a CUDA PyTorch already installed on the system; else
# installs the pinned CPU build), the backend package in editable mode and the test tools.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
VENV=.venv

setup() {
  if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv --system-site-packages "$VENV"
  fi
  if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    "$VENV/bin/python" -m pip install -q "torch==2.13.0"
  fi
  if ! "$VENV/bin/python" -c "import milo_backend, pytest, pycolmap, plyfile, pytorch_msssim, ray" 2>/dev/null \
     || [ backend/pyproject.toml -nt "$VENV/.installed" ]; then
    "$VENV/bin/python" -m pip install -q -e "backend[test]"
    touch "$VENV/.installed"
  fi
}

setup_blender() {
  # bpy from PyPI runs the extension headless in the tests. --no-deps: bpy declares numpy<2, and it
  # works with the numpy the backend already has.
  "$VENV/bin/python" -c "import bpy" 2>/dev/null \
    || "$VENV/bin/python" -m pip install -q --no-deps -r tests/blender/requirements.txt
}

cmd=${1:-help}
shift || true
case "$cmd" in
  demo)
    setup
    "$VENV/bin/milo-backend" sample sample/scene
    # The photos alone (no poses): structure from motion recovers the cameras, then training.
    resume=()
    [ -d runs/sample/checkpoints ] && resume=(--resume)   # a second run continues / reuses the first
    "$VENV/bin/milo-backend" train sample/scene/images runs/sample --iterations "${ITERATIONS:-2000}" \
        --eval "${resume[@]}" "$@"
    "$VENV/bin/milo-backend" eval runs/sample
    ;;
  test)
    setup
    setup_blender
    "$VENV/bin/python" -m pytest tests -q "$@"
    ;;
  bench)
    setup
    "$VENV/bin/milo-backend" bench "$@"
    ;;
  gpu-kit)
    setup
    "$VENV/bin/python" tools/gpu_kit/build_kit.py "$@"
    ;;
  gpu-check)
    # On the GPU machine the system Python holds the CUDA torch and nothing can be installed from the
    # internet: no set-up there. Elsewhere (no CUDA, or --dry-run) the project's venv runs the dry run.
    if [[ " $* " != *" --dry-run "* ]] && "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
      exec "$PY" tools/gpu_kit/gpu_check.py "$@"
    fi
    setup
    exec "$VENV/bin/python" tools/gpu_kit/gpu_check.py "$@"
    ;;
  *)
    sed -n '2,10p' "$0"
    exit 1
    ;;
esac
