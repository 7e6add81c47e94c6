#!/usr/bin/env bash
# Installs easyfsl (the comparison baseline of benchmarks/throughput.py) into benchmarks/.easyfsl,
# without its dependencies (torch etc. come from .venv), leaving .venv's packages untouched.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
.venv/bin/python -m pip install --no-deps --upgrade --target benchmarks/.easyfsl "easyfsl==1.5.0"
