#!/usr/bin/env bash
# Rewrite constraints.txt from the packages installed in .venv (torch pinned to the CPU wheel).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -m pip freeze --exclude-editable | grep -v '^speechdata' \
  | sed 's/^torch==\([0-9.]*\)+cpu$/torch==\1/' > constraints.txt
echo "wrote constraints.txt ($(wc -l < constraints.txt) packages)"
