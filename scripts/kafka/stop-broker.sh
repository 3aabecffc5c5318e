#!/usr/bin/env bash
# Stop the broker started by start-broker.sh (same PORT / STATE_DIR arguments or env).
#   stop-broker.sh [PORT] [STATE_DIR]
# Kills only the pid in STATE_DIR/broker.pid, and only if it is still that tansu broker.
set -euo pipefail

port=${1:-${KAFKA_PORT:-19092}}
dir=${2:-${KAFKA_STATE_DIR:-${TMPDIR:-/tmp}/kafka-broker-$port}}
pidf=$dir/broker.pid

[[ -f $pidf ]] || { echo "no pid file at $pidf; nothing to stop" >&2; exit 0; }
pid=$(cat "$pidf")

# Running and not a zombie (an exited child can linger as a zombie until init reaps it).
alive() { local st; st=$(ps -o stat= -p "$pid" 2>/dev/null) && [[ $st != Z* ]]; }

# Guard against pid reuse: the process must be our tansu broker on this port.
if alive && ps -ww -o args= -p "$pid" | grep -q -- "tansu.*broker.*127.0.0.1:$port"; then
  kill -TERM "$pid"
  for _ in $(seq 100); do          # an idle tansu exits within milliseconds of SIGTERM
    alive || break
    sleep 0.05
  done
  if alive; then
    echo "pid $pid ignored SIGTERM for 5s; sending SIGKILL" >&2
    kill -KILL "$pid" 2>/dev/null || true
  fi
  echo "stopped broker pid $pid" >&2
else
  echo "pid $pid is not a running tansu broker on port $port; removing stale pid file" >&2
fi
rm -f "$pidf"
