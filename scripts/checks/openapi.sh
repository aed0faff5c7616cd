#!/usr/bin/env bash
# The OpenAPI document committed in docs/openapi.json is exactly what `caas openapi` generates
# from the code. Regenerate: cargo run -q -p caas -- openapi > docs/openapi.json
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/caas-target}"
TMP="$(mktemp)"
trap 'rm -f "$TMP"' EXIT

cargo run --quiet -p caas -- openapi >"$TMP"
if ! diff -u "$ROOT/docs/openapi.json" "$TMP"; then
    echo "openapi: docs/openapi.json differs from the generated document." >&2
    echo "  regenerate: cargo run -q -p caas -- openapi > docs/openapi.json" >&2
    exit 1
fi
echo "openapi: docs/openapi.json is current"
