#!/bin/sh
# The image's ENTRYPOINT: renders the consumer pools from KCRON_QUEUES (or
# KCRON_CONSUMERS) before supervisord starts, then becomes the command.
#
# supervisord's config is static, so etc/render-pools.py (here
# kcron-render-pools) writes the pools of the non-default queues into
# $KCRON_RUN_DIR/pools.conf, which /etc/supervisor/supervisord.conf includes,
# and prints the default pool's size, exported as KCRON_CONSUMERS.  A bad
# KCRON_QUEUES ends the container here, exit 78, with the reason on stderr.
#
# Any other command (`docker run --rm IMAGE kcron check ...`) runs as given.
set -eu

case "${1:-}" in
    supervisord | */supervisord)
        consumers="$(kcron-render-pools --conf /etc/supervisor/supervisord.conf \
            --out "${KCRON_RUN_DIR:?}/pools.conf")"
        export KCRON_CONSUMERS="$consumers"
        ;;
esac
exec "$@"
