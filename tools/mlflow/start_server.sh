#!/usr/bin/env bash
# Launch a self-hosted MLflow tracking server for Formula Foundry (seed 003).
#
# Usage: tools/mlflow/start_server.sh [--dry-run] [--help] [-- EXTRA MLFLOW SERVER ARGS...]
#
# Settings come from the environment, then from setup.env beside this script (or the
# file named by FF_SETUP_ENV). A variable already set in the environment wins over
# the file, so `PORT=5001 tools/mlflow/start_server.sh` works with any setup.env.
# Every variable is documented in setup.env.example:
#
#   HOST (127.0.0.1)  PORT (5000)  MLFLOW_WORKERS (1)
#   MLFLOW_BACKEND_STORE_URI      (sqlite:///<project root>/data/mlflow/mlruns.db)
#   MLFLOW_ARTIFACTS_DESTINATION  (<project root>/data/mlflow/artifacts, or s3://bucket/prefix
#                                  with MLFLOW_S3_ENDPOINT_URL, AWS_ACCESS_KEY_ID,
#                                  AWS_SECRET_ACCESS_KEY)
#   MLFLOW_SERVER_ENABLE_JOB_EXECUTION (false here; mlflow's own default is true)
#   MLFLOW_BIN (mlflow)  EXTRA_ARGS (extra `mlflow server` arguments, split on spaces)
#   FF_SETUP_ENV (path of the env file)  FF_DRY_RUN=1 (same as --dry-run)
#
# Arguments after the script's own options are passed to `mlflow server` last, so
# they override what the script sets (e.g. `-- --workers 4`).
#
# The backend store URI reaches mlflow through the environment (mlflow reads
# MLFLOW_BACKEND_STORE_URI itself), never the command line, so a database password
# does not show in `ps`; whatever this script prints has passwords masked.
#
# Job execution: mlflow 3.x starts a job runner and seven huey consumer processes for its GenAI
# features (scorers, trace archival), which Formula Foundry does not use. With them on, stopping
# the server by signalling its pid alone leaves the consumers orphaned and spinning, so this
# script turns them off unless MLFLOW_SERVER_ENABLE_JOB_EXECUTION says otherwise. Either way,
# stop the server with Ctrl-C or by signalling its process group (kill -TERM -- -PGID).
#
# Exit codes: 2 bad configuration (mlflow not found, bad PORT or MLFLOW_WORKERS, missing
# or malformed env file, HOST that cannot be bound); 3 the port is already in use (a free port is suggested);
# otherwise whatever `mlflow server` returns (the script execs it, so signals reach it).
set -euo pipefail

prog="start_server.sh"
script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
project_root="$(cd "${script_dir}/../.." && pwd)"

say() { printf '%s: %s\n' "$prog" "$*" >&2; }
die() { local code="$1"; shift; say "error: $*"; exit "$code"; }

usage() {
    sed -n '2,/^set -euo pipefail/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'
}

# Mask credentials in a URI for printing: scheme://user:***@host/..., password=*** in queries.
mask_uri() {
    local uri="$1" scheme rest authority tail userinfo host_part
    if [[ "$uri" == *"://"* ]]; then
        scheme="${uri%%://*}"
        rest="${uri#*://}"
        authority="${rest%%[/?#]*}"
        tail="${rest:${#authority}}"
        if [[ "$authority" == *"@"* ]]; then
            userinfo="${authority%@*}"
            host_part="${authority##*@}"
            if [[ "$userinfo" == *":"* ]]; then
                userinfo="${userinfo%%:*}:***"
            fi
            authority="${userinfo}@${host_part}"
        fi
        uri="${scheme}://${authority}${tail}"
    fi
    # libpq also takes ?password=... in the query string.
    printf '%s' "$uri" | sed -E 's/([?&][Pp][Aa][Ss][Ss][Ww][Oo][Rr][Dd]=)[^&#]*/\1***/g'
}

# ---- options ------------------------------------------------------------------------------
dry_run="${FF_DRY_RUN:-0}"
passthrough=()
while (($#)); do
    case "$1" in
        --dry-run) dry_run=1 ;;
        --help) usage; exit 0 ;;
        --) shift; passthrough+=("$@"); break ;;
        *) passthrough+=("$1") ;;
    esac
    shift
done
[[ "$dry_run" == "0" || -z "$dry_run" ]] && dry_run=0 || dry_run=1

# ---- settings: environment first, then setup.env --------------------------------------------
env_file="${FF_SETUP_ENV:-}"
if [[ -n "$env_file" && ! -f "$env_file" ]]; then
    die 2 "FF_SETUP_ENV names ${env_file}, which does not exist"
fi
if [[ -z "$env_file" && -f "${script_dir}/setup.env" ]]; then
    env_file="${script_dir}/setup.env"
fi
# setup.env is read as data, never sourced: KEY=value lines (an optional `export ` prefix, optional
# single or double quotes around the value, `#` comments, ` #` inline comments on unquoted values),
# the same subset that `docker compose --env-file` reads. No ${VAR} expansion.
if [[ -n "$env_file" ]]; then
    declare -A preset=()  # names in the environment the script was started with: they win
    while IFS= read -r name; do preset[$name]=1; done < <(compgen -e)
    lineno=0
    while IFS= read -r line || [[ -n "$line" ]]; do
        lineno=$((lineno + 1))
        line="${line%$'\r'}"
        if [[ "$line" =~ ^[[:space:]]*(#|$) ]]; then continue; fi
        if ! [[ "$line" =~ ^[[:space:]]*(export[[:space:]]+)?([[:upper:]_][[:upper:][:digit:]_]*)=(.*)$ ]]; then
            die 2 "${env_file}:${lineno}: expected KEY=value with an upper-case KEY"
        fi
        name="${BASH_REMATCH[2]}"
        value="${BASH_REMATCH[3]}"
        case "$name" in
            PATH | HOME | IFS | ENV | SHELL | SHELLOPTS | BASHOPTS | PS4 | CDPATH | GLOBIGNORE | BASH_* | LD_*)
                die 2 "${env_file}:${lineno}: ${name} cannot be set from this file (use MLFLOW_BIN for mlflow's path)" ;;
        esac
        if [[ "$value" =~ ^\"([^\"]*)\"[[:space:]]*$ || "$value" =~ ^\'([^\']*)\'[[:space:]]*$ ]]; then
            value="${BASH_REMATCH[1]}"
        else
            value="${value%%[[:space:]]#*}"
            value="${value%"${value##*[![:space:]]}"}"
        fi
        if [[ -z "${preset[$name]+x}" ]]; then  # a later line overrides an earlier one
            printf -v "$name" '%s' "$value"
            export "${name?}"
        fi
    done <"$env_file"
    say "settings from ${env_file} (the environment wins where both set a variable)"
fi

host="${HOST:-127.0.0.1}"
port="${PORT:-5000}"
workers="${MLFLOW_WORKERS:-1}"
mlflow_bin="${MLFLOW_BIN:-mlflow}"
backend="${MLFLOW_BACKEND_STORE_URI:-sqlite:///${project_root}/data/mlflow/mlruns.db}"
artifacts="${MLFLOW_ARTIFACTS_DESTINATION:-${project_root}/data/mlflow/artifacts}"

if ! [[ "$port" =~ ^[0-9]+$ ]] || ((10#$port < 1 || 10#$port > 65535)); then
    die 2 "PORT must be a number from 1 to 65535, got '${port}'"
fi
port=$((10#$port))
if ! [[ "$workers" =~ ^[1-9][0-9]*$ ]]; then
    die 2 "MLFLOW_WORKERS must be a positive integer, got '${workers}'"
fi

# Empty means unset: an empty AWS_ACCESS_KEY_ID would otherwise shadow boto3's other sources.
for name in MLFLOW_S3_ENDPOINT_URL AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY; do
    if [[ -n "${!name+x}" && -z "${!name}" ]]; then unset "$name"; fi
done

# ---- mlflow on PATH ----------------------------------------------------------------------------
if ! mlflow_path="$(command -v -- "$mlflow_bin")"; then
    die 2 "'${mlflow_bin}' not found on PATH. Install it with
    pip install 'formula-foundry[tracking,postgres,s3]'   # or: pip install 'mlflow>=3.17,<3.18'
  then activate that environment, or set MLFLOW_BIN=/path/to/mlflow"
fi

# ---- port free? ------------------------------------------------------------------------------
python_bin=""
for candidate in "$(dirname "$mlflow_path")/python3" python3 python; do
    if command -v -- "$candidate" >/dev/null 2>&1; then python_bin="$candidate"; break; fi
done

# Exit status of the probe: 0 free, 1 in use, 2 cannot bind for another reason (message on stderr).
# SO_REUSEADDR as the server itself sets it, so a port in TIME_WAIT counts as free.
port_probe='
import errno, socket, sys
host, port = sys.argv[1], int(sys.argv[2])
try:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
except socket.gaierror as exc:
    print(f"cannot resolve HOST {host!r}: {exc}", file=sys.stderr); sys.exit(2)
family, kind, proto, _, address = infos[0]
sock = socket.socket(family, kind, proto)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    sock.bind(address)
    if port == 0:
        print(sock.getsockname()[1])
except OSError as exc:
    if exc.errno == errno.EADDRINUSE:
        sys.exit(1)
    print(f"cannot bind {host}:{port}: {exc.strerror}", file=sys.stderr); sys.exit(2)
finally:
    sock.close()
'

port_status=0
if [[ -n "$python_bin" ]]; then
    "$python_bin" -c "$port_probe" "$host" "$port" || port_status=$?
elif command -v ss >/dev/null 2>&1; then
    if ss -Htln "sport = :${port}" | grep -q .; then port_status=1; fi
else
    say "warning: neither python3 nor ss found; not checking whether port ${port} is free"
fi
if ((port_status == 1)); then
    suggestion=""
    if [[ -n "$python_bin" ]]; then
        suggestion="$("$python_bin" -c "$port_probe" "$host" 0 2>/dev/null || true)"
    fi
    msg="port ${port} on ${host} is already in use (another MLflow server or another service?)."
    if [[ -n "$suggestion" ]]; then
        msg+=" Port ${suggestion} is free: run PORT=${suggestion} ${BASH_SOURCE[0]}"
    else
        msg+=" Choose another one with PORT=<free port>."
    fi
    die 3 "$msg"
elif ((port_status != 0)); then
    die 2 "cannot use ${host}:${port} (see above)"
fi

# ---- local stores ----------------------------------------------------------------------------
local_dirs=()
if [[ "$backend" == sqlite:///* ]]; then
    db_path="${backend#sqlite:///}"
    db_path="${db_path%%\?*}"
    if [[ -n "$db_path" && "$db_path" != ":memory:" ]]; then local_dirs+=("$(dirname -- "$db_path")"); fi
fi
case "$artifacts" in
    file://*) local_dirs+=("${artifacts#file://}") ;;
    *://*) ;;
    *) local_dirs+=("$artifacts") ;;
esac
for dir in "${local_dirs[@]}"; do
    if ((dry_run)); then
        [[ -d "$dir" ]] || say "dry run: would create ${dir}"
    else
        mkdir -p -- "$dir"
    fi
done

if [[ "$artifacts" == s3://* ]]; then
    say "artifacts in S3 at ${artifacts} (endpoint: $(mask_uri "${MLFLOW_S3_ENDPOINT_URL:-AWS default}"))"
    if [[ -z "${AWS_ACCESS_KEY_ID:-}" || -z "${AWS_SECRET_ACCESS_KEY:-}" ]]; then
        say "warning: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY not set; boto3 falls back to ~/.aws or an instance role"
    fi
fi

# ---- the command -----------------------------------------------------------------------------
export MLFLOW_BACKEND_STORE_URI="$backend"
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"
extra=()
if [[ -n "${EXTRA_ARGS:-}" ]]; then read -r -a extra <<<"$EXTRA_ARGS"; fi
cmd=("$mlflow_path" server --host "$host" --port "$port" --workers "$workers"
     --serve-artifacts --artifacts-destination "$artifacts" "${extra[@]}" "${passthrough[@]}")

case "$host" in
    0.0.0.0 | "::" | "[::]") client_host="$(hostname 2>/dev/null || echo 127.0.0.1)" ;;
    *:*) client_host="[${host#[}"; client_host="${client_host%]}]" ;;
    *) client_host="$host" ;;
esac

say "backend store: $(mask_uri "$backend")"
say "artifacts:     $(mask_uri "$artifacts")"
printed=()
for word in "${cmd[@]}"; do printed+=("$(mask_uri "$word")"); done
say "command: MLFLOW_BACKEND_STORE_URI=$(mask_uri "$backend")" \
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION=${MLFLOW_SERVER_ENABLE_JOB_EXECUTION} ${printed[*]}"
if [[ "$host" != 127.* && "$host" != localhost && "$host" != "::1" ]]; then
    say "note: clients reaching this server by a public name need --allowed-hosts (mlflow 3.x checks the Host header)"
fi
echo "export MLFLOW_TRACKING_URI=http://${client_host}:${port}"

if ((dry_run)); then
    say "dry run: not starting the server"
    exit 0
fi
exec "${cmd[@]}"
