#!/usr/bin/env bash
# Render the compose project for a Docker engine without a bridge network
# (dockerd --bridge=none, as .ci/docker-setup.sh starts it; CI and the tests
# in tests/container/ use this): every service on host networking, all
# traffic on 127.0.0.1.
#
#   containers/compose-hostnet.sh OUT.yml [EXTRA.yml ...]
#   docker-compose -f OUT.yml --project-directory . up -d
#
# OUT.yml is `docker-compose config` of
#   docker-compose.yml                       the file users run, unmodified
#   + containers/compose.ci.yml              host networking, loopback ports
#   + containers/compose.ci-devbroker.yml    only when apache/kafka (the image
#                                            of docker-compose.yml) is neither
#                                            present nor pullable: the dev broker
#   + EXTRA.yml ...                          any further files (the tests' own)
# with one change: `ports:` entries are dropped.  Under host networking they
# publish nothing, but docker-compose 1.x refuses them ("host" network_mode is
# incompatible with port_bindings), and an override file cannot delete them
# (compose v2's `!reset` does not exist in 1.x).
#
# Env: KCRON_CI_KAFKA_PORT (19092), KCRON_CI_KAFKA_EXTERNAL_PORT (19094),
#      KCRON_CI_KAFKA_CONTROLLER_PORT (19093): loopback ports of the broker;
#      KCRON_PULL=0 never pull apache/kafka; KCRON_CI_BROKER=kafka|dev forces
#      the choice; COMPOSE (default: `docker compose` if present, else docker-compose).
# Prints "broker=kafka|dev port=N" on stdout.
set -euo pipefail

OUT="${1:?usage: $0 OUT.yml [EXTRA.yml ...]}"
shift
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
log() { printf '[compose-hostnet] %s\n' "$*" >&2; }
die() { printf '[compose-hostnet] ERROR: %s\n' "$*" >&2; exit 1; }

if [ -z "${COMPOSE:-}" ]; then
    if docker compose version >/dev/null 2>&1; then COMPOSE="docker compose"; else COMPOSE=docker-compose; fi
fi
read -r -a compose <<<"$COMPOSE"

kafka_image="$(sed -n 's/^    image: \(apache\/kafka:[^ ]*\)$/\1/p' "$ROOT/docker-compose.yml" | head -n 1)"
[ -n "$kafka_image" ] || die "no apache/kafka image in docker-compose.yml"
broker="${KCRON_CI_BROKER:-}"
if [ -z "$broker" ]; then
    if docker image inspect "$kafka_image" >/dev/null 2>&1; then
        broker=kafka
    elif [ "${KCRON_PULL:-1}" != "0" ] && docker pull --quiet "$kafka_image" >/dev/null 2>&1; then
        broker=kafka
    else
        broker=dev
        log "$kafka_image is not present and cannot be pulled: using the dev broker instead"
    fi
fi
files=(-f "$ROOT/docker-compose.yml" -f "$ROOT/containers/compose.ci.yml")
if [ "$broker" = dev ]; then files+=(-f "$ROOT/containers/compose.ci-devbroker.yml"); fi
for extra in "$@"; do files+=(-f "$extra"); done

export KCRON_CI_KAFKA_PORT="${KCRON_CI_KAFKA_PORT:-19092}"
mkdir -p "$(dirname "$OUT")"
tmp="$OUT.tmp.$$"
trap 'rm -f "$tmp"' EXIT
"${compose[@]}" "${files[@]}" --project-directory "$ROOT" config >"$tmp"
# Drop every service's `ports:` block: the key at service level (4 spaces)
# and its list items (v1 prints "    - x", v2 "      - x" and deeper lines).
awk '
    skip && /^(    - |      )/ { next }
    { skip = 0 }
    /^    ports:$/ { skip = 1; next }
    { print }
' "$tmp" >"$OUT"
if grep -q '^    ports:' "$OUT"; then die "could not drop ports: from $OUT"; fi
"${compose[@]}" -f "$OUT" --project-directory "$ROOT" config -q
log "wrote $OUT (broker: $broker on 127.0.0.1:$KCRON_CI_KAFKA_PORT)"
echo "broker=$broker port=$KCRON_CI_KAFKA_PORT"
