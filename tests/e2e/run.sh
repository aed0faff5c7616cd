#!/usr/bin/env bash
# The caas end-to-end suite. Runs against the cluster of the current kubeconfig (KUBECONFIG /
# --context), or creates a kind cluster from kind-config.yaml with --kind. It uses only public
# interfaces: kubectl, helm, the chart, and HTTP to the gateway through `kubectl port-forward`.
#
#   tests/e2e/run.sh --kind          # kind cluster `caas-e2e`: build + load images, run, delete it
#   tests/e2e/run.sh                 # the current kubeconfig's cluster; images must be pullable
#                                    # (CAAS_E2E_IMAGE_REPO/..., or build+push them yourself)
#
# Options:
#   --kind            create the kind cluster (kind-config.yaml), build both images, `kind load` them
#   --keep            keep the kind cluster and the namespace afterwards (for debugging)
#   --context NAME    kubeconfig context to use
#   --skip-build      do not build images (with --kind: load the ones already built)
# Environment:
#   CAAS_E2E_NAMESPACE            namespace of the platform (default caas-e2e)
#   CAAS_E2E_OPERATOR_NAMESPACE   namespace of the operator release (default caas-system)
#   CAAS_E2E_IMAGE_REPO / CAAS_E2E_OPERATOR_IMAGE_REPO / CAAS_E2E_IMAGE_TAG
#                                 images (default caas / caas-operator, tag e2e)
#   CAAS_E2E_TIMEOUT              seconds to wait for each Ready (default 600)
#   CAAS_E2E_SKIP_SOCKET=1        skip the Socket.IO step (reported as SKIPPED)
#
# Exit status: 0 only when every step passed. A missing tool is an error, never a pass.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
FIX="$ROOT/tests/e2e/fixtures"
NS="${CAAS_E2E_NAMESPACE:-caas-e2e}"
OP_NS="${CAAS_E2E_OPERATOR_NAMESPACE:-caas-system}"
IMAGE_REPO="${CAAS_E2E_IMAGE_REPO:-caas}"
OP_IMAGE_REPO="${CAAS_E2E_OPERATOR_IMAGE_REPO:-caas-operator}"
TAG="${CAAS_E2E_IMAGE_TAG:-e2e}"
TIMEOUT="${CAAS_E2E_TIMEOUT:-600}"
KIND_CLUSTER=caas-e2e
PLATFORM=chat
TENANT=acme
LOCAL_PORT="${CAAS_E2E_LOCAL_PORT:-18080}"
ADMIN_LOCAL_PORT="${CAAS_E2E_ADMIN_LOCAL_PORT:-18081}"

use_kind=0
keep=0
skip_build=0
kctx=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --kind) use_kind=1 ;;
    --keep) keep=1 ;;
    --skip-build) skip_build=1 ;;
    --context) kctx=(--context "$2"); shift ;;
    -h|--help) sed -n '2,27p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "e2e: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

FAILED=()
SKIPPED=()
PF_PIDS=()
cluster_ok=0

log() { printf '\n=== %s\n' "$*"; }
die() { printf 'e2e: FAILED: %s\n' "$*" >&2; exit 1; }
k() { kubectl "${kctx[@]}" "$@"; }
kn() { kubectl "${kctx[@]}" -n "$NS" "$@"; }
h() {
  if [[ ${#kctx[@]} -gt 0 ]]; then helm --kube-context "${kctx[1]}" "$@"; else helm "$@"; fi
}

stop_port_forwards() {
  local pid
  for pid in "${PF_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  PF_PIDS=()
}

cleanup() {
  local rc=$?
  stop_port_forwards
  if [[ $rc -ne 0 && $cluster_ok == 1 ]]; then
    echo "--- diagnostics (namespace $NS)" >&2
    kn get chatplatforms,tenants,deploy,sts,pods -o wide 2>&1 | sed 's/^/  /' >&2 || true
    kn get chatplatform "$PLATFORM" -o jsonpath='{.status}' 2>/dev/null >&2 || true
    echo >&2
    k -n "$OP_NS" logs -l app.kubernetes.io/name=caas-operator --tail=50 2>&1 | sed 's/^/  /' >&2 || true
  fi
  if [[ $use_kind == 1 && $keep == 0 ]]; then
    kind delete cluster --name "$KIND_CLUSTER" >/dev/null 2>&1 || true
  fi
  exit "$rc"
}
trap cleanup EXIT

# Polls `cmd...` once a second until it succeeds or `secs` pass.
wait_for() {
  local secs="$1" what="$2"; shift 2
  local i
  for ((i = 0; i < secs; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 1
  done
  die "timed out after ${secs}s waiting for: $what"
}

# HTTP against the port-forwarded gateway: sets CODE and BODY.
http() {
  local method="$1" url="$2" token="${3:-}" body="${4:-}"
  local args=(-sS -o /tmp/caas-e2e-body.$$ -w '%{http_code}' -X "$method" "$url" -H 'content-type: application/json')
  [[ -n "$token" ]] && args+=(-H "authorization: Bearer $token")
  [[ -n "$body" ]] && args+=(-d "$body")
  CODE="$(curl "${args[@]}")" || die "curl $method $url failed"
  BODY="$(cat /tmp/caas-e2e-body.$$)"
  rm -f /tmp/caas-e2e-body.$$
}
expect() {
  [[ "$CODE" == "$1" ]] || die "$2: expected HTTP $1, got $CODE: $BODY"
}

port_forward() {
  local target="$1" local_port="$2" remote_port="$3"
  kn port-forward "$target" "$local_port:$remote_port" >/dev/null 2>&1 &
  PF_PIDS+=("$!")
  wait_for 60 "port-forward $target :$local_port" curl -sf "http://127.0.0.1:$local_port/health"
}

deploy_revision() {
  kn get deploy "$PLATFORM-$1" -o jsonpath='{.metadata.annotations.deployment\.kubernetes\.io/revision}'
}

# ---------------------------------------------------------------------------------------------
log "prerequisites"
missing=()
need=(kubectl helm curl jq base64)
if [[ $use_kind == 1 ]]; then need+=(kind); fi
if [[ $skip_build == 0 ]]; then need+=(docker); fi
for tool in "${need[@]}"; do command -v "$tool" >/dev/null 2>&1 || missing+=("$tool"); done
if [[ ${#missing[@]} -gt 0 ]]; then
  die "missing tools: ${missing[*]}. This suite needs a machine with Docker (to build images), kind (--kind), kubectl, helm, curl and jq; it cannot run without them, so it does not pass."
fi
if [[ $skip_build == 0 ]]; then
  docker info >/dev/null 2>&1 || die "docker is installed but no Docker engine answers (docker info failed)"
fi

if [[ $use_kind == 1 ]]; then
  log "kind cluster $KIND_CLUSTER"
  if ! kind get clusters 2>/dev/null | grep -qx "$KIND_CLUSTER"; then
    kind create cluster --name "$KIND_CLUSTER" --config "$ROOT/kind-config.yaml" --wait 180s
  fi
  kctx=(--context "kind-$KIND_CLUSTER")
fi
k cluster-info >/dev/null 2>&1 || die "no cluster reachable with the current kubeconfig${kctx[*]:+ (${kctx[*]})}"
cluster_ok=1

if [[ $skip_build == 0 ]]; then
  log "build images $IMAGE_REPO:$TAG and $OP_IMAGE_REPO:$TAG"
  docker build -t "$IMAGE_REPO:$TAG" -f "$ROOT/Dockerfile" "$ROOT"
  docker build -t "$OP_IMAGE_REPO:$TAG" -f "$ROOT/operator/Dockerfile" "$ROOT"
fi
if [[ $use_kind == 1 ]]; then
  log "kind load images"
  kind load docker-image --name "$KIND_CLUSTER" "$IMAGE_REPO:$TAG" "$OP_IMAGE_REPO:$TAG"
fi

# ---------------------------------------------------------------------------------------------
log "install the operator chart into $OP_NS"
h upgrade --install caas-operator "$ROOT/charts/caas-operator" \
  --namespace "$OP_NS" --create-namespace \
  --set image.repository="$OP_IMAGE_REPO" --set image.tag="$TAG" --set image.pullPolicy=IfNotPresent \
  --wait --timeout "${TIMEOUT}s"
k get crd chatplatforms.caas.dev tenants.caas.dev >/dev/null || die "the chart did not install the CRDs"

log "backing services in $NS (MongoDB rs, Kafka KRaft, Redis, MinIO)"
k create namespace "$NS" --dry-run=client -o yaml | k apply -f - >/dev/null
kn apply -f "$FIX/backing-services.yaml"
kn rollout status statefulset/mongodb --timeout="${TIMEOUT}s"
for d in kafka redis minio; do kn rollout status "deploy/$d" --timeout="${TIMEOUT}s"; done
kn wait --for=condition=complete job/minio-bucket --timeout="${TIMEOUT}s"

# ---------------------------------------------------------------------------------------------
log "ChatPlatform $PLATFORM and Tenant $TENANT become Ready"
sed -e "s|__CAAS_IMAGE_REPOSITORY__|$IMAGE_REPO|" -e "s|__CAAS_IMAGE_TAG__|$TAG|" "$FIX/platform.yaml" | kn apply -f -
kn apply -f "$FIX/tenant.yaml"
kn wait --for=condition=Ready "chatplatform/$PLATFORM" --timeout="${TIMEOUT}s"
kn wait --for=condition=Ready "tenant/$TENANT" --timeout="${TIMEOUT}s"
gen="$(kn get chatplatform "$PLATFORM" -o jsonpath='{.metadata.generation}')"
ogen="$(kn get chatplatform "$PLATFORM" -o jsonpath='{.status.observedGeneration}')"
[[ "$gen" == "$ogen" ]] || die "platform Ready but status.observedGeneration=$ogen != generation=$gen"

# ---------------------------------------------------------------------------------------------
log "tenant credentials -> token -> conversation -> send -> list (REST through the gateway)"
cred_secret="$TENANT-credentials"
app_id="$(kn get secret "$cred_secret" -o jsonpath='{.data.appId}' | base64 -d)"
app_secret="$(kn get secret "$cred_secret" -o jsonpath='{.data.appSecret}' | base64 -d)"
[[ -n "$app_id" && -n "$app_secret" ]] || die "Secret $cred_secret lacks appId/appSecret"
port_forward "svc/$PLATFORM-gateway" "$LOCAL_PORT" 8080
API="http://127.0.0.1:$LOCAL_PORT"

exchange() {
  http POST "$API/v1/token" "" "$(jq -nc --arg a "$app_id" --arg s "$app_secret" --arg u "$1" '{app_id:$a,app_secret:$s,user_id:$u}')"
}
exchange alice; expect 200 "token exchange (alice)"
alice="$(jq -r .token <<<"$BODY")"
exchange bob; expect 200 "token exchange (bob)"
conv="e2e-$(date +%s)"
http POST "$API/v1/conversations" "$alice" "$(jq -nc --arg c "$conv" '{kind:"group",id:$c,name:"E2E",members:["bob"]}')"
expect 201 "create conversation"
text="hello from the e2e suite $conv"
http POST "$API/v1/conversations/$conv/messages" "$alice" "$(jq -nc --arg t "$text" '{text:$t}')"
expect 201 "send message"
msg_id="$(jq -r .message.id <<<"$BODY")"
http GET "$API/v1/conversations/$conv/messages?after=-1&limit=50" "$alice"
expect 200 "list messages"
jq -e --arg id "$msg_id" --arg t "$text" 'any(.messages[]; .id == $id and .text == $t)' <<<"$BODY" >/dev/null \
  || die "the sent message $msg_id is not in the list: $BODY"
echo "sent and listed message $msg_id"

# ---------------------------------------------------------------------------------------------
log "Socket.IO: receive a message in real time (official client, through the socket Service)"
if [[ "${CAAS_E2E_SKIP_SOCKET:-0}" == 1 ]]; then
  echo "SKIPPED (CAAS_E2E_SKIP_SOCKET=1)"
  SKIPPED+=("socket.io receive (CAAS_E2E_SKIP_SOCKET=1)")
else
  exchange bob; expect 200 "token exchange (bob, for the socket)"
  bob="$(jq -r .token <<<"$BODY")"
  [[ -d "$ROOT/tests/js/node_modules" ]] || (cd "$ROOT/tests/js" && npm ci --no-audit --no-fund)
  kn rollout status "deploy/$PLATFORM-socket" --timeout="${TIMEOUT}s"
  port_forward "svc/$PLATFORM-socket" "$((LOCAL_PORT + 1))" 8080
  if node "$ROOT/tests/js/e2e-receive.mjs" "$API" "http://127.0.0.1:$((LOCAL_PORT + 1))" "$alice" "$bob" "$conv"; then
    echo "received over Socket.IO"
  else
    FAILED+=("socket.io receive")
  fi
fi

# ---------------------------------------------------------------------------------------------
log "a config change rolls the Deployments"
rev_before="$(deploy_revision gateway)"
dgen_before="$(kn get deploy "$PLATFORM-gateway" -o jsonpath='{.metadata.generation}')"
hash_before="$(kn get deploy "$PLATFORM-gateway" -o jsonpath='{.spec.template.metadata.annotations.caas\.dev/config-hash}')"
kn patch chatplatform "$PLATFORM" --type merge -p '{"spec":{"auth":{"tokenTtlSeconds":600}}}'
pgen="$(kn get chatplatform "$PLATFORM" -o jsonpath='{.metadata.generation}')"
wait_for "$TIMEOUT" "gateway Deployment revision to move past $rev_before" \
  bash -c "[[ \"\$(kubectl ${kctx[*]} -n $NS get deploy $PLATFORM-gateway -o jsonpath='{.metadata.annotations.deployment\.kubernetes\.io/revision}')\" -gt $rev_before ]]"
kn rollout status "deploy/$PLATFORM-gateway" --timeout="${TIMEOUT}s"
kn rollout status "deploy/$PLATFORM-pipeline" --timeout="${TIMEOUT}s"
dgen_after="$(kn get deploy "$PLATFORM-gateway" -o jsonpath='{.metadata.generation}')"
dogen_after="$(kn get deploy "$PLATFORM-gateway" -o jsonpath='{.status.observedGeneration}')"
hash_after="$(kn get deploy "$PLATFORM-gateway" -o jsonpath='{.spec.template.metadata.annotations.caas\.dev/config-hash}')"
[[ "$dgen_after" -gt "$dgen_before" ]] || die "gateway Deployment generation did not change ($dgen_before -> $dgen_after)"
[[ "$dogen_after" == "$dgen_after" ]] || die "gateway Deployment observedGeneration $dogen_after != generation $dgen_after"
[[ "$hash_after" != "$hash_before" ]] || die "the config hash annotation did not change ($hash_before)"
new_rs="$(kn get rs -l app.kubernetes.io/instance="$PLATFORM",app.kubernetes.io/component=gateway \
  -o jsonpath="{range .items[?(@.metadata.annotations.deployment\.kubernetes\.io/revision==\"$(deploy_revision gateway)\")]}{.metadata.name}{end}")"
[[ -n "$new_rs" ]] || die "no ReplicaSet for the new gateway revision"
wait_for "$TIMEOUT" "platform observedGeneration $pgen and Ready" \
  bash -c "[[ \"\$(kubectl ${kctx[*]} -n $NS get chatplatform $PLATFORM -o jsonpath='{.status.observedGeneration}')\" == $pgen ]]"
kn wait --for=condition=Ready "chatplatform/$PLATFORM" --timeout="${TIMEOUT}s"
echo "gateway rolled: revision $rev_before -> $(deploy_revision gateway), ReplicaSet $new_rs"
# The new pods run the new configuration: a fresh token lives 600 s.
stop_port_forwards
port_forward "svc/$PLATFORM-gateway" "$LOCAL_PORT" 8080
exchange alice; expect 200 "token exchange after the roll"
ttl="$(jq -r '.token | split(".")[1] | gsub("-";"+") | gsub("_";"/") | . + ("=" * ((4 - length % 4) % 4)) | @base64d | fromjson | .exp - .iat' <<<"$BODY")"
[[ "$ttl" == 600 ]] || die "a token issued after the change lives ${ttl}s, not 600s"

# ---------------------------------------------------------------------------------------------
log "a deleted Deployment comes back"
stop_port_forwards
old_uid="$(kn get deploy "$PLATFORM-gateway" -o jsonpath='{.metadata.uid}')"
kn delete deploy "$PLATFORM-gateway" --wait=true
wait_for "$TIMEOUT" "the operator to recreate deploy/$PLATFORM-gateway" \
  bash -c "u=\$(kubectl ${kctx[*]} -n $NS get deploy $PLATFORM-gateway -o jsonpath='{.metadata.uid}') && [[ -n \"\$u\" && \"\$u\" != $old_uid ]]"
kn rollout status "deploy/$PLATFORM-gateway" --timeout="${TIMEOUT}s"
kn wait --for=condition=Ready "chatplatform/$PLATFORM" --timeout="${TIMEOUT}s"
echo "deploy/$PLATFORM-gateway recreated"

# ---------------------------------------------------------------------------------------------
log "deleting the Tenant (deletionPolicy Delete) removes its credentials and data"
kn delete tenant "$TENANT" --wait=true --timeout="${TIMEOUT}s"
wait_for 120 "Secret $cred_secret to be garbage-collected" bash -c "! kubectl ${kctx[*]} -n $NS get secret $cred_secret"
port_forward "svc/$PLATFORM-gateway" "$LOCAL_PORT" 8080
exchange alice
[[ "$CODE" =~ ^(401|403|404)$ ]] || die "the deleted tenant's credentials still answer HTTP $CODE: $BODY"
# The admin API (internal port) no longer knows the tenant. Port-forward reaches the pod directly.
admin_token="$(kn get secret "$PLATFORM-admin-token" -o jsonpath='{.data.token}' | base64 -d)"
gw_pod="$(kn get pods -l app.kubernetes.io/instance="$PLATFORM",app.kubernetes.io/component=gateway -o jsonpath='{.items[0].metadata.name}')"
kn port-forward "pod/$gw_pod" "$ADMIN_LOCAL_PORT:8081" >/dev/null 2>&1 &
PF_PIDS+=("$!")
wait_for 60 "admin port-forward" curl -s -o /dev/null "http://127.0.0.1:$ADMIN_LOCAL_PORT/admin/v1/tenants"
http GET "http://127.0.0.1:$ADMIN_LOCAL_PORT/admin/v1/tenants/$TENANT" "$admin_token"
expect 404 "the deleted tenant on the admin API"
stop_port_forwards
echo "tenant $TENANT deleted: credentials refused, admin API 404"

# ---------------------------------------------------------------------------------------------
log "deleting the ChatPlatform removes everything it owns"
kn delete chatplatform "$PLATFORM" --wait=true --timeout="${TIMEOUT}s"
owned() {
  kubectl "${kctx[@]}" -n "$NS" get deploy,sts,svc,cm,secret,sa,pdb,hpa,networkpolicy,ingress \
    -l app.kubernetes.io/instance="$PLATFORM" -o name 2>/dev/null
}
for ((i = 0; i < 180; i++)); do
  [[ -z "$(owned)" ]] && break
  sleep 1
done
left="$(owned)"
[[ -z "$left" ]] || die "objects of the deleted platform remain: $left"
echo "every object of $PLATFORM is gone"

if [[ $keep == 0 ]]; then
  k delete namespace "$NS" --wait=false >/dev/null || true
fi

# ---------------------------------------------------------------------------------------------
log "summary"
for s in "${SKIPPED[@]}"; do echo "SKIPPED: $s"; done
if [[ ${#FAILED[@]} -gt 0 ]]; then
  for f in "${FAILED[@]}"; do echo "FAILED: $f" >&2; done
  exit 1
fi
echo "e2e: all steps passed"
