#!/usr/bin/env bash
# Runs every test: installs what the black-box tests need on a Debian/Ubuntu machine that
# has only Rust, then `cargo test --locked`. Extra arguments go to cargo test.
#
# - openssl: the TLS tests make their certificates with it;
# - python3: the push test runs a small HTTPS push gateway (standard library only);
# - coturn (turnserver, turnutils_uclient): the TURN credentials are tested against it;
# - a Python virtualenv with matrix-nio (tests/nio/setup.sh): the Python-bot tests;
# - a Python virtualenv with Synapse (tests/synapse/setup.sh): the federation tests run a
#   real Synapse on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
command -v turnutils_uclient >/dev/null 2>&1 || missing+=(coturn)
if ((${#missing[@]})); then
    if [ "$(id -u)" -ne 0 ]; then
        echo "tests/run.sh: missing ${missing[*]}; install them (apt-get install ${missing[*]}) or run as root" >&2
        exit 1
    fi
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ -f tests/nio/setup.sh ]; then
    bash tests/nio/setup.sh
fi
if [ -f tests/synapse/setup.sh ]; then
    bash tests/synapse/setup.sh
fi

cargo test --locked "$@"
