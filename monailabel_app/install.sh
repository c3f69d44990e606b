#!/usr/bin/env bash
# Create the MONAI Label app's virtual environment (default: .venv-monailabel in the repository root) on a fresh
# Linux machine with Python 3.11 and no GPU:  bash monailabel_app/install.sh [VENV]
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-.venv-monailabel}"
python3 -m venv "$venv"
pip="$venv/bin/pip"
"$pip" install -q torch==2.13.0 "numpy==1.26.4" setuptools wheel
# sam2 is built against the torch above (its own isolated build would fetch a CUDA torch), without CUDA kernels
SAM2_BUILD_CUDA=0 "$pip" install -q --no-build-isolation torch==2.13.0 -r monailabel_app/requirements.txt
# PyPI's torchvision (a CUDA build, pulled in by MONAI's extras) does not import beside the CPU torch and breaks
# transformers; nothing this app runs needs it (MONAI Label's BundleInferTask does, and this app does not use it)
"$pip" uninstall -q -y torchvision
# this project's package (text_pipeline), its dependencies already installed above
"$pip" install -q --no-deps --no-build-isolation torch==2.13.0 -e .
"$venv/bin/python" -c "import monailabel, text_pipeline; print('MONAI Label', monailabel.__version__, 'in', '$venv')"
