#!/bin/sh
# kcron container health, from `supervisorctl status` (the image's HEALTHCHECK).
#
# Healthy (exit 0) when supervisord answers and
#   - every consumer process of every pool is RUNNING: the names
#     kcron-render-pools --names expects from KCRON_QUEUES (or KCRON_CONSUMERS),
#     e.g. kcron-consumer-00, kcron-consumer-cluster-a-00, are all listed
#     RUNNING, and no other kcron-consumer-* process is in another state;
#   - kcron-producer is RUNNING, or it is switched off (KCRON_PRODUCER=false,
#     a consumer-only node) and STOPPED.
# Anything else (STARTING, BACKOFF, EXITED, FATAL, a pool missing, no answer)
# is unhealthy (exit 1).  The exit code of `supervisorctl status` alone would
# not do: it is 0 for STARTING and BACKOFF too (a program crash-looping), and 3
# for the STOPPED producer of a consumer-only node.  The status table is
# printed, so `docker inspect --format '{{json .State.Health}}'` shows what was
# wrong.
set -u

case "$(printf '%s' "${KCRON_PRODUCER:-true}" | tr '[:upper:]' '[:lower:]')" in
    false | no | off | 0) producer_wanted=no ;;
    *) producer_wanted=yes ;;
esac

if ! expected="$(kcron-render-pools --names 2>&1)"; then
    echo "unhealthy: $expected"; exit 1
fi

status="$(supervisorctl status 2>&1)"
rc=$?
printf '%s\n' "$status"
case "$rc" in
    0 | 3) ;;  # 3: some program is not RUNNING; judged below
    *) echo "unhealthy: supervisorctl status exited $rc"; exit 1 ;;
esac

# One line for awk -v (a newline in its value is not portable).
expected="$(printf '%s' "$expected" | tr '\n' ' ')"
printf '%s\n' "$status" | awk -v producer_wanted="$producer_wanted" -v expected="$expected" '
    BEGIN { wanted = split(expected, names, " ") }
    # name is "group:process" for numprocs programs, e.g. kcron-consumer:kcron-consumer-00
    {
        name = $1; sub(/^.*:/, "", name); state = $2
        if (name ~ /^kcron-consumer-/) {
            seen[name] = state
            if (state != "RUNNING") { bad = bad " " name "=" state }
        } else if (name == "kcron-producer") {
            producer = state
        }
    }
    END {
        for (i = 1; i <= wanted; i++) {
            if (!(names[i] in seen)) bad = bad " " names[i] "=missing"
        }
        if (wanted == 0 && producer_wanted == "no") bad = bad " no-consumers-no-producer"
        if (producer_wanted == "yes" && producer != "RUNNING") bad = bad " kcron-producer=" producer
        if (producer_wanted == "no" && producer != "STOPPED" && producer != "RUNNING") bad = bad " kcron-producer=" producer
        if (bad != "") { print "unhealthy:" bad; exit 1 }
        print "healthy"
    }
'
