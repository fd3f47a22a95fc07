#!/usr/bin/env bash
# Builds {{name}}.wasm, the component huddle loads, from app.py.
#
# Needs Python 3.10+ and componentize-py 0.25.1 (PyPI), in .venv here (see
# README.md) or on PATH.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

if [[ -x .venv/bin/componentize-py ]]; then
    componentize_py=.venv/bin/componentize-py
elif command -v componentize-py >/dev/null; then
    componentize_py=componentize-py
else
    echo "$0: componentize-py is not installed; install it with:" >&2
    echo "    python3 -m venv .venv && .venv/bin/pip install componentize-py==0.25.1" >&2
    exit 1
fi
# A bytecode cache would land beside app.py.
PYTHONDONTWRITEBYTECODE=1 "$componentize_py" --wit-path wit --world {{world}} \
    componentize app -o {{name}}.wasm
echo "$0: built {{name}}.wasm" >&2
