#!/usr/bin/env bash
# Runs the whole platform in one process: `caas standalone` on embedded defaults (state in
# ./caas-data). On a fresh Debian machine it first installs the packages the build needs
# (librdkafka is compiled with CMake); everything else comes from crates.io.
#
#   scripts/run.sh                      # caas standalone
#   scripts/run.sh standalone --help    # its options
#   scripts/run.sh gateway --config F   # any other caas command
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PATH="$HOME/.cargo/bin:$PATH"

need=()
if command -v dpkg-query >/dev/null 2>&1; then
    for p in cmake pkg-config libcurl4-openssl-dev libsasl2-dev g++ make; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
    done
fi
if [ "${#need[@]}" -gt 0 ]; then
    echo "run.sh: installing build packages: ${need[*]}" >&2
    sudo_cmd=()
    [ "$(id -u)" = 0 ] || sudo_cmd=(sudo)
    "${sudo_cmd[@]}" apt-get update -qq
    "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi

cd "$ROOT"
if [ "$#" -eq 0 ]; then
    set -- standalone
fi
exec cargo run --release -p caas -- "$@"
