#!/usr/bin/env bash
# Build fewshot's virtual environment from nothing (Python 3.11+).
#
#   scripts/install.sh            # creates ./.venv and installs fewshot into it
#   VENV=/path/to/env scripts/install.sh
#   FEWSHOT_EXTRAS=dev scripts/install.sh   # also the test tools (pytest, hypothesis)
#
# Idempotent: steps whose result is already present are skipped, so re-running is cheap.
# learn2learn 0.2.0 (the last release) ships Cython C files generated for Python <= 3.10
# (they include longintrepr.h, upstream issue #413); we rebuild them from its own .pyx
# sources with a current Cython before installing it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
EXTRAS="${FEWSHOT_EXTRAS:-}"
L2L_VERSION=0.2.0

log() { printf '[install] %s\n' "$*" >&2; }

if [ ! -x "$VENV/bin/python" ]; then
  log "creating virtual environment at $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check)
"${PIP[@]}" install -q --upgrade pip setuptools wheel

# torch first, pinned: the 2.14.1 / 0.29.1 pair is the one whose torchvision imports
# (timm and learn2learn import torchvision at import time).
if ! "$PY" -c "import torch, torchvision; assert torch.__version__.startswith('2.14.1')" 2>/dev/null; then
  log "installing torch 2.14.1 + torchvision 0.29.1"
  "${PIP[@]}" install -q torch==2.14.1 torchvision==0.29.1
fi

log "installing the pinned dependencies"
"${PIP[@]}" install -q -c "$ROOT/scripts/constraints.txt" \
  timm scikit-learn scipy faiss-cpu click mlflow tqdm pyyaml pillow gym cython numpy

if ! "$PY" -c "import learn2learn" 2>/dev/null; then
  log "building learn2learn $L2L_VERSION from its sdist (Cython rebuild for Python 3.11+)"
  BUILD="$(mktemp -d)"
  trap 'rm -rf "$BUILD"' EXIT
  "${PIP[@]}" download -q --no-deps --no-binary :all: -d "$BUILD" "learn2learn==$L2L_VERSION"
  tar -xzf "$BUILD"/learn2learn-"$L2L_VERSION".tar.gz -C "$BUILD"
  SRC="$BUILD/learn2learn-$L2L_VERSION"
  # Drop the stale generated C files so that setup.py regenerates them from the .pyx sources.
  find "$SRC/learn2learn" -name '*.c' -delete
  (cd "$SRC" && "$PY" setup.py -q build_ext --inplace >/dev/null)
  "${PIP[@]}" install -q --no-deps --no-build-isolation "$SRC"
fi

log "installing fewshot (editable)"
if [ -n "$EXTRAS" ]; then
  "${PIP[@]}" install -q -c "$ROOT/scripts/constraints.txt" -e "$ROOT[$EXTRAS]"
else
  "${PIP[@]}" install -q --no-deps -e "$ROOT"
fi
"$PY" -c "import torch, timm, sklearn, scipy, faiss, click, mlflow, learn2learn" 2>/dev/null
log "done: activate with 'source $VENV/bin/activate'"
