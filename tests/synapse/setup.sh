#!/usr/bin/env bash
# Makes the Python virtualenv the federation tests start Synapse from (tests/it/synapse.rs):
# ${CARGO_TARGET_DIR:-target}/synapse-venv with tests/synapse/requirements.txt installed from
# PyPI. Idempotent: returns at once when the venv already has those requirements. Installs
# Debian's python3-venv first when Python cannot make a virtualenv (root only).
set -euo pipefail
cd "$(dirname "$0")/../.."

target="${CARGO_TARGET_DIR:-target}"
venv="$target/synapse-venv"
requirements=tests/synapse/requirements.txt
stamp="$venv/.requirements"

if [ -x "$venv/bin/python" ] && cmp -s "$requirements" "$stamp" \
    && "$venv/bin/python" -c 'import synapse.app.homeserver' 2>/dev/null; then
    exit 0
fi

if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "tests/synapse/setup.sh: python3 cannot make a virtualenv; install python3-venv (apt-get install python3-venv) or run as root" >&2
        exit 1
    fi
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
fi

echo "tests/synapse/setup.sh: making $venv" >&2
rm -rf "$venv"
mkdir -p "$target"
python3 -m venv "$venv"
# Wheels only: a release without a wheel for this Python fails here, instead of compiling
# Synapse's Rust extension for minutes.
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --only-binary=:all: \
    -r "$requirements"
"$venv/bin/python" -c 'import synapse.app.homeserver'
cp "$requirements" "$stamp"
