#!/usr/bin/env bash
# Install and start a local Docker engine for kcron's CI and dev machines.
#
# Idempotent: packages already present are left alone, and dockerd is only
# started when `docker info` does not already answer.
#
# The daemon is started with --bridge=none --iptables=false --ip6tables=false:
# no docker0 bridge, no NAT rules, no private-range addresses.  Containers
# must therefore use host networking (`docker run --network host`,
# `docker build --network host`, compose `network_mode: host`) and talk to
# each other over loopback only.  No image registry is reachable from here;
# images are built locally (containers/local-base.sh,
# containers/build-tansu-image.sh).
#
# Env:
#   DOCKERD_LOG        log file of dockerd   (default /tmp/kcron-dockerd.log)
#   DOCKERD_WAIT_SECS  how long to wait for the daemon to answer (default 60)
set -euo pipefail

DOCKERD_LOG="${DOCKERD_LOG:-/tmp/kcron-dockerd.log}"
DOCKERD_WAIT_SECS="${DOCKERD_WAIT_SECS:-60}"

log() { printf '[docker-setup] %s\n' "$*" >&2; }
die() { printf '[docker-setup] ERROR: %s\n' "$*" >&2; exit 1; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || die "must run as root (or have sudo)"
    SUDO="sudo"
fi

# --- packages --------------------------------------------------------------
# docker.io      : dockerd + containerd + runc (+ a 20.10 docker client)
# docker-compose : Debian's compose v1 (1.29.x, the `docker-compose` command);
#                  bookworm has no `docker compose` v2 plugin package.
# debootstrap    : builds the local base image (containers/local-base.sh)
PKGS=(docker.io docker-compose debootstrap ca-certificates)
missing=()
for p in "${PKGS[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
        missing+=("$p")
    fi
done
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -q
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
        --no-install-recommends "${missing[@]}"
else
    log "packages already installed: ${PKGS[*]}"
fi

DOCKERD="$(command -v dockerd || true)"
[ -n "$DOCKERD" ] || DOCKERD=/usr/sbin/dockerd
[ -x "$DOCKERD" ] || die "dockerd not found after install"

# --- daemon ----------------------------------------------------------------
if docker info >/dev/null 2>&1; then
    log "docker daemon already answers; not starting another"
else
    # A stale pidfile from a killed daemon makes dockerd refuse to start.
    if [ -f /var/run/docker.pid ] && ! kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; then
        log "removing stale /var/run/docker.pid"
        $SUDO rm -f /var/run/docker.pid
    fi
    log "starting dockerd (log: $DOCKERD_LOG)"
    # setsid + nohup: the daemon survives the shell that started it.
    $SUDO setsid nohup "$DOCKERD" \
        --bridge=none \
        --iptables=false \
        --ip6tables=false \
        --ip-masq=false \
        --host=unix:///var/run/docker.sock \
        >"$DOCKERD_LOG" 2>&1 </dev/null &
    deadline=$((SECONDS + DOCKERD_WAIT_SECS))
    until docker info >/dev/null 2>&1; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            log "dockerd did not answer within ${DOCKERD_WAIT_SECS}s; last log lines:"
            tail -n 40 "$DOCKERD_LOG" >&2 || true
            die "docker daemon not available"
        fi
        sleep 1
    done
    log "dockerd is up after $((SECONDS - deadline + DOCKERD_WAIT_SECS))s"
fi

if docker network inspect bridge >/dev/null 2>&1; then
    # e.g. a daemon started by systemd with Debian's defaults
    log "WARNING: this docker daemon has a 'bridge' network (private-range" \
        "addresses); kcron expects one started with --bridge=none"
fi
docker version --format 'client {{.Client.Version}} / server {{.Server.Version}}' >&2
if command -v docker-compose >/dev/null 2>&1; then
    docker-compose version --short >&2 || true
fi
