#!/usr/bin/env bash
# Entry point of the RunPod image (runpod/Dockerfile; docs/runpod.md).
#
# 1. Keeps state where a pod reset does not lose it (/workspace), binds the
#    gateway for RunPod's proxy (and lets it answer to the pod's proxy name), and
#    fetches models first if asked
#    (PARLEY_FETCH_MODELS=1, or a list of model sets).
# 2. Points the services at the models found in /workspace/models, through
#    `runpod/fetch-models --env`; a setting given to the pod wins.
# 3. Refuses to open a gateway without API keys: anyone with the proxy URL would
#    reach it (PARLEY_ALLOW_OPEN=1 says that is intended).
# 4. Drops root and starts what PARLEY_POD_SERVICES names:
#      all (default)      NATS, the four services and the gateway under
#                         deploy/supervisord.conf, through deploy/run_stack.py:
#                         what `make run` does
#      vad|asr|llm|tts    that one service alone (the second pod of a two-pod
#                         layout), bound to every interface and advertised as
#                         <pod id>.runpod.internal:<port>
#      a list             e.g. nats,gateway,vad,asr,llm: the stack without the
#                         others (deploy/run_stack.py --only)
set -euo pipefail

app="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$app"

log() { printf 'parley-start: %s\n' "$*" >&2; }

# The pod's volume: the only place a pod reset keeps (PARLEY_WORKSPACE moves it, e.g. in tests).
workspace="${PARLEY_WORKSPACE:-/workspace}"
export PARLEY_STATE_DIR="${PARLEY_STATE_DIR:-$workspace/parley}"
export PARLEY_GATEWAY_HOST="${PARLEY_GATEWAY_HOST:-0.0.0.0}"
export PARLEY_MODELS_DIR="${PARLEY_MODELS_DIR:-$workspace/models}"
pod_services="${PARLEY_POD_SERVICES:-all}"
programs=(nats vad asr llm tts gateway)
# A model load from a network volume can be slow: run_stack.py says the stack is late only
# after this long, and keeps waiting (it never stops a stack for being slow).
export PARLEY_LAUNCHER_READY_TIMEOUT_S="${PARLEY_LAUNCHER_READY_TIMEOUT_S:-1800}"

# --- models ------------------------------------------------------------------------------
# PARLEY_FETCH_MODELS=1 fetches every default set of runpod/models.toml; a list such as
# whisper,llm fetches only those (a pod that runs part of the stack needs only its own).
fetch="$app/runpod/fetch-models"
fetch_sets="${PARLEY_FETCH_MODELS:-0}"
if [[ "$fetch_sets" != 0 && -n "$fetch_sets" ]]; then
    sets=()
    [[ "$fetch_sets" == 1 ]] || read -r -a sets <<<"${fetch_sets//,/ }"
    if [[ -x "$fetch" ]]; then
        log "fetching models into $PARLEY_MODELS_DIR (PARLEY_FETCH_MODELS=$fetch_sets)"
        "$fetch" "${sets[@]}" || log "fetch-models exited with $?: starting with the models that are there"
    else
        log "PARLEY_FETCH_MODELS=$fetch_sets, but $fetch is not in this image: skipped"
    fi
fi

# `fetch-models --env` prints `export PARLEY_...=<shell-quoted value>` for each model
# set that is completely in place. Only such lines are taken, and only for names the
# pod's own environment does not set.
if [[ -x "$fetch" ]]; then
    while IFS= read -r line; do
        [[ "$line" =~ ^export\ (PARLEY_[A-Z0-9_]+)= ]] || continue
        name="${BASH_REMATCH[1]}"
        if [[ -n "${!name+set}" ]]; then
            log "$name is set for the pod: keeping it"
            continue
        fi
        # The value is quoted by fetch_models.py (shlex.quote): eval only unquotes it.
        if ! eval "$line" 2>/dev/null; then
            log "fetch-models --env: cannot read the line for $name: skipped"
            continue
        fi
        log "models: $name=${!name}"
    done < <("$fetch" --env 2>/dev/null || log "fetch-models --env failed: the services use their defaults")
else
    log "no runpod/fetch-models in this image: the services use their embedded models"
fi

# Keep the container up (its web terminal is how the operator fixes what stopped the start)
# until it is told to stop: as the container's first process, a bare `sleep` would ignore SIGTERM.
stay_up() {
    sleep infinity &
    local sleeper=$!
    trap 'kill "$sleeper" 2>/dev/null; exit 0' TERM INT
    wait "$sleeper"
}

# --- what runs ---------------------------------------------------------------------------
runs() {  # whether program $1 is part of this pod
    [[ "$pod_services" == all || ",$pod_services," == *",$1,"* ]]
}
for name in ${pod_services//,/ }; do
    if [[ "$name" != all && " ${programs[*]} " != *" $name "* ]]; then
        log "PARLEY_POD_SERVICES=$pod_services: unknown program '$name' (known: all, ${programs[*]})"
        exit 64
    fi
done

# --- access ------------------------------------------------------------------------------
proxy_name="${RUNPOD_POD_ID:-<pod-id>}-${PARLEY_GATEWAY_PORT:-7860}.proxy.runpod.net"
proxy_url="https://$proxy_name"
# The gateway answers only to names it knows (against DNS rebinding): IP addresses, localhost,
# PARLEY_GATEWAY_ALLOWED_HOSTS, and on RunPod the pod's proxy name.
if [[ -n "${RUNPOD_POD_ID:-}" ]]; then
    export PARLEY_GATEWAY_ALLOWED_HOSTS="${PARLEY_GATEWAY_ALLOWED_HOSTS:+$PARLEY_GATEWAY_ALLOWED_HOSTS,}$proxy_name"
fi
if runs gateway && [[ -z "${PARLEY_GATEWAY_API_KEYS:-}" && "${PARLEY_ALLOW_OPEN:-0}" != 1 ]]; then
    log "refusing to start: PARLEY_GATEWAY_API_KEYS is empty."
    log "RunPod's proxy serves this pod to anyone who has its URL ($proxy_url):"
    log "with no key they could talk to it, clone voices and use the GPU. Set the RunPod secret"
    log "parley_api_keys (the template passes it as PARLEY_GATEWAY_API_KEYS), or set"
    log "PARLEY_ALLOW_OPEN=1 to run an open gateway on purpose."
    if [[ -n "${RUNPOD_POD_ID:-}" ]]; then
        # Stay up, so the pod's web terminal still works (fetch models, read this).
        stay_up
    fi
    exit 78
fi
if [[ "${PARLEY_TTS_HOST:-127.0.0.1}" != 127.0.0.1 ]] && runs tts; then
    log "the TTS gRPC port answers on ${PARLEY_TTS_HOST:-} with no authentication: whoever reaches it can use it"
    if [[ -n "${RUNPOD_PUBLIC_IP:-}" && -n "${RUNPOD_TCP_PORT_50053:-}" ]]; then
        log "direct gRPC TTS from outside: ${RUNPOD_PUBLIC_IP}:${RUNPOD_TCP_PORT_50053}"
    fi
fi

# --- privileges --------------------------------------------------------------------------
# The image starts as root only to own the state directory on the /workspace volume
# (RunPod mounts it root-owned), then runs everything as the unprivileged parley user.
mkdir -p "$PARLEY_STATE_DIR"
as_parley=()
if [[ "$(id -u)" == 0 ]] && id parley >/dev/null 2>&1; then
    chown -R parley:parley "$PARLEY_STATE_DIR" || log "could not chown $PARLEY_STATE_DIR"
    as_parley=(python3 -c 'import os, pwd, sys
user = pwd.getpwnam("parley")
os.setgroups([])
os.setgid(user.pw_gid)
os.setuid(user.pw_uid)
os.environ["HOME"] = user.pw_dir
os.execvp(sys.argv[1], sys.argv[1:])')
    if ! "${as_parley[@]}" test -w "$PARLEY_STATE_DIR"; then
        log "$PARLEY_STATE_DIR is not writable by the parley user (a volume without chown?): running as root"
        as_parley=()
    fi
fi

# --- start -------------------------------------------------------------------------------
# run_stack.py waits for the stack however long the models take; it stops the stack only when
# a service cannot start at all (naming it and its last error). On RunPod the container then
# stays up, as for a refused start: its web terminal is where the operator fixes the cause.
launch() {
    local child="" status=0 stopping=0 woken=0
    # This shell is the container's first process: it passes `docker stop`'s SIGTERM on (set before
    # the launcher starts, so a signal in between is not lost).
    trap 'stopping=1 woken=1; [[ -n "$child" ]] && kill -TERM "$child" 2>/dev/null || true' TERM INT
    "${as_parley[@]}" python deploy/run_stack.py "$@" &
    child=$!
    if [[ "$stopping" == 1 ]]; then kill -TERM "$child" 2>/dev/null || true; fi
    # A signal wakes `wait` with 128+n, not the launcher's status: wait again. (Asking whether the
    # launcher still runs is racy: it may have stopped, and been reaped, while the trap ran.) Bash
    # keeps a reaped child's status, so waiting again always gives the launcher's own.
    while :; do
        woken=0 status=0
        wait "$child" || status=$?
        [[ "$woken" == 1 ]] || break
    done
    trap - TERM INT
    if [[ "$status" != 0 && "$stopping" == 0 && -n "${RUNPOD_POD_ID:-}" ]]; then
        log "the stack stopped (exit status $status; the reason is above). The container stays up for the"
        log "web terminal: fix the cause (runpod/fetch-models --list, the settings), then restart the pod."
        stay_up
    fi
    exit "$status"
}

case "$pod_services" in
    all)
        log "starting the whole stack; the web app: $proxy_url"
        launch
        ;;
    vad | asr | llm | tts)
        # Alone in its pod, the service is reached from another pod: every interface, and
        # on RunPod it advertises the pod's name on the private pod network unless told.
        kind="${pod_services^^}"
        host_var="PARLEY_${kind}_HOST" port_var="PARLEY_${kind}_PORT" advertise_var="PARLEY_${kind}_ADVERTISE_ADDRESS"
        export "$host_var=${!host_var:-0.0.0.0}"
        declare -A default_ports=([VAD]=50054 [ASR]=50051 [LLM]=50052 [TTS]=50053)
        if [[ -n "${RUNPOD_POD_ID:-}" && -z "${PARLEY_ADVERTISE_ADDRESS:-}" && -z "${!advertise_var:-}" ]]; then
            export "$advertise_var=${RUNPOD_POD_ID}.runpod.internal:${!port_var:-${default_ports[$kind]}}"
            log "advertising ${!advertise_var} (RunPod's private network between pods)"
        fi
        log "starting the $pod_services service alone on ${!host_var} (NATS: ${PARLEY_NATS_URL:-nats://127.0.0.1:4222})"
        exec "${as_parley[@]}" python -m "parley_$pod_services"
        ;;
esac

# A subset of the stack: run_stack.py --only tells supervisord which programs to start.
log "starting ${pod_services//,/, }; the web app: $proxy_url"
launch --only "$pod_services"
