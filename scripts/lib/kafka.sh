# Apache Kafka for scripts/stack and scripts/kafka-node: its jars, fetched once from Maven
# Central into a cache every clone shares, and a single-node KRaft broker (broker and
# controller in one process) on 127.0.0.1:9092 with its data in .stack/kafka, so that
# messages survive `down` and `up`. Sourced, not run; needs common.sh and $ROOT.

KAFKA_VERSION=4.4.0
BROKER_PORT=9092
CONTROLLER_PORT=9093
BROKER="127.0.0.1:$BROKER_PORT"
# The jars, shared by every clone and keyed by the pom's content, so that a changed pom
# fetches again.
KAFKA_CACHE="${ORDERS_SVC_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/orders-svc}"
KAFKA_LIBS="$KAFKA_CACHE/kafka-$KAFKA_VERSION-$(sha256sum "$ROOT/scripts/kafka/pom.xml" | cut -c1-12)"
# A small heap: the broker shares the machine with PostgreSQL, the service and its tests.
KAFKA_JAVA_OPTS=(-Xms256m -Xmx512m -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true
    "-Dlog4j2.configurationFile=$ROOT/scripts/kafka/log4j2.yaml")

# Makes sure $KAFKA_LIBS holds the broker's jars: Java and Maven from Debian's packages
# if missing, then `mvn dependency:copy-dependencies`, once, under a lock, so that two
# clones starting at the same time fetch once.
kafka_libs() {
    [[ -f "$KAFKA_LIBS/.complete" ]] && return 0
    apt_install_for java default-jre-headless
    apt_install_for mvn maven
    mkdir -p "$KAFKA_CACHE"
    exec 8>"$KAFKA_CACHE/.lock"
    flock 8
    if [[ ! -f "$KAFKA_LIBS/.complete" ]]; then
        local log="$KAFKA_CACHE/mvn-$KAFKA_VERSION.log" started=$SECONDS
        say "fetching Apache Kafka $KAFKA_VERSION's jars from Maven Central into $KAFKA_LIBS (once; log: $log)"
        rm -rf "$KAFKA_LIBS"
        if ! mvn -B -q -f "$ROOT/scripts/kafka/pom.xml" dependency:copy-dependencies \
            -DincludeScope=runtime -DoutputDirectory="$KAFKA_LIBS" >"$log" 2>&1; then
            show_log "$log"
            die "mvn dependency:copy-dependencies failed; log: $log"
        fi
        touch "$KAFKA_LIBS/.complete"
        say "fetched Kafka's jars in $((SECONDS - started)) s"
    fi
    exec 8>&-
}

# Runs a Kafka main class with the cached jars: kafka_java CLASS ARGS...
kafka_java() {
    java "${KAFKA_JAVA_OPTS[@]}" -cp "$KAFKA_LIBS/*" "$@"
}

# Writes DIR/server.properties for a single node listening on PORT (plain) and
# CONTROLLER (the KRaft controller), then appends DIR/extra.properties if there is one:
# a later line wins, so a test can replace the listeners or add its own settings.
kafka_properties() {
    local dir="$1" port="$2" controller="$3"
    {
        cat <<PROPERTIES
# Written by scripts/kafka-node; edits are lost at the next start.
process.roles=broker,controller
node.id=1
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller
advertised.listeners=PLAINTEXT://127.0.0.1:$port
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL,SSL:SSL
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
controller.quorum.bootstrap.servers=127.0.0.1:$controller
log.dirs=$dir/data
num.partitions=1
default.replication.factor=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
# Groups of the consumer protocol (KIP-848) have the session timeout and the heartbeat
# interval the broker sets: a 6 s session here, as the tests give their classic groups,
# so that a killed member's partitions move within seconds (Kafka's default is 45 s),
# and heartbeats every 500 ms (Kafka's default is 5 s), since a partition moves from one
# member to another only as fast as their heartbeats carry the change
# (bench/run rebalance).
group.consumer.min.session.timeout.ms=6000
group.consumer.session.timeout.ms=6000
group.consumer.min.heartbeat.interval.ms=500
group.consumer.heartbeat.interval.ms=500
PROPERTIES
        [[ ! -f "$dir/extra.properties" ]] || cat "$dir/extra.properties"
    } >"$dir/server.properties"
}

# Formats DIR/data unless it holds a node already. KAFKA_NODE_SCRAM, if set, is a
# SCRAM credential to create at format time ('SCRAM-SHA-512=[name=u,password=p]').
kafka_format() {
    local dir="$1" id
    [[ -f "$dir/data/meta.properties" ]] && return 0
    id="$(kafka_java kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1)"
    [[ "$id" =~ ^[A-Za-z0-9_-]{22}$ ]] || die "kafka.tools.StorageTool random-uuid printed no cluster id"
    local scram=()
    [[ -z "${KAFKA_NODE_SCRAM:-}" ]] || scram=(--add-scram "$KAFKA_NODE_SCRAM")
    kafka_java kafka.tools.StorageTool format --standalone -t "$id" -c "$dir/server.properties" "${scram[@]}" \
        >"$dir/format.log" 2>&1 || { show_log "$dir/format.log"; die "formatting $dir/data failed; log: $dir/format.log"; }
}

# Waits until the node writing LOG says it started, or its process PID is gone.
kafka_wait_started() {
    local log="$1" pid="$2" limit="${3:-90}" i
    for ((i = 0; i < limit * 5; i++)); do
        grep -q "Kafka Server started" "$log" 2>/dev/null && return 0
        [[ -d "/proc/$pid" ]] || { show_log "$log"; die "the Kafka broker exited at start; log: $log"; }
        sleep 0.2
    done
    show_log "$log"
    die "the Kafka broker did not start within $limit s; log: $log"
}

KAFKA_DIR="${STACK:-$ROOT/.stack}/kafka"
KAFKA_PID="$KAFKA_DIR/broker.pid"
KAFKA_LOG="$KAFKA_DIR/broker.log"

broker_up() {
    local pid started
    kafka_libs
    if pid="$(live_pid "$KAFKA_PID" kafka.Kafka)" && port_open "$BROKER_PORT"; then
        say "broker: using Apache Kafka $KAFKA_VERSION already running on $BROKER (pid $pid)"
    elif port_open "$BROKER_PORT"; then
        say "broker: something not started by stack listens on $BROKER; using it"
    else
        mkdir -p "$KAFKA_DIR"
        say "broker: starting Apache Kafka $KAFKA_VERSION on $BROKER (data $KAFKA_DIR/data, log $KAFKA_LOG)"
        started=$SECONDS
        setsid nohup "$ROOT/scripts/kafka-node" "$KAFKA_DIR" "$BROKER_PORT" "$CONTROLLER_PORT" </dev/null >"$KAFKA_LOG" 2>&1 &
        echo $! >"$KAFKA_PID"
        kafka_wait_started "$KAFKA_LOG" "$!"
        say "broker: started in $((SECONDS - started)) s"
    fi
    create_topic "$STACK_TOPIC" "$STACK_PARTITIONS"
}

# Creates TOPIC with PARTITIONS partitions unless it exists, with kafka-topics.
create_topic() {
    local out
    if out="$(kafka_java org.apache.kafka.tools.TopicCommand --bootstrap-server "$BROKER" --create --if-not-exists \
        --topic "$1" --partitions "$2" --replication-factor 1 2>&1)"; then
        say "broker: topic $1 is there ($2 partitions if it was created now)"
    else
        printf '%s\n' "$out" | sed 's/^/    /' >&2
        die "could not create topic $1 on $BROKER"
    fi
}

broker_down() {
    local pid
    if pid="$(live_pid "$KAFKA_PID" kafka.Kafka)"; then
        say "broker: stopping Apache Kafka (pid $pid; messages kept in $KAFKA_DIR/data)"
        stop_pid "$pid"
    else
        say "broker: no Kafka started by stack is running"
    fi
    rm -f "$KAFKA_PID"
}

broker_status() {
    local pid
    if pid="$(live_pid "$KAFKA_PID" kafka.Kafka)" && port_open "$BROKER_PORT"; then
        say "broker: up (Apache Kafka $KAFKA_VERSION, pid $pid, $BROKER, data $KAFKA_DIR/data)"
    elif port_open "$BROKER_PORT"; then
        say "broker: something not started by stack listens on $BROKER"
    else
        say "broker: down"
        return 1
    fi
}
