#!/usr/bin/env bash
# `make run`: the embedded broker (unless KCRON_BOOTSTRAP_SERVERS points at a
# cluster) plus supervisord running 1 producer and a consumer pool per queue:
# KCRON_QUEUES, by default KCRON_CONSUMERS (2) workers on the default queue and
# one each on cluster-a and cluster-b, the queues of etc/jobs.cron's
# queue= jobs (docs/queues.md).
# Ctrl-C stops supervisord's programs gracefully, then the broker.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
export PATH="$PWD/$VENV/bin:$PATH"
export KCRON_RUN_DIR="${KCRON_RUN_DIR:-$PWD/run}"
export KCRON_JOBS="${KCRON_JOBS:-$PWD/etc/jobs.cron}"
export KCRON_PRODUCER="${KCRON_PRODUCER:-true}"
export KCRON_QUEUES="${KCRON_QUEUES:-${KCRON_TOPIC:-kcron.jobs}=${KCRON_CONSUMERS:-2} cluster-a=1 cluster-b=1}"
# Metrics on by default, on loopback: `curl 127.0.0.1:9400/metrics` (docs/monitoring.md).
export KCRON_METRICS="${KCRON_METRICS:-true}"
export KCRON_METRICS_ADDR="${KCRON_METRICS_ADDR:-127.0.0.1}"
mkdir -p "$KCRON_RUN_DIR"

if [ -S "$KCRON_RUN_DIR/supervisor.sock" ] && supervisorctl -c etc/supervisord.conf pid >/dev/null 2>&1; then
    echo "kcron is already running here (make status, make stop)" >&2
    exit 1
fi

# supervisord is not a dependency of the kcron package: requirements-run.txt has it.
if ! command -v supervisord >/dev/null; then
    echo "supervisord not found: run 'make install' (it installs requirements-run.txt)" >&2
    exit 69
fi

kcron check "$KCRON_JOBS" --count 1

# supervisord's config is static: the pools of the other queues go into a file
# it includes, and the default pool's size into KCRON_CONSUMERS (numprocs).
# A bad KCRON_QUEUES stops here, exit 78, before anything starts.
consumers="$(python etc/render-pools.py --conf etc/supervisord.conf --out "$KCRON_RUN_DIR/pools.conf")"
export KCRON_CONSUMERS="$consumers"

broker_pid=""
if [ -z "${KCRON_BOOTSTRAP_SERVERS:-}" ]; then
    port="${KCRON_BROKER_PORT:-9092}"
    export KCRON_BOOTSTRAP_SERVERS="127.0.0.1:$port"
    # Its own session, so Ctrl-C reaches supervisord (which stops the workers
    # gracefully) but not the broker they still need while they commit.
    setsid kcron broker --port "$port" >"$KCRON_RUN_DIR/broker.log" 2>&1 &
    broker_pid=$!
    for _ in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
        if ! kill -0 "$broker_pid" 2>/dev/null; then
            echo "embedded broker failed to start:" >&2; cat "$KCRON_RUN_DIR/broker.log" >&2; exit 69
        fi
        sleep 0.1
    done
    echo "embedded broker (Kafka-compatible dev broker, memory storage) on $KCRON_BOOTSTRAP_SERVERS" >&2
    # The dev broker makes the first group join wait session.timeout/2.
    export KCRON_SESSION_TIMEOUT_MS="${KCRON_SESSION_TIMEOUT_MS:-6000}"
fi

stop_broker() {
    if [ -n "$broker_pid" ]; then kill -TERM "$broker_pid" 2>/dev/null || true; wait "$broker_pid" 2>/dev/null || true; fi
}
trap stop_broker EXIT
trap 'true' INT TERM  # let supervisord handle the signal; we clean up after it
# A worker started as root refuses to run jobs as root (kcron/runas.py). Unless
# told otherwise (KCRON_RUN_AS=USER, or KCRON_ALLOW_ROOT_JOBS=true), `make run`
# as root runs the jobs as nobody: the demo jobs need no more, and a message
# written by hand to the topic then cannot run anything as root.
if [ "$(id -u)" -eq 0 ] && [ -z "${KCRON_RUN_AS:-}" ] && [ "${KCRON_ALLOW_ROOT_JOBS:-}" != "true" ]; then
    export KCRON_RUN_AS=nobody
fi
if [ -n "${KCRON_RUN_AS:-}" ]; then
    echo "jobs run as user $KCRON_RUN_AS (KCRON_RUN_AS)" >&2
elif [ "$(id -u)" -eq 0 ]; then
    echo "jobs run as root (KCRON_ALLOW_ROOT_JOBS=true)" >&2
fi
echo "starting 1 producer + the consumer pools above on $KCRON_JOBS (Ctrl-C or 'make stop' to stop)" >&2
case "$(printf '%s' "$KCRON_METRICS" | tr '[:upper:]' '[:lower:]')" in
    false | no | off | 0) echo "metrics off (KCRON_METRICS)" >&2 ;;
    *) echo "metrics: curl $KCRON_METRICS_ADDR:9400/metrics (producer); every port: python etc/render-pools.py --targets" >&2 ;;
esac
# As root (CI, dev containers), say so explicitly: it is what we mean, and it
# spares the "Supervisor is running as root" CRIT line at every start.
user_opt=()
if [ "$(id -u)" -eq 0 ]; then user_opt=(--user root); fi
supervisord -c etc/supervisord.conf "${user_opt[@]}" &
wait $! || wait $! || true
