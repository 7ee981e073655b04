# Sourced by the scripts in this folder: find Python >= 3.10, create .venv and install the
# requirements when they are missing or changed. Sets REPO_ROOT and PYTHON.
# AVR_VENV overrides the environment's location.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${AVR_VENV:-$REPO_ROOT/.venv}"

find_system_python() {
    local candidate
    for candidate in python3 python; do
        if command -v "$candidate" >/dev/null 2>&1 &&
           "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
            echo "$candidate"
            return 0
        fi
    done
    echo "error: Python >= 3.10 is required (python3 not found or too old)" >&2
    return 1
}

# ensure_venv REQUIREMENTS_FILE: install it into the venv unless the same file was installed before.
ensure_venv() {
    local requirements="$REPO_ROOT/$1"
    if [ ! -x "$VENV/bin/python" ]; then
        local system_python
        system_python="$(find_system_python)"
        echo "creating $VENV"
        "$system_python" -m venv "$VENV"
    fi
    local stamp="$VENV/.installed-$(basename "$requirements")"
    local digest
    digest="$(cat "$REPO_ROOT"/requirements*.txt | sha256sum | cut -d' ' -f1)"
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$digest" ]; then
        echo "installing $(basename "$requirements") into $VENV (first run: a few minutes)"
        "$VENV/bin/python" -m pip install --quiet --upgrade pip 2>&1 | grep -v "is ignored" || true
        local log="$VENV/pip-install.log"
        if ! "$VENV/bin/python" -m pip install --quiet -r "$requirements" >"$log" 2>&1; then
            grep -v "is ignored" "$log" >&2 || true
            echo "error: pip install -r $requirements failed (full log: $log)" >&2
            return 1
        fi
        echo "$digest" >"$stamp"
    fi
    PYTHON="$VENV/bin/python"
    export PYTHONPATH="$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}"
}
