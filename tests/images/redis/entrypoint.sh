#!/bin/sh
# Entry point of berth-demo/redis: drops to user redis, like the official image.
set -eu
if [ "$#" -eq 0 ] || [ "${1#-}" != "$1" ]; then
    set -- redis-server "$@"
fi
if [ "$1" = redis-server ] && [ "$(id -u)" = 0 ]; then
    chown -R redis:redis /data 2>/dev/null || true
    exec setpriv --reuid=redis --regid=redis --init-groups "$@"
fi
exec "$@"
