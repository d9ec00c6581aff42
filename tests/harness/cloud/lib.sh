# Common helpers for start / stop / service (sourced).
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$HERE/cloud.env"
CLOUD=$NLC_CLOUD_DIR
[[ "$CLOUD" == /?* ]] || { echo "NLC_CLOUD_DIR must be an absolute path" >&2; exit 1; }
VENV=$NLC_CLOUD_VENV
RUN=$CLOUD/run
LOG=$CLOUD/log
# $HELD/NAME holds the pid of a test process that stopped service NAME on purpose (`service stop`);
# while that process lives, `start` waits for it instead of "repairing" the cloud under the test
HELD=$RUN/held
# every long-running service, in start order; stop goes the other way round
API_SERVICES=(keystone placement nova-api image-stub)
# services `service` may stop and start again while the cloud runs
RESTARTABLE=("${API_SERVICES[@]}" nova-conductor nova-scheduler)

_t0=$(date +%s%N)
step() {  # progress line with seconds since the script started
    local d=$(( ($(date +%s%N) - _t0) / 100000000 ))
    printf '[%4d.%ds] %s\n' $((d / 10)) $((d % 10)) "$*"
}
die() { echo "ERROR: $*" >&2; exit 1; }
show_tail() { [[ -s "$1" ]] && { echo "---- last lines of $1" >&2; tail -n "${2:-25}" "$1" >&2; }; return 0; }

group_alive() { kill -0 -- "-$1" 2>/dev/null || kill -0 "$1" 2>/dev/null; }
pid_of() { [[ -s "$RUN/$1.pid" ]] && cat "$RUN/$1.pid"; }
svc_alive() { local p; p=$(pid_of "$1") && group_alive "$p"; }
held_by_live_process() { local p; [[ -s "$HELD/$1" ]] && p=$(cat "$HELD/$1") && kill -0 "$p" 2>/dev/null; }

port_open() { (exec 3<>"/dev/tcp/$NLC_HOST_IP/$1") 2>/dev/null; }
wait_port() {  # port timeout_s [name-of-service-that-must-stay-alive]
    local i
    for ((i = 0; i < $2 * 10; i++)); do
        port_open "$1" && return 0
        [[ -n "${3:-}" ]] && ! svc_alive "$3" && { echo "$3 died while starting" >&2; return 1; }
        sleep 0.1
    done
    echo "timeout waiting for port $1" >&2; return 1
}
http_ok() {  # url: any HTTP answer < 500 within 5 s
    local code; code=$(curl -s -m 5 -o /dev/null -w '%{http_code}' "$1") || return 1
    [[ "$code" =~ ^[1-4] ]]
}
wait_http() {  # url timeout_s [service-that-must-stay-alive]
    local i
    for ((i = 0; i < $2 * 5; i++)); do
        http_ok "$1" && return 0
        [[ -n "${3:-}" ]] && ! svc_alive "$3" && { echo "$3 died while starting" >&2; return 1; }
        sleep 0.2
    done
    echo "timeout waiting for $1" >&2; return 1
}
service_url() {
    case $1 in
        keystone) echo "$NLC_KEYSTONE_URL" ;;
        placement) echo "$NLC_PLACEMENT_URL/" ;;
        nova-api) echo "http://$NLC_HOST_IP:$NLC_NOVA_PORT/" ;;
        image-stub) echo "$NLC_IMAGE_URL/" ;;
    esac
}

# launch NAME: run $CLOUD/bin/NAME (written by start) in its own session / process group,
# output appended to $LOG/NAME.out, pid (= process group id) in $RUN/NAME.pid
launch() {
    local name=$1 pid
    [[ -x "$CLOUD/bin/$name" ]] || die "no launcher $CLOUD/bin/$name (cloud not set up?)"
    setsid "$CLOUD/bin/$name" >>"$LOG/$name.out" 2>&1 </dev/null 9>&- &
    pid=$!
    echo "$pid" >"$RUN/$name.pid"
}

# stop_groups GRACE NAME...: signal each service's process group, wait up to GRACE s, then SIGKILL.
# uwsgi gets SIGINT (immediate shutdown; SIGTERM with --die-on-term waits ~3 s for its workers);
# nova's eventlet services take ~10 s to honour SIGTERM: they get GRACE and are then killed, which
# loses nothing here (start always begins from scratch).
stop_signal() {
    case $1 in keystone|placement|nova-api) echo INT ;; *) echo TERM ;; esac
}
stop_groups() {
    local grace=$1; shift
    local pids=() name pid p i left=()
    for name in "$@"; do
        pid=$(pid_of "$name") || continue
        if group_alive "$pid"; then
            kill -"$(stop_signal "$name")" -- "-$pid" 2>/dev/null || kill -"$(stop_signal "$name")" "$pid" 2>/dev/null
            pids+=("$pid")
        fi
        rm -f "$RUN/$name.pid"
    done
    ((${#pids[@]})) || return 0
    for ((i = 0; i < grace * 10; i++)); do
        left=()
        for p in "${pids[@]}"; do group_alive "$p" && left+=("$p"); done
        ((${#left[@]})) || return 0
        sleep 0.1
    done
    for p in "${left[@]}"; do kill -KILL -- "-$p" 2>/dev/null || kill -KILL "$p" 2>/dev/null; done
    for ((i = 0; i < 50; i++)); do
        left=(); for p in "${pids[@]}"; do group_alive "$p" && left+=("$p"); done
        ((${#left[@]})) || return 0
        sleep 0.1
    done
    echo "process groups still alive after SIGKILL: ${left[*]}" >&2
}

stop_all() {
    [[ -d "$RUN" ]] || return 0
    local computes=() f
    for f in "$RUN"/nova-compute*.pid; do [[ -e $f ]] && computes+=("$(basename "$f" .pid)"); done
    # nova + API services first, while rabbit and the DB are still there
    stop_groups 3 image-stub "${computes[@]}" nova-scheduler nova-conductor nova-api placement keystone
    stop_groups 20 rabbitmq mariadb epmd
    rm -f "$CLOUD/ready"
}

with_lock() {  # serialise start/stop/service between processes (lock file lives beside $CLOUD)
    mkdir -p "$(dirname "$CLOUD")"
    exec 9>"$CLOUD.lock"
    flock -w 900 9 || die "could not lock $CLOUD.lock"
}
unlock() { flock -u 9; }

# start_service NAME: launch a restartable service; wait until it answers HTTP (API services) or
# has stayed up for 2 s (conductor, scheduler)
start_service() {
    launch "$1"
    if [[ -n "$(service_url "$1")" ]]; then
        wait_http "$(service_url "$1")" 120 "$1" || {
            show_tail "$LOG/$1.out"; show_tail "$LOG/$1-uwsgi.log"; echo "$1 did not start" >&2; return 1; }
    else
        sleep 2
        svc_alive "$1" || { show_tail "$LOG/$1.out"; echo "$1 died" >&2; return 1; }
    fi
    rm -f "$HELD/$1"
}
# service_ok NAME: running, and answering if it is an API service
service_ok() {
    svc_alive "$1" || return 1
    [[ -z "$(service_url "$1")" ]] || http_ok "$(service_url "$1")"
}
