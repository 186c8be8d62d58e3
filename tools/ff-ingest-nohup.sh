#!/usr/bin/env bash
# Run `ff-ingest --watch` in the background without systemd (a laptop, a login node, a container).
#
#   tools/ff-ingest-nohup.sh start [EXTRA ff-ingest ARGS...]   # e.g. start --polling
#   tools/ff-ingest-nohup.sh stop                              # SIGTERM, then SIGKILL after FF_STOP_TIMEOUT s
#   tools/ff-ingest-nohup.sh restart [EXTRA ARGS...]
#   tools/ff-ingest-nohup.sh status [--json]                   # the daemon's pid + `ff-ingest status`
#   tools/ff-ingest-nohup.sh log                               # follow the log file
#
# Run it from the project root (the folder holding config/mlflow.yaml) or set FF_PROJECT.
# Settings (environment variables, all optional):
#   FF_PROJECT        project root                          (default: the current directory)
#   FF_INGEST         the ff-ingest command                 (default: $FF_PROJECT/.venv/bin/ff-ingest, else ff-ingest)
#   FF_PIDFILE        pid file                              (default: $FF_PROJECT/data/mlflow/ingest/ff-ingest.pid)
#   FF_LOGFILE        log file (appended to)                (default: $FF_PROJECT/data/mlflow/ingest/ff-ingest.log)
#   FF_LOG_LEVEL      debug | info | warning | error        (default: info)
#   FF_STOP_TIMEOUT   seconds to wait after SIGTERM         (default: 30)
#   FF_START_TIMEOUT  seconds to wait for event=ready       (default: 120)
# MLFLOW_TRACKING_URI, FF_CONFIG etc. pass through to ff-ingest as usual.
#
# Exit codes: 0 ok; 1 not running (status/stop) or failed to start; the daemon's own exit code
# when it dies during start (5: another ingester already serves this store, 2: configuration error).
set -euo pipefail

PROJECT=${FF_PROJECT:-$PWD}
if [[ -z "${FF_INGEST:-}" ]]; then
    if [[ -x "$PROJECT/.venv/bin/ff-ingest" ]]; then FF_INGEST="$PROJECT/.venv/bin/ff-ingest"; else FF_INGEST=ff-ingest; fi
fi
STATE_DIR="$PROJECT/data/mlflow/ingest"
PIDFILE=${FF_PIDFILE:-$STATE_DIR/ff-ingest.pid}
LOGFILE=${FF_LOGFILE:-$STATE_DIR/ff-ingest.log}
LOG_LEVEL=${FF_LOG_LEVEL:-info}
STOP_TIMEOUT=${FF_STOP_TIMEOUT:-30}
START_TIMEOUT=${FF_START_TIMEOUT:-120}

die() { echo "ff-ingest-nohup: $*" >&2; exit 1; }

# The pid in the pid file, if that process is still our daemon (not a recycled pid).
running_pid() {
    [[ -f "$PIDFILE" ]] || return 1
    local pid
    pid=$(<"$PIDFILE")
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    if [[ -r "/proc/$pid/cmdline" ]]; then
        tr '\0' ' ' <"/proc/$pid/cmdline" | grep -Eq 'ff-ingest|ingest\.cli' || return 1
        tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- '--watch' || return 1
    fi
    echo "$pid"
}

start() {
    local pid
    if pid=$(running_pid); then
        echo "ff-ingest --watch is already running (pid $pid; log $LOGFILE)"
        return 0
    fi
    mkdir -p "$(dirname "$PIDFILE")" "$(dirname "$LOGFILE")"
    touch "$LOGFILE"
    cd "$PROJECT"
    local offset
    offset=$(stat -c %s "$LOGFILE" 2>/dev/null || echo 0)
    nohup "$FF_INGEST" --watch --log-level "$LOG_LEVEL" "$@" >>"$LOGFILE" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$PIDFILE"
    # Wait until it is ready (it catches up first), or until it dies (lock held, bad config).
    local waited=0
    while ((waited < START_TIMEOUT * 10)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            local rc=0
            wait "$pid" || rc=$?
            rm -f "$PIDFILE"
            echo "ff-ingest --watch exited during start with code $rc; the end of $LOGFILE:" >&2
            tail -c +"$((offset + 1))" "$LOGFILE" | tail -n 20 >&2
            exit "$((rc == 0 ? 1 : rc))"
        fi
        if tail -c +"$((offset + 1))" "$LOGFILE" | grep -q 'event=ready'; then
            echo "ff-ingest --watch started (pid $pid; log $LOGFILE)"
            return 0
        fi
        if [[ "$LOG_LEVEL" != info && "$LOG_LEVEL" != debug ]] && ((waited >= 100)); then
            echo "ff-ingest --watch running (pid $pid; log $LOGFILE; readiness is logged at info level only)"
            return 0
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
    echo "ff-ingest --watch (pid $pid) not ready after ${START_TIMEOUT}s; still running; see $LOGFILE" >&2
}

stop() {
    local pid
    if ! pid=$(running_pid); then
        rm -f "$PIDFILE"
        echo "ff-ingest --watch is not running"
        return 1
    fi
    kill -TERM "$pid"
    local waited=0
    while kill -0 "$pid" 2>/dev/null; do
        if ((waited >= STOP_TIMEOUT * 10)); then
            # Safe: the checkpoints never claim more than the store holds; the next start repeats a little.
            echo "no exit ${STOP_TIMEOUT}s after SIGTERM: sending SIGKILL to $pid" >&2
            kill -KILL "$pid" 2>/dev/null || true
            break
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
    rm -f "$PIDFILE"
    echo "ff-ingest --watch stopped (pid $pid)"
}

status() {
    local pid rc=0
    if pid=$(running_pid); then
        echo "daemon: running (pid $pid; log $LOGFILE)" >&2
    else
        echo "daemon: not running" >&2
        rc=1
    fi
    (cd "$PROJECT" && "$FF_INGEST" status "$@") || true
    return "$rc"
}

cmd=${1:-}
shift || true
case "$cmd" in
    start) start "$@" ;;
    stop) stop ;;
    restart) stop || true; start "$@" ;;
    status) status "$@" ;;
    log) exec tail -n 50 -F "$LOGFILE" ;;
    *) die "usage: $0 start [ARGS...] | stop | restart [ARGS...] | status [--json] | log" ;;
esac
