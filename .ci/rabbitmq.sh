#!/usr/bin/env bash
# A private RabbitMQ node for the amqp tests (tests/test_semantics.py,
# tests/test_amqp.py) and `ackring bench --peers amqp`.
#
#   bash .ci/rabbitmq.sh start   # install Debian's rabbitmq-server if missing, start a
#                                # private node on 127.0.0.1, print its URL on stdout
#   bash .ci/rabbitmq.sh stop    # stop that node (also a half-started one), remove its files
#   bash .ci/rabbitmq.sh url     # print the URL again
#
# The node is not the system service: its own node name, ports (AMQP, Erlang
# distribution and epmd), data, log and cookie directory under $ACKRING_RABBITMQ_DIR
# (default ${TMPDIR:-/tmp}/ackring-rabbitmq), listening on 127.0.0.1 only, no plugins.
# A system broker left running by the package's postinst is stopped and disabled.
# Everything here runs as root (as CI does); apt-get is only used when the package
# is missing.
#
# Settings (environment): ACKRING_RABBITMQ_DIR, ACKRING_RABBITMQ_PORT (AMQP, default 5673),
# ACKRING_RABBITMQ_DIST_PORT (default 25673), ACKRING_RABBITMQ_EPMD_PORT (default 4373),
# ACKRING_RABBITMQ_VHOST (default ackring), ACKRING_RABBITMQ_START_TIMEOUT (s, default 120).
#
# How .ci/run uses it (before the test commands):
#
#   echo "== RabbitMQ for the amqp tests"
#   trap 'bash .ci/rabbitmq.sh stop' EXIT
#   ACKRING_AMQP_URL=$(bash .ci/rabbitmq.sh start)
#   export ACKRING_AMQP_URL ACKRING_REQUIRE_AMQP=1
#
set -euo pipefail

STATE=${ACKRING_RABBITMQ_DIR:-${TMPDIR:-/tmp}/ackring-rabbitmq}
PORT=${ACKRING_RABBITMQ_PORT:-5673}
DIST_PORT=${ACKRING_RABBITMQ_DIST_PORT:-25673}
EPMD_PORT=${ACKRING_RABBITMQ_EPMD_PORT:-4373}
VHOST=${ACKRING_RABBITMQ_VHOST:-ackring}
START_TIMEOUT=${ACKRING_RABBITMQ_START_TIMEOUT:-120}
NODE=ackring-ci@localhost
BIN=/usr/lib/rabbitmq/bin

log() { echo "rabbitmq.sh: $*" >&2; }

url() {
    printf 'amqp://guest:guest@127.0.0.1:%s/%s\n' "$PORT" "$VHOST"
}

node_env() {
    # Everything the server and rabbitmqctl read, pointed at $STATE.
    export HOME=$STATE                                  # .erlang.cookie lives here
    export RABBITMQ_NODENAME=$NODE
    export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
    export RABBITMQ_NODE_PORT=$PORT
    export RABBITMQ_DIST_PORT=$DIST_PORT
    export ERL_EPMD_PORT=$EPMD_PORT
    export ERL_EPMD_ADDRESS=127.0.0.1
    export RABBITMQ_MNESIA_BASE=$STATE/mnesia
    export RABBITMQ_LOG_BASE=$STATE/log
    export RABBITMQ_PID_FILE=$STATE/rabbitmq.pid
    export RABBITMQ_CONFIG_FILE=$STATE/rabbitmq.conf
    export RABBITMQ_ADVANCED_CONFIG_FILE=$STATE/advanced.config
    export RABBITMQ_ENABLED_PLUGINS_FILE=$STATE/enabled_plugins
    export RABBITMQ_CONF_ENV_FILE=$STATE/rabbitmq-env.conf   # not /etc/rabbitmq's
    export RABBITMQ_LOGS=$STATE/log/node.log
    export RABBITMQ_ALLOW_INPUT=                         # the wrapper shell forwards TERM
    # No scheduler busy-waiting: on a small shared machine (CI has 2 cores) an
    # idle broker would otherwise spin on the cores the tests run on.
    # The distribution listener on 127.0.0.1 only, as the AMQP one.
    export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="+sbwt none +sbwtdcpu none +sbwtdio none -kernel inet_dist_use_interface {127,0,0,1}"
}

ctl() {
    # rabbitmqctl against our node, bounded in time.
    node_env
    timeout 60 "$BIN/rabbitmqctl" -n "$NODE" "$@"
}

install_broker() {
    if [ -x "$BIN/rabbitmq-server" ]; then
        return
    fi
    log "installing rabbitmq-server (Debian package)"
    # Keep the package's postinst from starting the system service: a
    # policy-rc.d that denies every start, for the duration of the install.
    local made_policy=
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        made_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >&2
    apt-get install -y -q --no-install-recommends rabbitmq-server >&2
    if [ -n "$made_policy" ]; then
        rm -f /usr/sbin/policy-rc.d
    fi
    [ -x "$BIN/rabbitmq-server" ] || { log "rabbitmq-server did not install"; exit 1; }
}

quiet_system_broker() {
    # Stop and disable a system broker if one is running anyway (a machine
    # without policy-rc.d and with systemd starts it from the postinst).
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet rabbitmq-server 2>/dev/null; then
        log "stopping and disabling the system rabbitmq-server service"
        timeout 60 systemctl disable --now rabbitmq-server >&2 || true
    fi
    if pgrep -u rabbitmq -f 'beam.*rabbit' >/dev/null 2>&1; then
        log "stopping the system rabbitmq-server"
        timeout 60 service rabbitmq-server stop >&2 || true
        pkill -TERM -u rabbitmq -f 'beam.*rabbit' 2>/dev/null || true
    fi
}

port_busy() {
    # true if something listens on 127.0.0.1:$1
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

stop_node() {
    [ -d "$STATE" ] || return 0
    if [ -f "$STATE/server.pid" ]; then
        local pid
        pid=$(cat "$STATE/server.pid")
        if kill -0 "$pid" 2>/dev/null; then
            # A clean stop if the node answers; then the process group, whatever state it is in.
            ctl stop >/dev/null 2>&1 || true
            local deadline=$((SECONDS + 20))
            while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
            kill -TERM -- "-$pid" 2>/dev/null || true
            deadline=$((SECONDS + 10))
            while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
            kill -KILL -- "-$pid" 2>/dev/null || true
        fi
    fi
    # The epmd our node started on its private port (it outlives the node):
    # the epmd processes whose environment names that port.
    local p
    for p in $(pgrep -x epmd 2>/dev/null || true); do
        if tr '\0' '\n' < "/proc/$p/environ" 2>/dev/null | grep -qx "ERL_EPMD_PORT=$EPMD_PORT"; then
            kill -TERM "$p" 2>/dev/null || true
        fi
    done
    if [ -z "${ACKRING_RABBITMQ_KEEP:-}" ]; then
        rm -rf "$STATE"
    fi
}

start_node() {
    install_broker
    quiet_system_broker
    stop_node                       # a node left over from an earlier run
    if port_busy "$PORT"; then
        log "port $PORT on 127.0.0.1 is in use: set ACKRING_RABBITMQ_PORT to a free one"
        exit 1
    fi
    mkdir -p "$STATE/mnesia" "$STATE/log"
    chmod 700 "$STATE"
    head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$STATE/.erlang.cookie"
    chmod 400 "$STATE/.erlang.cookie"
    : > "$STATE/rabbitmq-env.conf"
    echo '[].' > "$STATE/enabled_plugins"
    echo '[].' > "$STATE/advanced.config"
    cat > "$STATE/rabbitmq.conf" <<EOF
listeners.tcp.default = 127.0.0.1:$PORT
loopback_users.guest = true
log.file.level = warning
log.console = false
# A shared CI machine: do not stop accepting messages at the default disk
# free limit, and let the tests' bursts through the memory watermark.
disk_free_limit.absolute = 50MB
vm_memory_high_watermark.relative = 0.6
EOF
    node_env
    log "starting node $NODE on 127.0.0.1:$PORT (files in $STATE)"
    setsid "$BIN/rabbitmq-server" > "$STATE/log/stdout.log" 2>&1 < /dev/null &
    echo $! > "$STATE/server.pid"
    local pid
    pid=$(cat "$STATE/server.pid")
    local deadline=$((SECONDS + START_TIMEOUT))
    until ctl await_startup --timeout 10 >/dev/null 2>&1; do
        if ! kill -0 "$pid" 2>/dev/null; then
            log "the node died while starting; its output:"
            tail -n 40 "$STATE/log/stdout.log" >&2 || true
            exit 1
        fi
        if [ $SECONDS -ge $deadline ]; then
            log "the node did not start within ${START_TIMEOUT}s; its output:"
            tail -n 40 "$STATE/log/stdout.log" >&2 || true
            exit 1
        fi
        sleep 1
    done
    ctl add_vhost "$VHOST" >/dev/null
    ctl set_permissions -p "$VHOST" guest '.*' '.*' '.*' >/dev/null
    log "node up: $(ctl version 2>/dev/null || echo '?')"
    url
}

case "${1:-}" in
    start) start_node ;;
    stop) stop_node ;;
    url) url ;;
    *) echo "usage: $0 start|stop|url" >&2; exit 2 ;;
esac
