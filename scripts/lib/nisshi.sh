# The Kafka-compatible broker for scripts/stack: nisshi, installed once with cargo into
# ~/.cargo/bin and started with SQLite storage in .stack/nisshi, so messages survive a
# broker restart. Sourced, not run; needs common.sh and $STACK.

NISSHI_VERSION=0.8.1
# Only the storage engines the stack and the tests use: memory:// and sqlite://.
NISSHI_FEATURES=dynostore,libsql
NISSHI_MIN_RUSTC=1.96
BROKER_PORT=9092
BROKER="127.0.0.1:$BROKER_PORT"
NISSHI_DIR="$STACK/nisshi"
NISSHI_PID="$NISSHI_DIR/broker.pid"
NISSHI_LOG="$NISSHI_DIR/broker.log"
NISSHI=""

nisshi_is_right() {
    [[ -x "$1" ]] && "$1" --version 2>/dev/null | grep -qw "$NISSHI_VERSION"
}

find_nisshi() {
    local candidate
    for candidate in "${STACK_NISSHI:-}" "$(command -v nisshi 2>/dev/null || true)" "$HOME/.cargo/bin/nisshi"; do
        if [[ -n "$candidate" ]] && nisshi_is_right "$candidate"; then
            NISSHI="$candidate"
            return 0
        fi
    done
    [[ -z "${STACK_NISSHI:-}" ]] || die "STACK_NISSHI=$STACK_NISSHI is not nisshi $NISSHI_VERSION"
    return 1
}

# A rustup toolchain whose rustc is at least $NISSHI_MIN_RUSTC: the default one if it is
# new enough, else the first installed one that is.
rust_toolchain_for_nisshi() {
    local toolchain version found=""
    for toolchain in "" $(rustup toolchain list 2>/dev/null | awk '{print $1}'); do
        version="$(rustc ${toolchain:++"$toolchain"} --version 2>/dev/null | awk '{print $2}')" || continue
        [[ -n "$version" ]] || continue
        found+=" ${toolchain:-default}=$version"
        if [[ "$(printf '%s\n%s\n' "$NISSHI_MIN_RUSTC" "${version%%-*}" | sort -V | head -n 1)" == "$NISSHI_MIN_RUSTC" ]]; then
            printf '%s\n' "$toolchain"
            return 0
        fi
    done
    die "nisshi $NISSHI_VERSION needs rustc $NISSHI_MIN_RUSTC or newer; installed toolchains:${found:- none}. \
Install one (rustup toolchain install stable), or set STACK_NISSHI to a nisshi $NISSHI_VERSION binary"
}

install_nisshi() {
    local toolchain log="$STACK/nisshi-install.log"
    command -v cargo >/dev/null 2>&1 || die "nisshi is not installed and there is no cargo to install it with"
    toolchain="$(rust_toolchain_for_nisshi)" || exit 1
    mkdir -p "$STACK" "$HOME/.cargo"
    # One install at a time, whichever clone asks: a second `stack up` waits for the first.
    exec 9>"$HOME/.cargo/.nisshi-install.lock"
    flock 9
    if find_nisshi; then
        exec 9>&-
        return 0
    fi
    say "installing nisshi $NISSHI_VERSION with cargo${toolchain:+ +$toolchain} into ~/.cargo/bin (once; about 25 minutes on 2 cores); log: $log"
    if ! cargo ${toolchain:++"$toolchain"} install nisshi --version "$NISSHI_VERSION" --locked \
        --no-default-features --features "$NISSHI_FEATURES" >"$log" 2>&1; then
        show_log "$log"
        die "cargo install nisshi failed; log: $log"
    fi
    exec 9>&-
    find_nisshi || die "cargo install nisshi finished, but no nisshi $NISSHI_VERSION is in ~/.cargo/bin"
}

broker_up() {
    local pid i
    find_nisshi || install_nisshi
    if pid="$(live_pid "$NISSHI_PID" nisshi)" && port_open "$BROKER_PORT"; then
        say "broker: using nisshi already running on $BROKER (pid $pid)"
    elif port_open "$BROKER_PORT"; then
        say "broker: something not started by stack listens on $BROKER; using it"
    else
        mkdir -p "$NISSHI_DIR"
        say "broker: starting nisshi $NISSHI_VERSION on $BROKER (storage $NISSHI_DIR/broker.db, log $NISSHI_LOG)"
        # The SQLite path is relative to the working directory.
        (
            cd "$NISSHI_DIR"
            exec setsid nohup "$NISSHI" broker --listener-url "tcp://$BROKER" --advertised-listener-url "tcp://$BROKER" \
                --storage-engine sqlite://broker.db </dev/null >"$NISSHI_LOG" 2>&1
        ) &
        echo $! >"$NISSHI_PID"
        for ((i = 0; i < 60; i++)); do
            port_open "$BROKER_PORT" && break
            live_pid "$NISSHI_PID" nisshi >/dev/null || { show_log "$NISSHI_LOG"; die "nisshi exited at start; log: $NISSHI_LOG"; }
            sleep 0.5
        done
        port_open "$BROKER_PORT" || { show_log "$NISSHI_LOG"; die "nisshi did not listen on $BROKER within 30 s"; }
    fi
    create_topic "$STACK_TOPIC" "$STACK_PARTITIONS"
}

# Creates TOPIC with PARTITIONS partitions unless it exists.
create_topic() {
    local out rc=0
    out="$(cd / && timeout 60 "$NISSHI" topic create "$1" --partitions "$2" --broker "tcp://$BROKER" 2>&1)" || rc=$?
    if ((rc == 0)); then
        say "broker: created topic $1 ($2 partitions)"
    elif grep -qiE 'already exists|TopicAlreadyExists' <<<"$out"; then
        say "broker: topic $1 exists"
    else
        printf '%s\n' "$out" | sed 's/^/    /' >&2
        die "could not create topic $1 on $BROKER (exit $rc)"
    fi
}

broker_down() {
    local pid
    if pid="$(live_pid "$NISSHI_PID" nisshi)"; then
        say "broker: stopping nisshi (pid $pid; messages kept in $NISSHI_DIR/broker.db)"
        stop_pid "$pid"
    else
        say "broker: no nisshi started by stack is running"
    fi
    rm -f "$NISSHI_PID"
}

broker_status() {
    local pid
    if pid="$(live_pid "$NISSHI_PID" nisshi)" && port_open "$BROKER_PORT"; then
        say "broker: up (nisshi $NISSHI_VERSION, pid $pid, $BROKER, storage $NISSHI_DIR/broker.db)"
    elif port_open "$BROKER_PORT"; then
        say "broker: something not started by stack listens on $BROKER"
    else
        say "broker: down"
        return 1
    fi
}
