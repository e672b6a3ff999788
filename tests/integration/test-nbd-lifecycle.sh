#!/bin/bash
# The life of a kiln-nbd daemon: SIGTERM (and SIGINT) with a client still
# connected flushes, ends the connection, exits 0 and removes the socket
# and the pidfile; writes no FLUSH covered are there after a restart;
# --tcp on a free port; the daemon forking into the background; exports
# created after the daemon started; --export limits what is served;
# --exit-with-parent; `kiln snapshot create` without the daemon on a volume
# nobody serves, and through a daemon that is stopped; bad command lines
# are refused with a message.
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/nbd-functions.sh"
requires_libnbd_python
requires openssl cmp nbdcopy nbdinfo

new_store
make_random "$TMPDIR/img.raw" 3M life
vol=$(kiln volume import "$TMPDIR/img.raw")
blank=$(kiln volume create --size 4M)
export SYNC=$TMPDIR/sync
mkdir "$SYNC"

# ---- SIGTERM / SIGINT with a client connected ----------------------------
cat >"$TMPDIR/holder.py" <<'EOF'
# holder.py URI SEED: write 16 chunks (no FLUSH), say so, then keep the
# connection until the server ends it; exit 0 only if it did.
import os
import random
import sys
import time

import nbd

h = nbd.NBD()
h.connect_uri(sys.argv[1])
for i in range(16):
    h.pwrite(random.Random("%s%d" % (sys.argv[2], i)).randbytes(65536), (8 + i) * 65536)
open(os.path.join(os.environ["SYNC"], "written-" + sys.argv[2]), "w").close()
for _ in range(150):
    try:
        h.pread(512, 0)
    except nbd.Error as e:
        print("the server ended the connection: %s" % e.string)
        sys.exit(0)
    time.sleep(0.1)
sys.exit("the connection outlived the server's shutdown by 15 s")
EOF
check_chunks() { # URI SEED: chunks 8-23 hold what holder.py SEED wrote
	nbdsh -u "$1" -c "
import random, sys
bad = [i for i in range(16) if h.pread(65536, (8 + i) * 65536) != random.Random('$2%d' % i).randbytes(65536)]
if bad:
    sys.exit('chunks %s written before the daemon stopped are lost' % [8 + i for i in bad])
"
}

# idle.py SOCK TAG: a client that stops in the middle of the handshake
cat >"$TMPDIR/idle.py" <<'EOF'
import os
import socket
import sys

s = socket.socket(socket.AF_UNIX)
s.settimeout(15)
s.connect(sys.argv[1])
s.recv(18)
s.sendall(b"\0\0\0\1")
open(os.path.join(os.environ["SYNC"], "idle-" + sys.argv[2]), "w").close()
try:
    sys.exit(0 if s.recv(1) == b"" else "the server sent something")
except socket.timeout:
    sys.exit("a client in the handshake outlived the server's shutdown by 15 s")
EOF

for sig in TERM INT; do
	start_nbd
	nbdsh_run "$TMPDIR/holder.py" "$(nbd_uri "$blank")" "$sig" >"$TMPDIR/holder.out" 2>&1 &
	pid_h=$!
	/usr/bin/python3 "$TMPDIR/idle.py" "$NBD_SOCK" "$sig" >"$TMPDIR/idle.out" 2>&1 &
	pid_i=$!
	cleanup_fn "kill $pid_h $pid_i 2>/dev/null"
	wait_until 30 test -e "$SYNC/written-$sig" || fail "the client did not write: $(cat "$TMPDIR/holder.out")"
	wait_until 30 test -e "$SYNC/idle-$sig" || fail "the idle client did not connect: $(cat "$TMPDIR/idle.out")"
	sock=$NBD_SOCK pidfile=$NBD_PIDFILE
	signal_nbd $sig
	[ ! -e "$sock" ] || fail "the socket $sock is left after SIG$sig"
	[ ! -e "$pidfile" ] || fail "the pidfile $pidfile is left after SIG$sig"
	rc=0
	wait $pid_h || rc=$?
	cat "$TMPDIR/holder.out"
	assert_eq "$rc" 0 "the client's view of SIG$sig"
	rc=0
	wait $pid_i || rc=$?
	assert_eq "$rc" 0 "the idle client's view of SIG$sig: $(cat "$TMPDIR/idle.out")"
	assert_eq "$(vol_field "$blank" State)" available "State of $blank after SIG$sig"
	# the daemon flushed on the way out: the tool and a new daemon see the data
	start_nbd
	check_chunks "$(nbd_uri "$blank")" "$sig"
	stop_nbd
done

# ---- --tcp on a free port, and without a host ---------------------------
port=$(free_tcp_port)
start_nbd_tcp "127.0.0.1:$port"
nbdinfo --can connect "$(nbd_tcp_uri "$vol" "$port")"
nbdcopy "$(nbd_tcp_uri "$vol" "$port")" "$TMPDIR/tcp.raw"
cmp "$TMPDIR/tcp.raw" "$TMPDIR/img.raw" || fail "nbdcopy over TCP reads wrong bytes"
nbdsh -c "h.set_export_name('$vol')" -c "h.connect_tcp('127.0.0.1', '$port')" \
	-c "assert h.get_size() == $((3 * 1024 * 1024)), h.get_size()"
nbdsh -u "$(nbd_tcp_uri "$blank" "$port")" -c 'h.pwrite(b"T" * 4096, 65536); h.flush()'
stop_nbd
port=$(free_tcp_port)
start_nbd_tcp "$port"
nbdsh -u "$(nbd_tcp_uri "$blank" "$port")" -c 'assert h.pread(4096, 65536) == b"T" * 4096, "TCP write lost"'
stop_nbd

# ---- exports made after the daemon started -------------------------------
start_nbd
late=$(kiln volume create --size 2M)
snap=$(kiln snapshot create "$vol" --description late)
nbdinfo --list "$(nbd_uri "")" >"$TMPDIR/list.txt"
grep -q "^export=\"$late\":" "$TMPDIR/list.txt" || fail "a volume made after the daemon started is not listed"
grep -q "^export=\"$snap\":" "$TMPDIR/list.txt" || fail "a snapshot made after the daemon started is not listed"
nbdcopy "$(nbd_uri "$snap")" "$TMPDIR/late-snap.raw"
cmp "$TMPDIR/late-snap.raw" "$TMPDIR/img.raw" || fail "the late snapshot $snap reads wrong"
nbdsh -u "$(nbd_uri "$late")" -c 'h.pwrite(b"L" * 512, 0)' -c 'assert h.pread(512, 0) == b"L" * 512'

# ---- kiln snapshot create, no daemon involved, on a volume nobody serves --
# The daemon runs and serves the region; once its last client of $late
# has gone it lets go of the volume, and kiln opens it itself.
head -c 512 /dev/zero | tr '\0' L >"$TMPDIR/late.raw"
truncate -s 2M "$TMPDIR/late.raw"
idle() { [ "$(vol_field "$late" State)" = available ]; }
wait_until 10 idle || fail "the daemon still holds $late after its client left"
s_late=$(kiln snapshot create "$late")
cmp_snapshot "$s_late" "$TMPDIR/late.raw"
assert_eq "$(vol_field "$late" State)" available "State of $late after the snapshot"
stop_nbd
s_vol=$(kiln snapshot create "$vol")
cmp_snapshot "$s_vol" "$TMPDIR/img.raw"

# ---- --export limits what is served --------------------------------------
start_nbd --export "$vol" --export "$snap"
nbdinfo --list --json "$(nbd_uri "")" >"$TMPDIR/only.json"
assert_eq "$(json "$TMPDIR/only.json" "' '.join(sorted(e['export-name'] for e in j['exports']))")" \
	"$(printf '%s\n' "$vol" "$snap" | sort | tr '\n' ' ' | sed 's/ $//')" "exports listed with --export"
rc=0
nbdinfo "$(nbd_uri "$blank")" >/dev/null 2>"$TMPDIR/err" || rc=$?
[ "$rc" -ne 0 ] || fail "a volume not named by --export is served"
grep -q "$blank" "$TMPDIR/err" || fail "refusing $blank: the message does not name it: $(cat "$TMPDIR/err")"
stop_nbd
rc=0
"$KILN_NBD" --unix "$TMPDIR/x.sock" --foreground --export vol-0123456789abcdef0 2>"$TMPDIR/err" || rc=$?
assert_eq "$rc" 1 "exit status with --export of a missing volume"
grep -q "vol-0123456789abcdef0" "$TMPDIR/err" || fail "--export of a missing volume: $(cat "$TMPDIR/err")"

# ---- the daemon forks into the background ---------------------------------
sock=$TMPDIR/bg.sock pidfile=$TMPDIR/bg.pid
"$KILN_NBD" --unix "$sock" --pidfile "$pidfile" 2>"$TMPDIR/bg.err" ||
	fail "kiln-nbd (daemon mode) exited $?: $(cat "$TMPDIR/bg.err")"
# the parent has exited 0; the pidfile names the daemon, which is serving
wait_until 30 test -s "$pidfile" || fail "no pidfile from the background daemon"
bgpid=$(cat "$pidfile")
cleanup_fn "kill $bgpid 2>/dev/null"
nbd_alive "$bgpid" || fail "the background daemon $bgpid is not running"
[ "$(ps -o ppid= -p "$bgpid" | tr -d ' ')" != $$ ] || fail "the daemon did not detach from us"
nbdcopy "$(nbd_uri "$vol" "$sock")" "$TMPDIR/bg.raw"
cmp "$TMPDIR/bg.raw" "$TMPDIR/img.raw" || fail "the background daemon serves wrong bytes"
kill -TERM "$bgpid"
wait_until 10 eval "! nbd_alive $bgpid" || fail "the background daemon still runs 10 s after SIGTERM"
[ ! -e "$sock" ] && [ ! -e "$pidfile" ] || fail "the background daemon left its socket or pidfile"

# ---- --exit-with-parent ----------------------------------------------------
# The parent prints the daemon's pid (the pidfile may be gone by the time
# we look: the daemon removes it on the way out).
sock=$TMPDIR/ewp.sock pidfile=$TMPDIR/ewp.pid
ewp=$(/usr/bin/python3 - "$KILN_NBD" "$sock" "$pidfile" <<'EOF'
import os
import subprocess
import sys
import time

p = subprocess.Popen([sys.argv[1], "--unix", sys.argv[2], "--pidfile", sys.argv[3],
                      "--foreground", "--exit-with-parent"])
for _ in range(300):
    if os.path.exists(sys.argv[3]):
        break
    time.sleep(0.1)
else:
    sys.exit("no pidfile")
print(p.pid, flush=True)
os._exit(0)
EOF
)
echo "the parent of kiln-nbd $ewp (--foreground --exit-with-parent) has exited"
cleanup_fn "kill $ewp 2>/dev/null"
wait_until 10 eval "! nbd_alive $ewp" || fail "kiln-nbd --exit-with-parent outlived its parent by 10 s"
[ ! -e "$sock" ] && [ ! -e "$pidfile" ] || fail "kiln-nbd --exit-with-parent left its socket or pidfile"
# The same without --foreground: whoever started kiln-nbd is its parent
# as far as the user is concerned (nbdkit: --exit-with-parent implies
# --foreground). Checked, not asserted, so the rest of the test runs.
sock=$TMPDIR/ewp2.sock pidfile=$TMPDIR/ewp2.pid
ewp=$(/usr/bin/python3 - "$KILN_NBD" "$sock" "$pidfile" <<'EOF'
import os
import subprocess
import sys
import time

p = subprocess.Popen([sys.argv[1], "--unix", sys.argv[2], "--pidfile", sys.argv[3], "--exit-with-parent"])
for _ in range(300):
    if os.path.exists(sys.argv[3]) and open(sys.argv[3]).read().strip():
        break
    time.sleep(0.1)
else:
    sys.exit("no pidfile")
print(open(sys.argv[3]).read().strip(), flush=True)
os._exit(0)
EOF
)
echo "the process that started kiln-nbd $ewp (--exit-with-parent, forking) has exited"
cleanup_fn "kill $ewp 2>/dev/null"
gone=yes
wait_until 10 eval "! nbd_alive $ewp" || gone="no, pid $ewp runs on (parent $(ps -o ppid= -p "$ewp" | tr -d ' '))"
check_eq "$gone" yes "kiln-nbd --exit-with-parent (without --foreground) exited with the process that started it"

# ---- snapshots through the control socket: a silent client, a closing export ----
ctl=$KILN_STORE/regions/us-east-1/volumes/$blank.ctl
# hold_export [VOL [SECONDS]]: an NBD client keeps VOL ($blank) exported
# (in the background, pid in $holder) for SECONDS (30) or until killed;
# returns once its control socket is there
hold_export() {
	local v=${1:-$blank}
	/usr/bin/python3 -c 'import nbd, sys, time
h = nbd.NBD()
h.connect_uri(sys.argv[1])
time.sleep(int(sys.argv[2]))' "$(nbd_uri "$v")" "${2:-30}" &
	holder=$!
	cleanup_fn "kill $holder 2>/dev/null"
	wait_until 10 test -S "$KILN_STORE/regions/us-east-1/volumes/$v.ctl" ||
		fail "no control socket while $v is exported"
}
# say_nothing: a client connects to the control socket and sends nothing
say_nothing() {
	/usr/bin/python3 -c 'import socket, sys, time
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
time.sleep(30)' "$ctl" &
	cleanup_fn "kill $! 2>/dev/null"
	sleep 0.2
}
# A client that connects to a volume's control socket and says nothing
# holds up neither a snapshot of that volume nor the daemon's shutdown.
start_nbd
hold_export
say_nothing
start=$(date +%s)
timeout 20 "$KILN" snapshot create "$blank" >/dev/null || fail "snapshot create with a silent control client: exit $?"
[ $(($(date +%s) - start)) -le 10 ] || fail "snapshot create waited $(($(date +%s) - start)) s for a silent control client"
say_nothing
stop_nbd                                # fails unless it exits within 10 s
kill "$holder"
# An export that is closing answers nobody on its control socket (here a
# stale socket stands in for it); a moment later the volume is free. The
# snapshot tries both again rather than call the volume in use.
start_nbd
hold_export
rm -f "$ctl"
/usr/bin/python3 -c 'import socket, sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])' "$ctl"   # nobody listens
(sleep 0.5; kill "$holder") &
"$KILN" snapshot create "$blank" >/dev/null 2>"$TMPDIR/closing.err" ||
	fail "snapshot create while the export closes: $(cat "$TMPDIR/closing.err")"
# and a volume that stays busy with nobody answering is in use, after a while
hold_export
rm -f "$ctl"
expect_fail "$KILN" snapshot create "$blank"
[[ $ERR == *"is in use"* ]] || fail "snapshot of a busy volume nobody answers for: $ERR"
kill "$holder"
stop_nbd

# ---- a stopped daemon -----------------------------------------------------
# kiln gives up on a daemon that has stopped answering (SIGSTOP here)
# after 10 s of silence, says so, and the daemon, resumed, does not take
# the snapshot nobody waits for any more. A daemon at work says so every
# second, so a snapshot that takes long is not given up on.
start_nbd
hold_export
before=$(snapshot_ids | sort)
kill -STOP "$NBD_PID"
start=$(date +%s)
expect_fail timeout 60 "$KILN" snapshot create "$blank"
took=$(($(date +%s) - start))
kill -CONT "$NBD_PID"
[[ $ERR == *"stopped answering"* ]] || fail "snapshot through a stopped daemon: $ERR"
((took >= 9 && took <= 30)) || fail "snapshot through a stopped daemon gave up after $took s, not about 10"
sleep 1.5                               # the resumed daemon reads the abandoned request
assert_eq "$(snapshot_ids | sort)" "$before" "snapshots after a request abandoned while the daemon was stopped"
snap=$("$KILN" snapshot create "$blank") || fail "snapshot create once the daemon resumed"
assert_id snap "$snap"
kill "$holder"
stop_nbd
# A daemon whose snapshots take 11 s each (stalled, as behind a slow disk)
# is still at work, and says so: kiln waits for it, also with a request
# that waits behind another's snapshot before its own begins (22 s).
export KILN_STALL_POINT=snapshot:capture:11
start_nbd
unset KILN_STALL_POINT
hold_export "$vol" 40
holder2=$holder
hold_export
start=$(date +%s)
timeout 60 "$KILN" snapshot create "$vol" >"$TMPDIR/first.snap" 2>&1 &
first=$!
sleep 0.5
snap=$(timeout 60 "$KILN" snapshot create "$blank") || fail "a snapshot waiting behind another's: exit $?"
assert_id snap "$snap"
wait $first || fail "a slow snapshot through the daemon: $(cat "$TMPDIR/first.snap")"
assert_id snap "$(cat "$TMPDIR/first.snap")"
(($(date +%s) - start >= 21)) || fail "the daemon's snapshots were not stalled: the test tests nothing"
kill "$holder" "$holder2"
stop_nbd

# SIGTERM with four snapshots asked for (3 s each): the one at work
# finishes, the others are refused (their clients try again) instead of
# served one after another, so the daemon is gone in well under 10 s. A
# client that sends its request a byte every 1.5 s holds nothing up either.
export KILN_STALL_POINT=snapshot:capture:3
start_nbd
unset KILN_STALL_POINT
hold_export
/usr/bin/python3 -c 'import socket, sys, time
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
for c in b"SNAPSHOT 123456789012 \n":
    s.send(bytes([c]))
    time.sleep(1.5)' "$ctl" 2>/dev/null &
cleanup_fn "kill $! 2>/dev/null"
pids=()
for i in 1 2 3 4; do
	timeout 60 "$KILN" snapshot create "$blank" >"$TMPDIR/term$i.out" 2>&1 &
	pids+=($!)
done
sleep 1
start=$(date +%s)
stop_nbd                                # fails unless it exits within 10 s
took=$(($(date +%s) - start))
((took <= 5)) || fail "SIGTERM with snapshots asked for took $took s"
ok=0
for i in 1 2 3 4; do
	if wait "${pids[$((i - 1))]}"; then
		ok=$((ok + 1))
	else
		grep -q "is in use" "$TMPDIR/term$i.out" || fail "snapshot $i beside SIGTERM: $(cat "$TMPDIR/term$i.out")"
	fi
done
((ok >= 1)) || fail "not even the snapshot at work when SIGTERM came was taken"
kill "$holder" 2>/dev/null

# A daemon stopped in the middle of a snapshot: kiln gives up and says so,
# and the daemon, resumed, finishes the snapshot but cannot tell anyone:
# it deletes it, since its client was told it failed.
export KILN_STALL_POINT=snapshot:capture:3
start_nbd
unset KILN_STALL_POINT
hold_export
before=$(snapshot_ids | sort)
(sleep 1; kill -STOP "$NBD_PID") &
expect_fail timeout 60 "$KILN" snapshot create "$blank"
[[ $ERR == *"stopped answering"* ]] || fail "snapshot through a daemon stopped mid-way: $ERR"
kill -CONT "$NBD_PID"
sleep 4                                 # the rest of its stall, and the snapshot
assert_eq "$(snapshot_ids | sort)" "$before" "snapshots after the daemon, resumed, could not answer"
kill "$holder"
stop_nbd

# ---- a socket path that is taken ---------------------------------------------
# A live server's socket is never taken over; a stale one (its server
# killed) is replaced; a file that is not a socket is never removed.
start_nbd
first=$NBD_PID taken=$NBD_SOCK
expect_fail "$KILN_NBD" --unix "$taken" --foreground
[[ $ERR == *"another server is listening there"* ]] || fail "a second daemon on $taken: $ERR"
nbdcopy "$(nbd_uri "$vol" "$taken")" "$TMPDIR/taken.raw"
cmp "$TMPDIR/taken.raw" "$TMPDIR/img.raw" || fail "the first daemon no longer serves $taken"
kill9_nbd "$first"
[ -S "$taken" ] || fail "SIGKILL left no stale socket to test with"
NBD_SOCK_AT=$taken start_nbd
nbdcopy "$(nbd_uri "$vol" "$taken")" "$TMPDIR/taken.raw"
cmp "$TMPDIR/taken.raw" "$TMPDIR/img.raw" || fail "a daemon on the stale socket $taken reads wrong bytes"
stop_nbd
echo "keep me" >"$TMPDIR/not-a-socket"
expect_fail "$KILN_NBD" --unix "$TMPDIR/not-a-socket" --foreground
[[ $ERR == *"not a socket"* ]] || fail "--unix on a regular file: $ERR"
assert_eq "$(cat "$TMPDIR/not-a-socket")" "keep me" "the file given as --unix"

# ---- bad command lines ------------------------------------------------------
expect_fail "$KILN_NBD"
[[ $ERR == *"choose exactly one"* ]] || fail "no listening mode: $ERR"
expect_fail "$KILN_NBD" --unix "$TMPDIR/y.sock" --tcp 1234
for spec in 99999 70000 127.0.0.1:65536 0 abc 12ab -1 127.0.0.1: ''; do
	expect_fail "$KILN_NBD" --tcp "$spec" --foreground
	[[ $ERR == *"the port must be a number from 1 to 65535"* ]] || fail "--tcp '$spec': $ERR"
done
expect_fail "$KILN_NBD" --unix "$TMPDIR/y.sock" --export bogus
[[ $ERR == *bogus* ]] || fail "--export bogus: $ERR"
expect_fail "$KILN_NBD" --unix "$TMPDIR/y.sock" --store "$TMPDIR/nostore" --foreground
[[ $ERR == *"not a kiln store"* ]] || fail "a missing store: $ERR"
expect_fail "$KILN_NBD" --unix "$TMPDIR/y.sock" --threads 0
expect_fail "$KILN_NBD" --unix "$TMPDIR/y.sock" extra-argument
"$KILN_NBD" --help | grep -q -- "--socket-activation" || fail "--help"
[[ $("$KILN_NBD" --version) =~ ^kiln-nbd\ [0-9]+\.[0-9]+\.[0-9]+$ ]] || fail "--version: $("$KILN_NBD" --version)"
# the manual page names every option --help does
man=$(dirname "$0")/../../docs/kiln-nbd.1
for opt in $("$KILN_NBD" --help | grep -o -- '--[a-z][a-z-]*' | sort -u); do
	grep -qF -- "$(sed 's/-/\\-/g' <<<"$opt")" "$man" || fail "$opt is not in docs/kiln-nbd.1"
done
finish
