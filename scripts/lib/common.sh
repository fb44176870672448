# Helpers shared by scripts/stack and its component files. Sourced, not run.

say() { printf 'stack: %s\n' "$*"; }
warn() { printf 'stack: %s\n' "$*" >&2; }
die() { printf 'stack: error: %s\n' "$*" >&2; exit 1; }

# The last lines of a log file on stderr, for failure messages.
show_log() {
    [[ -s "$1" ]] || return 0
    printf 'stack: last lines of %s:\n' "$1" >&2
    tail -n 20 "$1" | sed 's/^/    /' >&2
}

# True if something accepts TCP connections on 127.0.0.1:PORT.
port_open() {
    # shellcheck disable=SC2016 # $1 is expanded by the inner bash
    timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$1" 2>/dev/null
}

# The pid in FILE if that process is alive and its command line contains WORD.
live_pid() {
    local file="$1" word="$2" pid
    [[ -f "$file" ]] || return 1
    pid="$(cat "$file" 2>/dev/null || true)"
    [[ "$pid" =~ ^[0-9]+$ && -r "/proc/$pid/cmdline" ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$word" || return 1
    printf '%s\n' "$pid"
}

# Stops PID with SIGTERM, then SIGKILL after 10 s.
stop_pid() {
    local pid="$1" i
    kill "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        [[ -d "/proc/$pid" ]] || return 0
        sleep 0.2
    done
    warn "pid $pid did not exit after SIGTERM; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    sleep 0.5
}

# Installs the Debian packages named unless COMMAND is on PATH.
apt_install_for() {
    local command="$1"
    shift
    command -v "$command" >/dev/null 2>&1 && return 0
    say "installing $* (Debian packages): no $command on PATH"
    apt_install "$@"
}

# Installs Debian packages. Their maintainer scripts start no service: a package's own
# server (postgresql's cluster) would take a port the stack means to use.
apt_install() {
    local sudo="" policy=/usr/sbin/policy-rc.d ours=""
    [[ $(id -u) -eq 0 ]] || sudo="sudo"
    if [[ ! -e "$policy" ]]; then
        printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null && $sudo chmod +x "$policy" && ours=1
    fi
    local rc=0
    { $sudo apt-get update -qq >/dev/null &&
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null; } || rc=$?
    [[ -z "$ours" ]] || $sudo rm -f "$policy"
    ((rc == 0)) || die "apt-get install $* failed"
}
