#!/usr/bin/env bash
# Makes the local stack's secrets in deploy/compose/secrets/ (gitignored; never commit them):
#   keys/local-1.pem   an Ed25519 PKCS#8 private key that signs user tokens (auth.keysDir,
#                      auth.activeKid: local-1)
#   admin-token        the bearer token of the gateway's internal admin API (admin.tokenFile)
# Run it once before `docker compose up`. Existing files are kept; pass --force to replace them.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dir="$here/secrets"
force=0
[[ "${1:-}" == "--force" ]] && force=1

command -v openssl >/dev/null || { echo "init-secrets.sh: openssl is required" >&2; exit 1; }

mkdir -p "$dir/keys"
if [[ $force == 1 || ! -s "$dir/keys/local-1.pem" ]]; then
  openssl genpkey -algorithm ed25519 -out "$dir/keys/local-1.pem"
  echo "wrote $dir/keys/local-1.pem"
fi
if [[ $force == 1 || ! -s "$dir/admin-token" ]]; then
  # No trailing newline: the file is the token.
  openssl rand -hex 32 | tr -d '\n' > "$dir/admin-token"
  echo "wrote $dir/admin-token"
fi
# The containers run as uid 65532 and bind-mount these files: they must be readable by it.
# This is a local development stack; do not reuse these files anywhere else.
chmod 755 "$dir" "$dir/keys"
chmod 644 "$dir/keys/local-1.pem" "$dir/admin-token"
