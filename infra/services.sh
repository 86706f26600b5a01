#!/usr/bin/env bash
# Start and stop the project's real services on this machine: a Prefect server with a process work pool
# and worker, and an MLflow tracking server (SQLite backend, local artifact root). Everything binds
# 127.0.0.1 unless BIND_HOST says otherwise. PID files and logs go to <state>/services.
#
#   infra/services.sh up        start MLflow, the Prefect server, the work pool and a worker; wait until healthy
#   infra/services.sh down      stop them (the worker first, with SIGINT; then the servers)
#   infra/services.sh status    what runs, where, and whether it answers its health check (exit 1 if not all)
#   infra/services.sh deploy    register the deployments of prefect.yaml (`prefect --no-prompt deploy --all`)
#   infra/services.sh worker    run a worker in the foreground (e.g. on a GPU node, with PREFECT_API_URL set)
#   infra/services.sh env       print the exports that point flows at these servers: eval "$(infra/services.sh env)"
#   infra/services.sh logs [prefect-server|prefect-worker|mlflow]   the last lines of a service's log
#
# Settings (environment): SPACTOR_STATE_DIR (default <repo>/.state), PREFECT_PORT (4200), MLFLOW_PORT (5000),
# SPACTOR_WORK_POOL (spactor-process), HEALTH_TIMEOUT (seconds, 120), MLFLOW_WORKERS (1), VENV_BIN (<repo>/.venv/bin),
# MLFLOW_BACKEND_STORE_URI (sqlite:///<state>/mlflow.db), MLFLOW_ARTIFACT_ROOT (file://<state>/mlartifacts; s3://... on a cluster).
# BIND_HOST (127.0.0.1) is the ONLY way to listen on another interface. Authentication (SPACTOR_AUTH=on|off;
# on by default, and required, when BIND_HOST is not loopback): MLflow runs its basic-auth app, whose admin
# is MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (users and permissions in <state>/mlflow-auth.db),
# and the Prefect server checks PREFECT_API_AUTH_STRING ("user:password"). Clients (flows, the worker, the
# Ray workers) send the same variables; they live only in the environment, never in a file. With BIND_HOST
# set to a non-loopback address MLflow also needs MLFLOW_ALLOWED_HOSTS (its Host-header allow list).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="$(realpath -m "${SPACTOR_STATE_DIR:-$ROOT/.state}")"
RUN_DIR="$STATE/services"
BIND_HOST="${BIND_HOST:-127.0.0.1}"
PREFECT_PORT="${PREFECT_PORT:-4200}"
MLFLOW_PORT="${MLFLOW_PORT:-5000}"
WORK_POOL="${SPACTOR_WORK_POOL:-spactor-process}"
HEALTH_TIMEOUT="${HEALTH_TIMEOUT:-120}"
MLFLOW_WORKERS="${MLFLOW_WORKERS:-1}"
VENV_BIN="${VENV_BIN:-$ROOT/.venv/bin}"

case "$BIND_HOST" in
  0.0.0.0 | :: | "") CLIENT_HOST=127.0.0.1 ;;  # a wildcard bind is still reached locally on loopback
  *) CLIENT_HOST="$BIND_HOST" ;;
esac
PREFECT_URL="http://$CLIENT_HOST:$PREFECT_PORT"
MLFLOW_URL="http://$CLIENT_HOST:$MLFLOW_PORT"

die() { echo "services.sh: $*" >&2; exit 1; }

is_loopback() { case "$1" in 127.* | localhost | ::1) return 0 ;; *) return 1 ;; esac; }

# The environment every process started here shares: one state folder, no telemetry, offline hub.
common_env() {
  export SPACTOR_STATE_DIR="$STATE" SPACTOR_PROJECT_ROOT="${SPACTOR_PROJECT_ROOT:-$ROOT}"
  export PREFECT_HOME="${PREFECT_HOME:-$STATE/prefect}"
  export PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1 MLFLOW_DISABLE_TELEMETRY=true
  export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" HF_DATASETS_OFFLINE="${HF_DATASETS_OFFLINE:-1}"
  export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="${RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER:-0}"
}

client_env() {  # what a flow run (or the deploy command) needs to reach the servers
  common_env
  export PREFECT_API_URL="${PREFECT_API_URL:-$PREFECT_URL/api}"
  export MLFLOW_TRACKING_URI="${MLFLOW_TRACKING_URI:-$MLFLOW_URL}"
  export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
}

need_bin() { [[ -x "$VENV_BIN/$1" ]] || die "$VENV_BIN/$1 not found; run 'make setup' first (or set VENV_BIN)"; }

pid_of() { [[ -f "$RUN_DIR/$1.pid" ]] && cat "$RUN_DIR/$1.pid" || true; }

alive() {  # alive NAME MATCH: the recorded process exists and is still ours (its command line has MATCH)
  local pid
  pid="$(pid_of "$1")"
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null && grep -qa -- "$2" "/proc/$pid/cmdline" 2>/dev/null
}

port_in_use() { (exec 3<>"/dev/tcp/$CLIENT_HOST/$1") 2>/dev/null; }

start_bg() {  # start_bg NAME COMMAND...: in the background, in its own process group, with a log and a pid file
  local name="$1"; shift
  echo "--- $(date -u +%FT%TZ) starting: $*" >>"$RUN_DIR/$name.log"
  # job control (set -m) gives the job its own process group, so `stop` can end all its children, and keeps
  # SIGINT deliverable (without it bash starts background jobs with SIGINT ignored, and the worker only
  # stops cleanly on SIGINT); SIGHUP is ignored so closing the terminal does not stop the services
  (set -m; trap '' HUP; "$@" >>"$RUN_DIR/$name.log" 2>&1 </dev/null & echo $! >"$RUN_DIR/$name.pid")
}

wait_healthy() {  # wait_healthy NAME MATCH URL: until URL answers 200, the process dies, or HEALTH_TIMEOUT
  local name="$1" match="$2" url="$3" deadline=$((SECONDS + HEALTH_TIMEOUT))
  until curl -fsS -m 3 -o /dev/null "$url" 2>/dev/null; do
    if ! alive "$name" "$match"; then
      tail -n 20 "$RUN_DIR/$name.log" >&2 || true
      die "$name exited during start-up; log: $RUN_DIR/$name.log"
    fi
    ((SECONDS < deadline)) || die "$name did not answer $url within ${HEALTH_TIMEOUT}s; log: $RUN_DIR/$name.log"
    sleep 0.5
  done
  echo "$name: healthy at $url"
}

stop() {  # stop NAME MATCH SIGNAL: signal the process, wait, then kill its whole process group
  local name="$1" match="$2" sig="$3" pid
  pid="$(pid_of "$name")"
  if [[ -z "$pid" ]] || ! alive "$name" "$match"; then
    rm -f "$RUN_DIR/$name.pid"
    echo "$name: not running"
    return 0
  fi
  kill -s "$sig" "$pid" 2>/dev/null || true
  for _ in $(seq 1 40); do kill -0 -- "-$pid" 2>/dev/null || break; sleep 0.25; done
  if kill -0 -- "-$pid" 2>/dev/null; then
    kill -s TERM -- "-$pid" 2>/dev/null || true
    sleep 1
    kill -s KILL -- "-$pid" 2>/dev/null || true
  fi
  rm -f "$RUN_DIR/$name.pid"
  echo "$name: stopped (pid $pid)"
}

auth_on() {  # whether the servers authenticate: SPACTOR_AUTH, by default on exactly when exposed
  case "${SPACTOR_AUTH:-}" in
    on | 1 | true) return 0 ;;
    off | 0 | false)
      is_loopback "$BIND_HOST" || die "SPACTOR_AUTH=$SPACTOR_AUTH with BIND_HOST=$BIND_HOST: servers reachable from other machines must authenticate"
      return 1 ;;
    "") ! is_loopback "$BIND_HOST" ;;
    *) die "SPACTOR_AUTH=$SPACTOR_AUTH: use on or off" ;;
  esac
}

check_auth() {  # refuse to start an authenticating setup whose credentials are missing
  auth_on || return 0
  local why="authentication is on (BIND_HOST=$BIND_HOST, SPACTOR_AUTH=${SPACTOR_AUTH:-default})"
  [[ -n "${MLFLOW_TRACKING_USERNAME:-}" && -n "${MLFLOW_TRACKING_PASSWORD:-}" ]] \
    || die "$why: set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (the MLflow admin; clients send them too)"
  [[ "${PREFECT_API_AUTH_STRING:-}" == ?*:?* ]] \
    || die "$why: set PREFECT_API_AUTH_STRING=user:password (the Prefect server checks it; clients send it)"
  [[ "$MLFLOW_TRACKING_USERNAME$MLFLOW_TRACKING_PASSWORD$PREFECT_API_AUTH_STRING" != *$'\n'* ]] \
    || die "$why: a credential holds a line break; use one without"
}

auth_curl() {  # auth_curl USER:PASSWORD ARGS...: curl with basic auth, the secret read from a pipe, not argv
  local cred="$1"; shift
  cred="${cred//\\/\\\\}"  # curl's config syntax: backslashes first, then quotes
  cred="${cred//\"/\\\"}"
  curl -K <(printf 'user = "%s"\n' "$cred") "$@"
}

prefect_curl() {  # curl against the Prefect API, with its credentials when authentication is on
  if auth_on; then auth_curl "$PREFECT_API_AUTH_STRING" "$@"; else curl "$@"; fi
}

ensure_pool() {
  client_env
  if ! "$VENV_BIN/prefect" work-pool inspect "$WORK_POOL" >/dev/null 2>&1; then
    "$VENV_BIN/prefect" work-pool create "$WORK_POOL" --type process >>"$RUN_DIR/prefect-cli.log" 2>&1 \
      || die "could not create work pool $WORK_POOL; see $RUN_DIR/prefect-cli.log"
    echo "work pool $WORK_POOL: created (type process)"
  fi
}

worker_online() {  # worker_online NAME: the server lists that worker in our pool with status ONLINE
  prefect_curl -fsS -m 3 -X POST -H 'Content-Type: application/json' -d '{}' \
    "$PREFECT_URL/api/work_pools/$WORK_POOL/workers/filter" 2>/dev/null \
    | "$VENV_BIN/python" -c 'import json, sys; sys.exit(not any(w["name"] == sys.argv[1] and w["status"] == "ONLINE" for w in json.load(sys.stdin)))' "$1" 2>/dev/null
}

start_mlflow() {
  alive mlflow "mlflow" && { echo "mlflow: already running (pid $(pid_of mlflow))"; return 0; }
  port_in_use "$MLFLOW_PORT" && die "port $MLFLOW_PORT is in use by another program; set MLFLOW_PORT"
  need_bin mlflow
  local allowed=()
  if ! is_loopback "$BIND_HOST"; then
    [[ -n "${MLFLOW_ALLOWED_HOSTS:-}" ]] || die "BIND_HOST=$BIND_HOST needs MLFLOW_ALLOWED_HOSTS (e.g. 'head-node:$MLFLOW_PORT,10.0.0.5:$MLFLOW_PORT')"
    allowed=(--allowed-hosts "$MLFLOW_ALLOWED_HOSTS")
  fi
  mkdir -p "$STATE/mlartifacts"
  local auth=()
  if auth_on; then
    # the auth app's settings file holds no secret: the admin's password reaches the server through its
    # environment only (MLflow creates the admin in mlflow-auth.db on first start, then ignores it)
    (umask 077; printf '[mlflow]\ndefault_permission = %s\ndatabase_uri = sqlite:///%s\nadmin_username = %s\nauthorization_function = mlflow.server.auth:authenticate_request_basic_auth\n' \
      "${MLFLOW_AUTH_DEFAULT_PERMISSION:-READ}" "$STATE/mlflow-auth.db" "$MLFLOW_TRACKING_USERNAME" >"$RUN_DIR/mlflow-auth.ini")
    auth=(--app-name basic-auth)
  fi
  (common_env; export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"
   if auth_on; then
     export MLFLOW_AUTH_CONFIG_PATH="$RUN_DIR/mlflow-auth.ini" MLFLOW_AUTH_ADMIN_USERNAME="$MLFLOW_TRACKING_USERNAME" \
       MLFLOW_AUTH_ADMIN_PASSWORD="$MLFLOW_TRACKING_PASSWORD"
     # the auth app's CSRF key: the user's, else one made once for this state folder (owner-only file, never
     # in the repository), so restarts and several server workers agree on it
     if [[ -z "${MLFLOW_FLASK_SERVER_SECRET_KEY:-}" ]]; then
       [[ -s "$RUN_DIR/mlflow-flask-secret" ]] || (umask 077; head -c 32 /dev/urandom | base64 >"$RUN_DIR/mlflow-flask-secret")
       export MLFLOW_FLASK_SERVER_SECRET_KEY="$(cat "$RUN_DIR/mlflow-flask-secret")"
     fi
   fi
   start_bg mlflow "$VENV_BIN/mlflow" server --host "$BIND_HOST" --port "$MLFLOW_PORT" \
    --backend-store-uri "${MLFLOW_BACKEND_STORE_URI:-sqlite:///$STATE/mlflow.db}" \
    --default-artifact-root "${MLFLOW_ARTIFACT_ROOT:-file://$STATE/mlartifacts}" \
    --workers "$MLFLOW_WORKERS" "${allowed[@]}" "${auth[@]}")
}

check_credentials() {  # with authentication on: the servers accept the clients' credentials
  auth_on || return 0
  local code
  code="$(auth_curl "$MLFLOW_TRACKING_USERNAME:$MLFLOW_TRACKING_PASSWORD" -sS -m 5 -o /dev/null -w '%{http_code}' \
    "$MLFLOW_URL/api/2.0/mlflow/experiments/search?max_results=1" || true)"
  [[ "$code" == 200 ]] || die "MLflow answered $code to MLFLOW_TRACKING_USERNAME's credentials (an admin made earlier" \
    "with another password lives in $STATE/mlflow-auth.db: use that password, or change it with MLflow's update-password API)"
  code="$(auth_curl "$PREFECT_API_AUTH_STRING" -sS -m 5 -o /dev/null -w '%{http_code}' "$PREFECT_URL/api/admin/version" || true)"
  [[ "$code" == 200 ]] || die "the Prefect server answered $code to PREFECT_API_AUTH_STRING"
  echo "authentication: on (MLflow basic auth, admin $MLFLOW_TRACKING_USERNAME; Prefect API auth string)"
}

start_prefect() {
  alive prefect-server "server" && { echo "prefect-server: already running (pid $(pid_of prefect-server))"; return 0; }
  port_in_use "$PREFECT_PORT" && die "port $PREFECT_PORT is in use by another program; set PREFECT_PORT"
  need_bin prefect
  # the server keeps its own database (PREFECT_HOME=<state>/prefect-server), apart from the temporary
  # API that flows started without PREFECT_API_URL use, so the two never lock each other's SQLite file
  (common_env; export PREFECT_HOME="$STATE/prefect-server" PREFECT_UI_API_URL="${PREFECT_UI_API_URL:-$PREFECT_URL/api}"
   unset PREFECT_API_URL
   if auth_on; then export PREFECT_SERVER_API_AUTH_STRING="$PREFECT_API_AUTH_STRING"; fi
   start_bg prefect-server "$VENV_BIN/prefect" server start --host "$BIND_HOST" --port "$PREFECT_PORT")
}

start_worker() {
  alive prefect-worker "worker" && { echo "prefect-worker: already running (pid $(pid_of prefect-worker))"; return 0; }
  local name
  name="spactor-$(hostname -s 2>/dev/null || echo local)-$$"
  echo "$name" >"$RUN_DIR/prefect-worker.name"
  (client_env; start_bg prefect-worker "$VENV_BIN/prefect" worker start --pool "$WORK_POOL" --type process --name "$name")
  local deadline=$((SECONDS + HEALTH_TIMEOUT))
  until worker_online "$name"; do
    alive prefect-worker "worker" || { tail -n 20 "$RUN_DIR/prefect-worker.log" >&2; die "the worker exited; log: $RUN_DIR/prefect-worker.log"; }
    ((SECONDS < deadline)) || die "the worker did not come online within ${HEALTH_TIMEOUT}s; log: $RUN_DIR/prefect-worker.log"
    sleep 0.5
  done
  echo "prefect-worker: online, polling work pool $WORK_POOL"
}

cmd_up() {
  mkdir -p "$RUN_DIR"
  check_auth
  start_mlflow
  start_prefect
  wait_healthy mlflow "mlflow" "$MLFLOW_URL/health"
  wait_healthy prefect-server "server" "$PREFECT_URL/api/health"
  check_credentials
  ensure_pool
  start_worker
  echo
  echo "Prefect UI:  $PREFECT_URL        MLflow UI: $MLFLOW_URL"
  echo "logs and pid files: $RUN_DIR"
  echo "point flows at them: eval \"\$(infra/services.sh env)\"; then: infra/services.sh deploy"
}

cmd_down() {
  mkdir -p "$RUN_DIR"
  # the worker first: a worker whose server is gone ignores SIGTERM, SIGINT stops it cleanly
  stop prefect-worker "worker" INT
  stop prefect-server "server" TERM
  stop mlflow "mlflow" TERM
}

cmd_status() {
  local ok=0
  for spec in "mlflow|mlflow|$MLFLOW_URL/health" "prefect-server|server|$PREFECT_URL/api/health" "prefect-worker|worker|"; do
    IFS='|' read -r name match url <<<"$spec"
    if ! alive "$name" "$match"; then
      printf '%-15s stopped\n' "$name"; ok=1; continue
    fi
    if [[ -n "$url" ]]; then
      if curl -fsS -m 3 -o /dev/null "$url" 2>/dev/null; then printf '%-15s healthy  pid %-7s %s\n' "$name" "$(pid_of "$name")" "$url"
      else printf '%-15s running  pid %-7s %s does not answer\n' "$name" "$(pid_of "$name")" "$url"; ok=1; fi
    elif worker_online "$(cat "$RUN_DIR/prefect-worker.name" 2>/dev/null)"; then printf '%-15s online   pid %-7s pool %s\n' "$name" "$(pid_of "$name")" "$WORK_POOL"
    else printf '%-15s running  pid %-7s not online in pool %s\n' "$name" "$(pid_of "$name")" "$WORK_POOL"; ok=1; fi
  done
  return $ok
}

cmd_deploy() {
  mkdir -p "$RUN_DIR"
  need_bin prefect
  client_env
  curl -fsS -m 5 -o /dev/null "$PREFECT_API_URL/health" 2>/dev/null \
    || die "no Prefect server answers at $PREFECT_API_URL; run 'infra/services.sh up' (or set PREFECT_API_URL)"
  ensure_pool
  cd "$ROOT"
  # A deployment whose flow module is not in this checkout yet is left out with a warning, so one missing
  # module does not stop the others from being registered.
  local file
  file="$("$VENV_BIN/python" - "$RUN_DIR/prefect.deploy.yaml" <<'EOF'
import sys, yaml
from pathlib import Path
spec = yaml.safe_load(Path("prefect.yaml").read_text())
keep, missing = [], []
for d in spec["deployments"]:
    (keep if Path(d["entrypoint"].split(":")[0]).is_file() else missing).append(d)
if missing:
    names = ", ".join(f"{d['name']} ({d['entrypoint']})" for d in missing)
    print(f"services.sh: skipping deployments whose flow module is missing: {names}", file=sys.stderr)
    spec["deployments"] = keep
    Path(sys.argv[1]).write_text(yaml.safe_dump(spec, sort_keys=False))
    print(sys.argv[1])
else:
    print("prefect.yaml")
EOF
)"
  "$VENV_BIN/prefect" --no-prompt deploy --all --prefect-file "$file"
}

cmd_worker() {
  need_bin prefect
  client_env
  echo "worker for pool $WORK_POOL against $PREFECT_API_URL (MLflow: $MLFLOW_TRACKING_URI); Ctrl-C stops it"
  exec "$VENV_BIN/prefect" worker start --pool "$WORK_POOL" --type process
}

cmd_env() {
  echo "export PREFECT_API_URL=$PREFECT_URL/api"
  echo "export MLFLOW_TRACKING_URI=$MLFLOW_URL"
  echo "export SPACTOR_STATE_DIR=$STATE"
  if auth_on; then  # secrets are never printed: the clients read them from the environment you set
    echo "# authentication is on: also export MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_PASSWORD and PREFECT_API_AUTH_STRING"
  fi
}

cmd_logs() {
  local name="${1:-}"
  if [[ -z "$name" ]]; then ls -1 "$RUN_DIR"/*.log 2>/dev/null || echo "no logs under $RUN_DIR"; return; fi
  tail -n "${LINES:-50}" "$RUN_DIR/$name.log"
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  deploy) cmd_deploy ;;
  worker) cmd_worker ;;
  env) cmd_env ;;
  logs) shift; cmd_logs "$@" ;;
  *) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; [[ -n "${1:-}" && "$1" != -h && "$1" != --help ]] && exit 2; exit 0 ;;
esac
