#!/usr/bin/env bash
# Operator checks that `cargo test` does not cover on its own:
#   1. the CRD YAML in crds/ is exactly what `caas-operator crd --out-dir` generates now;
#   2. the Helm chart charts/caas-operator passes real Helm lint (Helm's Go library, shipped in
#      the PyPI package helm-sdkpy), with its CRDs identical to crds/.
# Run from anywhere; exits non-zero on the first failure.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CHART_DIR="$ROOT/charts/caas-operator"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/caas-target}"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

echo "operator: regenerating CRDs"
cargo run --quiet -p caas-operator -- crd --out-dir "$TMP/crds"
if ! diff -ru "$ROOT/crds" "$TMP/crds"; then
    echo "operator: crds/ differs from the generated CRDs." >&2
    echo "  regenerate: cargo run -p caas-operator -- crd --out-dir crds" >&2
    exit 1
fi
echo "operator: crds/ is current"

if ! diff -ru "$ROOT/crds" "$CHART_DIR/crds"; then
    echo "operator: $CHART_DIR/crds differs from crds/; copy crds/*.yaml into it." >&2
    exit 1
fi
echo "operator: chart CRDs match crds/"

PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import helm_sdkpy' 2>/dev/null; then
    echo "operator: installing helm-sdkpy (Helm's library) for the chart lint"
    "$PYTHON" -m pip install --quiet --ignore-requires-python --break-system-packages helm-sdkpy \
        || "$PYTHON" -m pip install --quiet --ignore-requires-python helm-sdkpy
fi

echo "operator: helm lint $CHART_DIR"
"$PYTHON" - "$CHART_DIR" <<'PY'
import asyncio, sys
import helm_sdkpy

# Helm's support.Severity: 0 unknown, 1 info, 2 warning, 3 error. The library returns the
# message's path and severity; the Go error text does not survive the JSON bridge.
NAMES = {0: "unknown", 1: "info", 2: "warning", 3: "error"}
result = asyncio.run(helm_sdkpy.Lint(helm_sdkpy.Configuration()).run(sys.argv[1]))
errors = 0
for m in result.get("Messages") or []:
    severity = int(m.get("Severity", 0))
    print(f"  [{NAMES.get(severity, severity)}] {m.get('Path', '')}")
    if severity >= 3:
        errors += 1
errors = max(errors, len(result.get("Errors") or []))
if result.get("TotalChartsLinted") != 1:
    print("operator: helm lint did not lint the chart", file=sys.stderr)
    sys.exit(1)
if errors:
    print(f"operator: helm lint found {errors} error(s)", file=sys.stderr)
    sys.exit(1)
print("operator: helm lint passed")
PY

# Lint cannot show rendered output without a cluster here, so check the operator's pod template
# for the restricted Pod Security Standard settings as written.
for setting in 'runAsNonRoot: true' 'readOnlyRootFilesystem: true' 'allowPrivilegeEscalation: false' \
    'drop: ["ALL"]' 'type: RuntimeDefault'; do
    if ! grep -qF "$setting" "$CHART_DIR/templates/deployment.yaml"; then
        echo "operator: charts/caas-operator/templates/deployment.yaml lacks '$setting'" >&2
        exit 1
    fi
done
echo "operator: chart pod template is PSS-restricted"
