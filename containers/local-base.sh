#!/usr/bin/env bash
# Build a local Debian base image for kcron without any image registry.
#
# This is a feature for building kcron where no image registry is reachable
# (CI and dev machines here can reach only the Debian and PyPI package
# mirrors; every `docker pull` fails).  Instead of `FROM debian:bookworm`,
# Dockerfiles use `FROM kcron-local-base:bookworm`, which this script makes:
#
#   debootstrap --variant=minbase (python3, python3-venv, ca-certificates)
#   | tar | docker import  ->  kcron-local-base:bookworm
#
# The Debian mirror is read from this machine's own apt sources
# (/etc/apt/sources.list, /etc/apt/sources.list.d/*.list and deb822
# *.sources); no host is hard-coded.  The host's apt sources (and the
# keyrings they reference), its Acquire/proxy apt settings and its CA bundle
# (/etc/ssl/certs/ca-certificates.crt) are copied into the image so that
# apt-get and pip work inside `docker build --network host`.
#
# Usage: containers/local-base.sh [TAG]        (default kcron-local-base:bookworm)
# Env:   FORCE=1          rebuild even if TAG already exists
#        SUITE=bookworm   Debian suite to bootstrap
#        DEBIAN_MIRROR=   override the mirror found in the apt sources
#        WORKDIR=         parent dir of the temporary rootfs (default /var/tmp)
# Needs: root, debootstrap, a running docker daemon (.ci/docker-setup.sh).
set -euo pipefail

TAG="${1:-kcron-local-base:bookworm}"
SUITE="${SUITE:-bookworm}"
WORKDIR="${WORKDIR:-/var/tmp}"
INCLUDE="python3,python3-venv,ca-certificates"

log() { printf '[local-base] %s\n' "$*" >&2; }
die() { printf '[local-base] ERROR: %s\n' "$*" >&2; exit 1; }

start=$SECONDS

if [ "${FORCE:-0}" != "1" ] && docker image inspect "$TAG" >/dev/null 2>&1; then
    log "image $TAG already exists (FORCE=1 to rebuild); nothing to do"
    exit 0
fi

[ "$(id -u)" -eq 0 ] || die "must run as root (debootstrap needs it)"
command -v debootstrap >/dev/null 2>&1 || die "debootstrap not installed (run .ci/docker-setup.sh)"
docker info >/dev/null 2>&1 || die "docker daemon not reachable (run .ci/docker-setup.sh)"

# --- the machine's apt sources ---------------------------------------------
# Enabled source files, in apt's order.
source_files() {
    [ -f /etc/apt/sources.list ] && echo /etc/apt/sources.list
    local f
    for f in /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] && echo "$f"
    done
    return 0
}

# Print one "URI<TAB>SUITES<TAB>SIGNED_BY" line per `deb` entry of a file.
parse_sources() {
    local f="$1"
    case "$f" in
    *.sources)
        # deb822: paragraphs separated by blank lines; '#' comments;
        # continuation lines start with whitespace (only Signed-By may
        # embed a key that way; we only keep file paths).
        awk '
            function flush() {
                if (types ~ /(^| )deb( |$)/ && enabled !~ /^(no|false|0)$/ && uris != "")
                    { n = split(uris, u, / +/); for (i = 1; i <= n; i++) print u[i] "\t" suites "\t" signed }
                types = ""; uris = ""; suites = ""; signed = ""; enabled = ""
            }
            /^[ \t]*#/ { next }
            /^[ \t]*$/ { flush(); next }
            /^[ \t]/   { next }
            {
                key = tolower($0); sub(/:.*/, "", key)
                val = $0; sub(/^[^:]*:[ \t]*/, "", val); sub(/[ \t]+$/, "", val)
                if (key == "types") types = val
                else if (key == "uris") uris = val
                else if (key == "suites") suites = val
                else if (key == "signed-by") signed = val
                else if (key == "enabled") enabled = tolower(val)
            }
            END { flush() }
        ' "$f"
        ;;
    *)
        # one-line: deb [opt=val ...] URI SUITE COMPONENT...
        awk '
            { sub(/#.*/, "") }
            $1 != "deb" { next }
            {
                line = $0; signed = ""
                if (match(line, /\[[^]]*\]/)) {
                    opts = substr(line, RSTART + 1, RLENGTH - 2)
                    line = substr(line, 1, RSTART - 1) substr(line, RSTART + RLENGTH)
                    if (match(opts, /signed-by=[^ ]+/)) signed = substr(opts, RSTART + 10, RLENGTH - 10)
                }
                split(line, w, /[ \t]+/)
                # w[1] may be empty if the line had leading blanks
                k = (w[1] == "") ? 2 : 1
                print w[k + 1] "\t" w[k + 2] "\t" signed
            }
        ' "$f"
        ;;
    esac
}

mapfile -t SRC_FILES < <(source_files)
[ "${#SRC_FILES[@]}" -gt 0 ] || die "no apt sources found in /etc/apt"

MIRROR="${DEBIAN_MIRROR:-}"
KEYRING=""
if [ -z "$MIRROR" ]; then
    for f in "${SRC_FILES[@]}"; do
        while IFS=$'\t' read -r uri suites signed; do
            for s in $suites; do
                if [ "$s" = "$SUITE" ]; then
                    MIRROR="$uri"
                    case "$signed" in /*) [ -f "$signed" ] && KEYRING="$signed" ;; esac
                    break 3
                fi
            done
        done < <(parse_sources "$f")
    done
fi
[ -n "$MIRROR" ] || die "no 'deb' entry for suite $SUITE in: ${SRC_FILES[*]} (set DEBIAN_MIRROR)"
if [ -z "$KEYRING" ] && [ -f /usr/share/keyrings/debian-archive-keyring.gpg ]; then
    KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
fi
log "suite=$SUITE mirror=$MIRROR keyring=${KEYRING:-<debootstrap default>} tag=$TAG"

# --- debootstrap -------------------------------------------------------------
mkdir -p "$WORKDIR"
ROOTFS="$(mktemp -d "$WORKDIR/kcron-local-base.XXXXXX")"

cleanup() {
    # debootstrap mounts proc/sys inside the rootfs; unmount anything left
    # there (deepest first) before removing the directory.
    local m
    for m in $(awk -v r="$ROOTFS" '$2 == r || index($2, r "/") == 1 { print $2 }' /proc/mounts | sort -r); do
        umount -l "$m" 2>/dev/null || true
    done
    rm -rf --one-file-system "$ROOTFS"
}
trap cleanup EXIT

keyring_opt=()
[ -n "$KEYRING" ] && keyring_opt=(--keyring="$KEYRING")

log "debootstrap into $ROOTFS ..."
if ! debootstrap --variant=minbase --include="$INCLUDE" "${keyring_opt[@]}" \
        "$SUITE" "$ROOTFS" "$MIRROR" >"$ROOTFS.debootstrap.log" 2>&1; then
    tail -n 40 "$ROOTFS.debootstrap.log" >&2 || true
    [ -f "$ROOTFS/debootstrap/debootstrap.log" ] && tail -n 40 "$ROOTFS/debootstrap/debootstrap.log" >&2
    rm -f "$ROOTFS.debootstrap.log"
    die "debootstrap failed"
fi
rm -f "$ROOTFS.debootstrap.log"
log "debootstrap done after $((SECONDS - start))s"

# --- host apt sources, keyrings, Acquire settings, CA bundle ----------------
# Replace debootstrap's one-line sources.list by the host's own sources, so
# the image sees the same suites (updates, security) the host does.
rm -f "$ROOTFS/etc/apt/sources.list"
mkdir -p "$ROOTFS/etc/apt/sources.list.d"
for f in "${SRC_FILES[@]}"; do
    if [ "$f" = /etc/apt/sources.list ]; then
        cp "$f" "$ROOTFS/etc/apt/sources.list"
    else
        cp "$f" "$ROOTFS/etc/apt/sources.list.d/"
    fi
    # keyrings referenced by Signed-By that the image lacks
    while IFS=$'\t' read -r _uri _suites signed; do
        case "$signed" in
        /*) if [ -f "$signed" ] && [ ! -e "$ROOTFS$signed" ]; then
                mkdir -p "$ROOTFS$(dirname "$signed")"
                cp "$signed" "$ROOTFS$signed"
            fi ;;
        esac
    done < <(parse_sources "$f")
done
# Acquire::* settings of the host (proxies, Check-Valid-Until for snapshot
# mirrors, ...), as apt itself resolves them.
apt-config dump 2>/dev/null \
    | grep -E '^Acquire::(http|https|ftp)::Proxy|^Acquire::Check-Valid-Until |^Acquire::Check-Date ' \
    > "$ROOTFS/etc/apt/apt.conf.d/99kcron-host-acquire" || true
# The host's CA bundle: it may hold a CA that the network path to PyPI
# needs (seen here: without it pip fails with CERTIFICATE_VERIFY_FAILED,
# "self-signed certificate in certificate chain").  The certificates the
# image lacks also go to /usr/local/share/ca-certificates, so they survive
# an `update-ca-certificates` run inside a later build.
HOST_BUNDLE=/etc/ssl/certs/ca-certificates.crt
if [ -f "$HOST_BUNDLE" ]; then
    mkdir -p "$ROOTFS/etc/ssl/certs" "$ROOTFS/usr/local/share/ca-certificates"
    img_bundle="$ROOTFS/etc/ssl/certs/ca-certificates.crt"
    [ -f "$img_bundle" ] || : > "$img_bundle"
    awk -v img="$img_bundle" -v dir="$ROOTFS/usr/local/share/ca-certificates" '
        /-----BEGIN CERTIFICATE-----/ { inb = 1; blk = "" }
        inb { blk = blk $0 "\n" }
        /-----END CERTIFICATE-----/ {
            inb = 0
            if (FILENAME == img) { seen[blk] = 1 }
            else if (!(blk in seen)) {
                n++; f = sprintf("%s/kcron-host-extra-%02d.crt", dir, n)
                printf "%s", blk > f; close(f)
            }
        }
        END { printf "%d\n", n + 0 }
    ' "$img_bundle" "$HOST_BUNDLE" | { read -r extra; log "host CA certificates not in Debian's bundle: $extra"; }
    cp "$HOST_BUNDLE" "$img_bundle"
fi

# --- trim ------------------------------------------------------------------
chroot "$ROOTFS" apt-get clean
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin \
       "$ROOTFS"/var/log/*.log "$ROOTFS"/var/log/apt/* \
       "$ROOTFS"/tmp/* "$ROOTFS"/var/tmp/* "$ROOTFS"/debootstrap
: > "$ROOTFS/etc/resolv.conf"      # docker provides it at run time
: > "$ROOTFS/etc/machine-id" 2>/dev/null || true
rm -f "$ROOTFS/etc/hostname"

# --- import ------------------------------------------------------------------
log "docker import -> $TAG"
tar --numeric-owner -C "$ROOTFS" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["/bin/bash"]' \
    --message "kcron local base: debootstrap $SUITE minbase + $INCLUDE" \
    - "$TAG" >/dev/null || die "docker import failed"

size="$(docker image inspect -f '{{.Size}}' "$TAG")"
log "built $TAG ($((size / 1024 / 1024)) MiB) in $((SECONDS - start))s"
