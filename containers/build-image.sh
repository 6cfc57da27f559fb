#!/usr/bin/env bash
# Build the kcron image from containers/Dockerfile (`make image` runs this).
#
# The base image: BASE_IMAGE if set; else the official python:3.11-slim-bookworm
# when it is present locally or can be pulled; else the local Debian base
# kcron-local-base:bookworm (containers/local-base.sh builds it without any
# image registry).  A pull is tried only when the default is not present, and
# at most once (KCRON_PULL=0: never).
#
# RUN steps use host networking when the engine has no 'bridge' network
# (dockerd --bridge=none, as .ci/docker-setup.sh starts it); override with
# BUILD_NETWORK=host|default|none.
#
# Usage: containers/build-image.sh [TAG]     (default $KCRON_IMAGE, else kcron:latest)
# Env:   BASE_IMAGE, KCRON_PULL, BUILD_NETWORK,
#        DOCKER_BUILD_ARGS  extra `docker build` arguments, e.g. "--no-cache"
# Prints the chosen base on stderr and, on success, "BASE_IMAGE=<base>" last
# on stdout (for scripts).
set -euo pipefail

TAG="${1:-${KCRON_IMAGE:-kcron:latest}}"
DEFAULT_BASE="python:3.11-slim-bookworm"
LOCAL_BASE="kcron-local-base:bookworm"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

log() { printf '[kcron-image] %s\n' "$*" >&2; }
die() { printf '[kcron-image] ERROR: %s\n' "$*" >&2; exit 1; }
present() { docker image inspect "$1" >/dev/null 2>&1; }

docker info >/dev/null 2>&1 || die "no Docker engine answers (start one, e.g. .ci/docker-setup.sh)"

base="${BASE_IMAGE:-}"
if [ -z "$base" ]; then
    if present "$DEFAULT_BASE"; then
        base="$DEFAULT_BASE"
    elif [ "${KCRON_PULL:-1}" != "0" ] && docker pull --quiet "$DEFAULT_BASE" >/dev/null 2>&1; then
        base="$DEFAULT_BASE"
    elif present "$LOCAL_BASE"; then
        base="$LOCAL_BASE"
        log "$DEFAULT_BASE is not present and cannot be pulled: building FROM $LOCAL_BASE"
    else
        die "$DEFAULT_BASE is not present and cannot be pulled, and $LOCAL_BASE does not exist: build it with containers/local-base.sh (or set BASE_IMAGE)"
    fi
fi

network=()
case "${BUILD_NETWORK:-auto}" in
    auto) docker network inspect bridge >/dev/null 2>&1 || network=(--network host) ;;
    default) ;;
    *) network=(--network "$BUILD_NETWORK") ;;
esac

read -r -a extra <<<"${DOCKER_BUILD_ARGS:-}"
log "docker build $TAG FROM $base ${network[*]}"
start=$SECONDS
docker build --force-rm "${network[@]}" "${extra[@]}" \
    --build-arg "BASE_IMAGE=$base" \
    --label "org.kcron.base-image=$base" \
    -f "$ROOT/containers/Dockerfile" -t "$TAG" "$ROOT" >&2
size="$(docker image inspect -f '{{.Size}}' "$TAG")"
log "built $TAG FROM $base in $((SECONDS - start))s ($((size / 1000 / 1000)) MB)"
echo "BASE_IMAGE=$base"
