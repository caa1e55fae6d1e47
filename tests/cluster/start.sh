#!/usr/bin/env bash
# Start hpcjob's test cluster: Slurm on this one host (munged, MariaDB, slurmdbd, slurmctld, and
# a slurmd for each of five nodes: tcn1 for rome/staging, gcn1 with 2 A100, hcn1 with 2 H100,
# tcn2 and gcn2 (2 A100) second nodes of the multi-node partitions multi and gpu_multi)
# and an OpenSSH server on 127.0.0.1, with a non-root test user. As root on Debian 12.
#
# Idempotent: run again while up, it re-verifies in about a second; after a partial start or a
# changed template, it (re)starts what is missing or stale. Only daemons it started are recorded
# (state dir pids/) and only those are ever stopped (stop.sh). On success it writes
# $STATE/cluster.env for the tests; on failure it names the daemon, prints its log tail and
# exits non-zero. Options: --check-job (also submit a trivial job when nothing was restarted).
set -Eeuo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$HERE/lib.sh"

TEST_USER=hpctest
TEST_ACCOUNT=hpctest_acct
CLUSTER=hpcjobtest
PARTITIONS=rome,gpu_a100,gpu_h100,staging,multi,gpu_multi
SSH_PORT=${HPCJOB_TEST_SSH_PORT:-2222}
# A second login node of the same cluster: its own sshd, hostname and process table (see login2).
SSH_PORT2=${HPCJOB_TEST_SSH_PORT2:-2223}
LOGIN2_HOST=hpcjob-login2
TIMEOUT=${HPCJOB_TEST_CLUSTER_TIMEOUT:-60}
MARKER="managed by hpcjob tests/cluster/start.sh"
# openssh-client: ssh-agent and ssh-keygen, which tests use (in CI their absence would be a skip).
PACKAGES=(slurmctld slurmd slurm-client slurmdbd munge mariadb-server openssh-server openssh-client)
MYSQL_SOCK=/run/mysqld/mysqld.sock
SCRATCH=$STATE/scratch
CLIENT=$STATE/client
ETC=$STATE/etc
START_NS=$(date +%s%N)
CHECK_JOB=0
STARTED=() # daemons (re)started by this run

for arg in "$@"; do
    case $arg in
        --check-job) CHECK_JOB=1 ;;
        -h | --help)
            sed -n '2,9p' "$0"
            exit 0
            ;;
        *)
            echo "usage: $0 [--check-job]" >&2
            exit 2
            ;;
    esac
done

die() {
    log "ERROR: $*"
    rm -f "$STATE/cluster.env"
    exit 1
}

# fail NAME WHY: NAME did not come up; show the end of what it wrote.
fail() {
    local name=$1 why=$2 f
    log "ERROR: $name did not come up: $why"
    for f in $(log_files "$name"); do
        if [[ -s $f ]]; then
            echo "----- last lines of $f -----" >&2
            tail -n 25 "$f" >&2
        fi
    done
    rm -f "$STATE/cluster.env"
    exit 1
}

trap 'log "ERROR: start.sh failed at line $LINENO: $BASH_COMMAND"; rm -f "$STATE/cluster.env"' ERR

[[ $(id -u) == 0 ]] || die "must run as root (it installs packages and starts system daemons)"
[[ $STATE =~ ^/[A-Za-z0-9_./-]+$ ]] || die "HPCJOB_TEST_CLUSTER_DIR must be an absolute path without spaces"

# ---------------------------------------------------------------- packages
install_packages() {
    local missing=() p
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
            missing+=("$p")
    done
    ((${#missing[@]} == 0)) && return 0
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}

# ---------------------------------------------------------------- files
HOST=$(hostname -s)

# install_if_changed SRC DEST MODE OWNER: copy when different; refuse to overwrite a file that
# this script did not write. Returns 0 when it changed DEST.
install_if_changed() {
    local src=$1 dest=$2 mode=$3 owner=$4
    if [[ -e $dest ]] && ! grep -qF "$MARKER" "$dest"; then
        [[ ${HPCJOB_TEST_CLUSTER_FORCE:-} == 1 ]] ||
            die "$dest exists and was not written by start.sh; move it away or set HPCJOB_TEST_CLUSTER_FORCE=1 (it is then kept as $dest.hpcjob-orig)"
        mv "$dest" "$dest.hpcjob-orig"
    fi
    if [[ -e $dest ]] && cmp -s "$src" "$dest"; then
        chmod "$mode" "$dest"
        chown "$owner" "$dest"
        return 1
    fi
    install -m "$mode" -o "${owner%:*}" -g "${owner#*:}" "$src" "$dest"
    return 0
}

render() { # render TEMPLATE OUT
    sed -e "s|@MARKER@|$MARKER|g" -e "s|@STATE@|$STATE|g" -e "s|@HOST@|$HOST|g" \
        -e "s|@CLUSTER@|$CLUSTER|g" -e "s|@NODE_HW@|$NODE_HW|g" -e "s|@REALMEM@|$REALMEM|g" \
        -e "s|@DBPASS@|$DBPASS|g" -e "s|@SSH_PORT@|$SSH_PORT|g" -e "s|@USER@|$TEST_USER|g" \
        "$HERE/$1" >"$2"
}

prepare_files() {
    install -d -m 755 "$STATE" "$PIDS" "$ETC" "$STATE/run" "$STATE/dev" "$STATE/sshd" "$CLIENT"
    install -d -m 755 -o slurm -g slurm "$LOGS" "$STATE/slurmctld"
    install -d -m 755 "$STATE/slurmd"
    chmod 700 "$CLIENT" "$STATE/sshd"
    # Fake GPUs: character devices with /dev/null's numbers.
    local i
    for i in 0 1 2 3 4 5; do
        [[ -c $STATE/dev/nvidia$i ]] || { rm -f "$STATE/dev/nvidia$i" && mknod -m 666 "$STATE/dev/nvidia$i" c 1 3; }
    done
    # Node names resolve (jobs use the first node's name as torchrun's rendezvous host).
    local node
    for node in "${NODES[@]}"; do
        grep -qE "^127\.0\.0\.1[[:space:]](.*[[:space:]])?$node([[:space:]]|\$)" /etc/hosts ||
            echo "127.0.0.1 $node" >>/etc/hosts
    done
    [[ -s $ETC/dbpass ]] || (umask 077 && head -c 18 /dev/urandom | base64 | tr -d '/+=' >"$ETC/dbpass")
    DBPASS=$(cat "$ETC/dbpass")

    # Node topology from slurmd -C (CPUs=2 alone makes slurmd complain about socket/core
    # boundaries). Each node claims the host's CPUs but only 30% of its memory,
    # below the real amount as slurmd requires.
    local probe
    probe=$(slurmd -C 2>/dev/null | grep '^NodeName=') || die "slurmd -C printed no NodeName line"
    NODE_HW=${probe% RealMemory=*}
    NODE_HW=${NODE_HW#NodeName=* }
    REALMEM=${probe##*RealMemory=}
    REALMEM=$((${REALMEM%% *} * 3 / 10))

    install -d -m 755 /etc/slurm
    local f
    for f in slurm.conf gres.conf cgroup.conf; do
        render "$f.in" "$ETC/$f"
        if install_if_changed "$ETC/$f" "/etc/slurm/$f" 644 root:root; then
            touch "$ETC/restart.slurmctld"
        fi
    done
    render slurmdbd.conf.in "$ETC/slurmdbd.conf"
    chmod 600 "$ETC/slurmdbd.conf"
    if install_if_changed "$ETC/slurmdbd.conf" /etc/slurm/slurmdbd.conf 600 slurm:slurm; then
        touch "$ETC/restart.slurmdbd"
    fi
    render sshd_config.in "$ETC/sshd_config.new"
    if ! cmp -s "$ETC/sshd_config.new" "$STATE/sshd/sshd_config"; then
        mv "$ETC/sshd_config.new" "$STATE/sshd/sshd_config"
        touch "$ETC/restart.sshd"
    else
        rm -f "$ETC/sshd_config.new"
    fi
}

prepare_user() {
    if ! id "$TEST_USER" >/dev/null 2>&1; then
        log "creating user $TEST_USER"
        useradd --create-home --shell /bin/bash "$TEST_USER"
    fi
    # useradd leaves the account locked ('!'); with UsePAM no sshd then refuses even key logins.
    [[ $(getent shadow "$TEST_USER" | cut -d: -f2) == '*' ]] || usermod -p '*' "$TEST_USER"
    local home
    home=$(getent passwd "$TEST_USER" | cut -d: -f6)
    install -d -m 1777 -o "$TEST_USER" -g "$TEST_USER" "$SCRATCH"

    # Client keys: one plain, one passphrase-protected (the passphrase is for the tests only).
    [[ -s $CLIENT/id_ed25519 ]] ||
        ssh-keygen -q -t ed25519 -N '' -C "$TEST_USER@hpcjob-test" -f "$CLIENT/id_ed25519"
    [[ -s $CLIENT/passphrase ]] ||
        (umask 077 && head -c 12 /dev/urandom | base64 | tr -d '/+=' >"$CLIENT/passphrase")
    [[ -s $CLIENT/id_ed25519_encrypted ]] ||
        ssh-keygen -q -t ed25519 -N "$(cat "$CLIENT/passphrase")" -C "$TEST_USER@hpcjob-test-encrypted" \
            -f "$CLIENT/id_ed25519_encrypted"
    install -d -m 700 -o "$TEST_USER" -g "$TEST_USER" "$home/.ssh"
    cat "$CLIENT/id_ed25519.pub" "$CLIENT/id_ed25519_encrypted.pub" >"$ETC/authorized_keys"
    install_authorized "$home/.ssh/authorized_keys"

    [[ -s $STATE/sshd/ssh_host_ed25519_key ]] ||
        ssh-keygen -q -t ed25519 -N '' -C "hpcjob-test-host" -f "$STATE/sshd/ssh_host_ed25519_key"
    local kh
    kh="[127.0.0.1]:$SSH_PORT $(cut -d' ' -f1,2 "$STATE/sshd/ssh_host_ed25519_key.pub")"
    [[ $(cat "$CLIENT/known_hosts" 2>/dev/null) == "$kh" ]] || echo "$kh" >"$CLIENT/known_hosts"
}

install_authorized() { # StrictModes: owned by the user, not group/world writable
    cmp -s "$ETC/authorized_keys" "$1" ||
        install -m 600 -o "$TEST_USER" -g "$TEST_USER" "$ETC/authorized_keys" "$1"
    chown "$TEST_USER:$TEST_USER" "$1"
    chmod 600 "$1"
}

# ---------------------------------------------------------------- daemons
# launch NAME CMD...: run CMD detached in its own session; record its pid as ours.
launch() {
    local name=$1 i
    shift
    rm -f "$PIDS/$name.pid"
    : >>"$LOGS/$name.stderr"
    # The shell writes its own pid, then becomes CMD: the recorded pid is exactly the daemon's.
    # shellcheck disable=SC2016  # $$ and $@ are for the inner shell
    # fd 9 (the lock) is closed, or the daemon would hold the lock for its lifetime; so is every
    # other inherited descriptor above 2: `flock /tmp/hpcjob-cluster.lock start.sh` passes its
    # lock as fd 3, and a daemon holding it blocks every later test run until the daemon ends.
    setsid bash -c 'echo $$ >"$0"
        for fd in /proc/$$/fd/*; do
            fd=${fd##*/}
            if [ "$fd" -gt 2 ]; then eval "exec $fd>&-" 2>/dev/null; fi
        done
        exec "$@"' "$PIDS/$name.pid" "$@" \
        </dev/null >>"$LOGS/$name.stderr" 2>&1 9>&- &
    for ((i = 0; i < 100; i++)); do
        [[ -s $PIDS/$name.pid ]] && break
        sleep 0.01
    done
    STARTED+=("$name")
}

# wait_ready NAME CHECK: poll CHECK until it succeeds; fail early if our NAME died.
wait_ready() {
    local name=$1 check=$2 deadline=$((SECONDS + TIMEOUT)) i=0
    until $check "$name"; do
        # The pid is the shell's until it execs: give it a moment before judging.
        if ((i++ > 5)) && ! ours_alive "$name"; then fail "$name" "the process exited"; fi
        ((SECONDS < deadline)) || fail "$name" "not ready after ${TIMEOUT}s"
        sleep 0.1
    done
}

# ensure NAME CHECK STARTER [shared] (CHECK and STARTER get NAME as their argument): ours running and answering → nothing to do; else start it.
# With "shared", a daemon that answers but was not started here (a system munged) is used as is.
ensure() {
    local name=$1 check=$2 starter=$3 shared=${4:-} i
    if ours_alive "$name"; then
        if [[ ! -e $ETC/restart.$name ]]; then
            for ((i = 0; i < 30; i++)); do
                $check "$name" && return 0
                sleep 0.1
            done
            log "$name (pid $(our_pid "$name")) is running but not answering; restarting it"
        fi
        stop_ours "$name"
    elif [[ $shared == shared ]] && $check "$name"; then
        log "using a $name that start.sh did not start (it will not stop it)"
        return 0
    elif [[ $name != sshd && -n $(foreign_pids "${name%@*}") ]]; then
        die "a ${name%@*} not started by start.sh is running (pid $(foreign_pids "${name%@*}")); stop it first"
    fi
    log "starting $name"
    $starter "$name"
    wait_ready "$name" "$check"
    rm -f "$ETC/restart.$name"
}

# The files where NAME writes: its own log and what it printed.
log_files() {
    case $1 in
        munged) echo /var/log/munge/munged.log "$LOGS/munged.stderr" ;;
        sshd) echo "$LOGS/sshd.log" "$LOGS/sshd.stderr" "$LOGS/sshd.client" ;;
        sshd@login2) echo "$LOGS/sshd-login2.log" "$LOGS/sshd@login2.stderr" "$LOGS/sshd-login2.client" ;;
        *) echo "$LOGS/$1.log" "$LOGS/$1.stderr" ;;
    esac
}

# foreign_pids COMM: live COMM processes (pgrep also lists zombies) that start.sh did not start.
foreign_pids() {
    local pid out=() ours
    ours=" $(cat "$PIDS"/*.pid 2>/dev/null | tr '\n' ' ') "
    for pid in $(pgrep -x "$1"); do
        if alive "$pid" "$1" && [[ $ours != *" $pid "* ]]; then out+=("$pid"); fi
    done
    echo "${out[*]}"
}

munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }
start_munged() {
    install -d -m 755 -o munge -g munge /run/munge /var/log/munge /var/lib/munge
    [[ -s /etc/munge/munge.key ]] || mungekey --create --keyfile=/etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
    launch munged setpriv --reuid=munge --regid=munge --init-groups /usr/sbin/munged --foreground
}

mariadb_ok() { mariadb-admin --socket="$MYSQL_SOCK" --connect-timeout=2 ping >/dev/null 2>&1; }
start_mariadbd() {
    install -d -m 755 -o mysql -g mysql /run/mysqld
    if [[ ! -d $STATE/mysql/mysql ]]; then
        install -d -m 750 -o mysql -g mysql "$STATE/mysql"
        mariadb-install-db --user=mysql --datadir="$STATE/mysql" --auth-root-authentication-method=socket \
            --skip-test-db >>"$LOGS/mariadbd.stderr" 2>&1 || fail mariadbd "mariadb-install-db failed"
    fi
    touch "$LOGS/mariadbd.log" && chown mysql:mysql "$LOGS/mariadbd.log"
    launch mariadbd /usr/sbin/mariadbd --no-defaults --user=mysql --datadir="$STATE/mysql" \
        --socket="$MYSQL_SOCK" --pid-file=/run/mysqld/hpcjob-test.pid --skip-networking \
        --log-error="$LOGS/mariadbd.log" --innodb-buffer-pool-size=1024M \
        --innodb-lock-wait-timeout=900
}
prepare_database() {
    mariadb --socket="$MYSQL_SOCK" <<SQL || fail mariadbd "could not create the accounting database"
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DBPASS';
ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$DBPASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
SQL
}

# Listening is enough here (sacctmgr would also need a valid slurm.conf, and blame slurmdbd).
slurmdbd_ok() { (exec 3<>/dev/tcp/127.0.0.1/6819) 2>/dev/null; }
start_slurmdbd() { launch slurmdbd /usr/sbin/slurmdbd -D; }

# sacctmgr ARGS...: its output, or stop with what it said.
sacctmgr_out() {
    local out
    out=$(timeout 20 sacctmgr "$@" 2>&1) || die "sacctmgr $* failed: $out"
    printf '%s\n' "$out"
}

# Associations: users are not root, and AccountingStorageEnforce=associations.
prepare_accounts() {
    local have
    have=$(sacctmgr_out -n -P list cluster format=cluster) || exit 1
    grep -qx "$CLUSTER" <<<"$have" || sacctmgr_out -i add cluster "$CLUSTER" >/dev/null
    have=$(sacctmgr_out -n -P list account format=account) || exit 1
    grep -qx "$TEST_ACCOUNT" <<<"$have" ||
        sacctmgr_out -i add account "$TEST_ACCOUNT" Cluster="$CLUSTER" \
            Description="hpcjob tests" Organization=hpcjob >/dev/null
    have=$(sacctmgr_out -n -P list assoc where user="$TEST_USER" format=account) || exit 1
    grep -qx "$TEST_ACCOUNT" <<<"$have" ||
        sacctmgr_out -i add user "$TEST_USER" Account="$TEST_ACCOUNT" Cluster="$CLUSTER" >/dev/null
}

# Course accounts and partitions (issue 17: 2), made at run time — never in slurm.conf, so that
# a start.sh without them (an older checkout) renders the same slurm.conf and restarts nothing.
# The test user is in COURSE_ACCOUNT (not its default), never in OTHER_ACCOUNT; gpu_course is
# for COURSE_ACCOUNT only, thin_course for OTHER_ACCOUNT only.
COURSE_ACCOUNT=hpctest_course
OTHER_ACCOUNT=other_course
COURSE_PARTITIONS=(
    "gpu_course Nodes=gcn1 AllowAccounts=$COURSE_ACCOUNT"
    "thin_course Nodes=tcn1 AllowAccounts=$OTHER_ACCOUNT"
)
prepare_course_accounts() {
    local have account
    have=$(sacctmgr_out -n -P list account format=account) || exit 1
    for account in "$COURSE_ACCOUNT" "$OTHER_ACCOUNT"; do
        grep -qx "$account" <<<"$have" ||
            sacctmgr_out -i add account "$account" Cluster="$CLUSTER" \
                Description="hpcjob tests: a course" Organization=hpcjob >/dev/null
    done
    have=$(sacctmgr_out -n -P list assoc where user="$TEST_USER" format=account) || exit 1
    grep -qx "$COURSE_ACCOUNT" <<<"$have" ||
        sacctmgr_out -i add user "$TEST_USER" Account="$COURSE_ACCOUNT" Cluster="$CLUSTER" >/dev/null
}
# Partitions made with `scontrol create` vanish when slurmctld restarts from slurm.conf: made
# again on every run where missing (after slurmctld answers).
prepare_course_partitions() {
    local line name out
    for line in "${COURSE_PARTITIONS[@]}"; do
        name=${line%% *}
        scontrol -o show partition "$name" >/dev/null 2>&1 && continue
        log "creating partition $name"
        # shellcheck disable=SC2086  # the line is words on purpose
        out=$(scontrol create PartitionName=$line MaxTime=5-00:00:00 DefaultTime=01:00:00 \
            DefMemPerCPU=1000 State=UP 2>&1) || die "scontrol create partition $name failed: $out"
    done
}

slurmctld_ok() { timeout 5 scontrol ping 2>/dev/null | grep -q 'is UP'; }
start_slurmctld() { launch slurmctld /usr/sbin/slurmctld -D; }

slurmd_ok() { ours_alive "$1"; } # registration is checked by wait_node
declare -A SLURMD_STARTED_AT=()
start_slurmd() { # start_slurmd slurmd@NODE
    local node=${1#slurmd@}
    install -d -m 755 "$STATE/slurmd/$node"
    SLURMD_STARTED_AT[$node]=$(date +%s)
    launch "$1" /usr/sbin/slurmd -D -N "$node"
}

# Every node is usable: registered by its running slurmd (after a slurmctld restart the
# controller reports nodes idle from saved state before slurmd re-registers), not down or drained.
node_field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$2"; }
node_ready() { # node_ready NODE: 0 ready, 1 not yet, 2 drained/down (by its current slurmd)
    local line state since
    line=$(scontrol -o show node "$1" 2>/dev/null) || return 1
    state=$(node_field State "$line")
    since=$(node_field SlurmdStartTime "$line")
    since=$(date -d "$since" +%s 2>/dev/null || echo 0)
    ((since > 0 && since + 1 >= ${SLURMD_STARTED_AT[$1]:-0})) || return 1
    [[ $state =~ DRAIN|DOWN ]] && return 2
    [[ $state =~ ^(IDLE|MIXED|ALLOCATED|COMPLETING) && $state != *NOT_RESPONDING* ]]
}
wait_nodes() {
    local deadline=$((SECONDS + TIMEOUT)) node rc line
    local -A resumed=()
    for node in "${NODES[@]}"; do
        while :; do
            rc=0
            node_ready "$node" || rc=$?
            ((rc == 0)) && break
            line=$(scontrol -o show node "$node" 2>/dev/null) || true
            # A node drained by an earlier, broken configuration stays drained until resumed.
            if ((rc == 2)) && [[ -z ${resumed[$node]:-} ]]; then
                log "node $node is $(node_field State "$line") ($(node_field Reason "$line")); resuming it"
                scontrol update NodeName="$node" State=RESUME 2>/dev/null || true
                resumed[$node]=1
            fi
            ((SECONDS < deadline)) ||
                fail "slurmd@$node" "node $node is $(node_field State "$line") (reason: $(node_field Reason "$line")) after ${TIMEOUT}s"
            ours_alive "slurmd@$node" || fail "slurmd@$node" "the process exited"
            sleep 0.1
        done
    done
}

sshd_ok() {
    ssh -F /dev/null -o BatchMode=yes -o IdentitiesOnly=yes -o StrictHostKeyChecking=yes \
        -o UserKnownHostsFile="$CLIENT/known_hosts" -o GlobalKnownHostsFile=/dev/null \
        -o ConnectTimeout=3 -i "$CLIENT/id_ed25519" -p "$SSH_PORT" "$TEST_USER@127.0.0.1" \
        squeue --noheader >/dev/null 2>>"$LOGS/sshd.client"
}
start_sshd() {
    mkdir -p /run/sshd
    chmod 755 /run/sshd
    /usr/sbin/sshd -t -f "$STATE/sshd/sshd_config" 2>>"$LOGS/sshd.stderr" ||
        fail sshd "its configuration is invalid ($STATE/sshd/sshd_config)"
    : >"$LOGS/sshd.client"
    launch sshd /usr/sbin/sshd -D -f "$STATE/sshd/sshd_config" -E "$LOGS/sshd.log"
}

# A second login node (issue 17: several login nodes, one cluster): another sshd of this machine
# on $SSH_PORT2, started in UTS and PID namespaces of its own, so its hostname is $LOGIN2_HOST and
# its ps sees only the processes started through it, as on another machine; files (the home, the
# ledger, run directories) and Slurm are shared, as on Snellius's int4–int6. Its config is the
# first sshd's with another port and pid file. The pid recorded is the sshd's own (unshare --fork
# ignores TERM): the sshd is its PID namespace's init, so when it ends, so does everything there.
prepare_login2() {
    sed -e "s|^Port .*|Port $SSH_PORT2|" -e "s|^PidFile .*|PidFile $STATE/run/sshd-login2.pid|" \
        "$STATE/sshd/sshd_config" >"$ETC/sshd_config_login2.new"
    if ! cmp -s "$ETC/sshd_config_login2.new" "$STATE/sshd/sshd_config_login2"; then
        mv "$ETC/sshd_config_login2.new" "$STATE/sshd/sshd_config_login2"
        touch "$ETC/restart.sshd@login2"
    else
        rm -f "$ETC/sshd_config_login2.new"
    fi
    local kh
    kh="[127.0.0.1]:$SSH_PORT2 $(cut -d' ' -f1,2 "$STATE/sshd/ssh_host_ed25519_key.pub")"
    [[ $(cat "$CLIENT/known_hosts_login2" 2>/dev/null) == "$kh" ]] ||
        echo "$kh" >"$CLIENT/known_hosts_login2"
}
login2_ok() {
    local name
    name=$(ssh -F /dev/null -o BatchMode=yes -o IdentitiesOnly=yes -o StrictHostKeyChecking=yes \
        -o UserKnownHostsFile="$CLIENT/known_hosts_login2" -o GlobalKnownHostsFile=/dev/null \
        -o ConnectTimeout=3 -i "$CLIENT/id_ed25519" -p "$SSH_PORT2" "$TEST_USER@127.0.0.1" \
        uname -n 2>>"$LOGS/sshd-login2.client") && [[ $name == "$LOGIN2_HOST" ]]
}
start_login2() {
    /usr/sbin/sshd -t -f "$STATE/sshd/sshd_config_login2" 2>>"$LOGS/sshd@login2.stderr" ||
        fail sshd@login2 "its configuration is invalid ($STATE/sshd/sshd_config_login2)"
    : >"$LOGS/sshd-login2.client"
    # shellcheck disable=SC2016  # $0 $1 $2 are for the inner shell
    launch sshd@login2 unshare --uts --pid --mount --fork --kill-child --mount-proc \
        sh -c 'hostname "$0" && exec /usr/sbin/sshd -D -f "$1" -E "$2"' \
        "$LOGIN2_HOST" "$STATE/sshd/sshd_config_login2" "$LOGS/sshd-login2.log"
    local outer child="" i
    outer=$(our_pid sshd@login2)
    for ((i = 0; i < 100; i++)); do
        child=$(pgrep -P "$outer" -x sshd) && break
        sleep 0.05
    done
    [[ -n $child ]] || fail sshd@login2 "no sshd started under unshare (pid $outer)"
    echo "$child" >"$PIDS/sshd@login2.pid"
}
# Like `ensure`, but an sshd not started here (the first one) is never taken for the second.
ensure_login2() {
    local i
    if ours_alive sshd@login2 && [[ ! -e $ETC/restart.sshd@login2 ]]; then
        for ((i = 0; i < 30; i++)); do
            login2_ok && return 0
            sleep 0.1
        done
        log "the second login node (pid $(our_pid sshd@login2)) is not answering; restarting it"
    fi
    stop_ours sshd@login2
    log "starting sshd@login2 (sshd on port $SSH_PORT2 with hostname $LOGIN2_HOST)"
    start_login2
    wait_ready sshd@login2 login2_ok
    rm -f "$ETC/restart.sshd@login2"
}

# A trivial job as the test user reaches COMPLETED in sacct: scheduler, slurmd and accounting work.
check_job() {
    local id state deadline=$((SECONDS + TIMEOUT)) out
    out=$(cd "$SCRATCH" && runuser -u "$TEST_USER" -- sbatch --parsable --job-name=hpcjob-start-check \
        --partition=rome --time=1 --output=/dev/null --wrap=true 2>&1) ||
        fail slurmctld "sbatch as $TEST_USER failed: $out"
    id=${out%%;*}
    while :; do
        state=$(runuser -u "$TEST_USER" -- sacct -n -X -P -j "$id" -o State 2>/dev/null | head -n 1) || true
        [[ $state == COMPLETED ]] && return 0
        [[ $state =~ ^(FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY) ]] &&
            fail slurmd@tcn1 "the check job $id ended $state"
        ((SECONDS < deadline)) ||
            fail slurmdbd "the check job $id is '${state:-not in sacct}' after ${TIMEOUT}s (squeue: $(squeue -h -j "$id" -o '%T %r' 2>&1))"
        sleep 0.2
    done
}

write_env() {
    local version
    version=$(sinfo --version | awk '{print $2}')
    cat >"$STATE/cluster.env.new" <<EOF
# Written by tests/cluster/start.sh; source it or read KEY=VALUE lines.
HPCJOB_TEST_CLUSTER_DIR=$STATE
HPCJOB_TEST_CLUSTER_NAME=$CLUSTER
HPCJOB_TEST_SLURM_VERSION=$version
HPCJOB_TEST_NODES=$(IFS=,; echo "${NODES[*]}")
HPCJOB_TEST_PARTITIONS=$PARTITIONS
HPCJOB_TEST_DEFAULT_PARTITION=rome
HPCJOB_TEST_GPU_PARTITIONS=gpu_a100,gpu_h100,gpu_multi
HPCJOB_TEST_USER=$TEST_USER
HPCJOB_TEST_ACCOUNT=$TEST_ACCOUNT
HPCJOB_TEST_COURSE_ACCOUNT=$COURSE_ACCOUNT
HPCJOB_TEST_OTHER_ACCOUNT=$OTHER_ACCOUNT
HPCJOB_TEST_SCRATCH=$SCRATCH
HPCJOB_TEST_RUN_AS=$HERE/run-as-test-user.sh
HPCJOB_TEST_SSH_HOST=127.0.0.1
HPCJOB_TEST_SSH_PORT=$SSH_PORT
HPCJOB_TEST_SSH_KEY=$CLIENT/id_ed25519
HPCJOB_TEST_SSH_KEY_ENCRYPTED=$CLIENT/id_ed25519_encrypted
HPCJOB_TEST_SSH_KEY_PASSPHRASE_FILE=$CLIENT/passphrase
HPCJOB_TEST_KNOWN_HOSTS=$CLIENT/known_hosts
HPCJOB_TEST_SSH_HOST_KEY_PUB=$STATE/sshd/ssh_host_ed25519_key.pub
HPCJOB_TEST_SSH_PORT2=$SSH_PORT2
HPCJOB_TEST_SSH_HOSTNAME2=$LOGIN2_HOST
HPCJOB_TEST_KNOWN_HOSTS2=$CLIENT/known_hosts_login2
EOF
    mv "$STATE/cluster.env.new" "$STATE/cluster.env"
}

# ---------------------------------------------------------------- main
# One start.sh/stop.sh at a time (fd 9 is closed in every daemon, see launch).
exec 9>>"/run/hpcjob-test-cluster.lock"
flock -w 300 9 || { log "ERROR: another start.sh/stop.sh holds /run/hpcjob-test-cluster.lock"; exit 1; }
install_packages
prepare_files
prepare_user

install -d -m 755 -o slurm -g slurm "$LOGS"
ensure munged munge_ok start_munged shared
ensure mariadbd mariadb_ok start_mariadbd shared
prepare_database
ensure slurmdbd slurmdbd_ok start_slurmdbd
prepare_accounts
prepare_course_accounts
ensure slurmctld slurmctld_ok start_slurmctld
prepare_course_partitions
# A fresh controller gets fresh slurmds, so nodes register now instead of at the next ping.
if [[ " ${STARTED[*]} " == *" slurmctld "* ]]; then
    for node in "${NODES[@]}"; do touch "$ETC/restart.slurmd@$node"; done
fi
for node in "${NODES[@]}"; do
    ensure "slurmd@$node" slurmd_ok start_slurmd
done
wait_nodes
ensure sshd sshd_ok start_sshd
prepare_login2
ensure_login2
# The encrypted key really opens with the stored passphrase.
ssh-keygen -y -P "$(cat "$CLIENT/passphrase")" -f "$CLIENT/id_ed25519_encrypted" >/dev/null ||
    die "the encrypted client key does not open with $CLIENT/passphrase"
if ((${#STARTED[@]} > 0 || CHECK_JOB == 1)); then
    check_job
fi
write_env
elapsed_ms=$((($(date +%s%N) - START_NS) / 1000000))
if ((${#STARTED[@]} > 0)); then
    log "up in ${elapsed_ms} ms (started: ${STARTED[*]}); env: $STATE/cluster.env"
else
    log "already up, verified in ${elapsed_ms} ms; env: $STATE/cluster.env"
fi
