#!/bin/bash
# Several connections to one export (the server advertises CAN_MULTI_CONN):
#  - two nbdsh processes write disjoint ranges and each reads the other's;
#  - a FLUSH on one connection makes the other's answered writes durable:
#    kill -9 of the daemon right after it, restart, the data is there;
#  - an online snapshot (`kiln snapshot create` while the daemon serves the
#    volume with --export, so it goes over the control socket) taken while
#    a client writes a counter pattern non-stop is one point in time: every
#    write answered before `kiln snapshot create` started is in it, none
#    sent after it returned is, and no block is torn;
#    The daemon captures quiet dirty chunks ahead every 10 ms meanwhile,
#    and the snapshots must take some of those records;
#  - `kiln volume delete` of the exported volume is refused.
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/nbd-functions.sh"
requires_libnbd_python
requires cmp

new_store
vol=$(kiln volume create --size 16M)
start_nbd --export "$vol" -v
export SOCK=$NBD_SOCK VOL=$vol SYNC=$TMPDIR/sync
mkdir "$SYNC"

# ---- two clients, disjoint ranges --------------------------------------
cat >"$TMPDIR/client.py" <<'EOF'
# client.py ROLE: A writes chunks 0-31, B chunks 32-63; each then checks the
# other's. A then writes chunks 64-79 (F) and B flushes; A writes chunks
# 80-95 (U) after the flush. Both stay connected until the test says stop.
import os
import random
import sys
import time

import nbd

role = sys.argv[1]
SYNC, CS = os.environ["SYNC"], 65536


def pattern(name, n):
    return random.Random(name).randbytes(n)


def touch(name):
    open(os.path.join(SYNC, name), "w").close()


def wait_for(name, secs=30):
    for _ in range(secs * 100):
        if os.path.exists(os.path.join(SYNC, name)):
            return
        time.sleep(0.01)
    sys.exit("%s: timed out waiting for %s" % (role, name))


h = nbd.NBD()
h.set_export_name(os.environ["VOL"])
h.connect_unix(os.environ["SOCK"])
assert h.can_multi_conn(), "the server does not advertise multi-conn"
mine, other = ("A", "B") if role == "A" else ("B", "A")
base = {"A": 0, "B": 32 * CS}
for i in range(32):
    h.pwrite(pattern("%s%d" % (mine, i), CS), base[mine] + i * CS)
touch("wrote-" + mine)
wait_for("wrote-" + other)
for i in range(32):
    got = h.pread(CS, base[other] + i * CS)
    if bytes(got) != pattern("%s%d" % (other, i), CS):
        sys.exit("%s: chunk %d of %s reads wrong on this connection" % (role, i, other))
print("%s: read %s's 32 chunks correctly" % (role, other))

if role == "A":
    for i in range(16):
        h.pwrite(pattern("F%d" % i, CS), (64 + i) * CS)
    touch("wrote-F")
    wait_for("flushed")
    for i in range(16):
        h.pwrite(pattern("U%d" % i, CS), (80 + i) * CS)
    touch("wrote-U")
else:
    wait_for("wrote-F")
    h.flush()
    touch("flushed")
# Stay connected: a disconnect flushes the volume, which would hide what
# the FLUSH above did. The daemon is killed under us.
wait_for("stop", 60)
print("%s: done" % role)
EOF

nbdsh_run "$TMPDIR/client.py" A >"$TMPDIR/A.out" 2>&1 &
pid_a=$!
nbdsh_run "$TMPDIR/client.py" B >"$TMPDIR/B.out" 2>&1 &
pid_b=$!
cleanup_fn "kill $pid_a $pid_b 2>/dev/null"
wait_until 30 test -e "$SYNC/wrote-U" || { cat "$TMPDIR"/[AB].out; fail "the clients did not get to the flush"; }
# Both clients are connected and idle; A's F chunks were flushed by B's
# FLUSH, its U chunks by nobody.
kill9_nbd
touch "$SYNC/stop"
rc=0
wait $pid_a || rc=$?
cat "$TMPDIR/A.out"
assert_eq "$rc" 0 "exit status of client A"
wait $pid_b || rc=$?
cat "$TMPDIR/B.out"
assert_eq "$rc" 0 "exit status of client B"

# Captures ahead of the snapshot every 10 ms race the writer: the records
# they keep must be taken only for chunks no write touched since.
start_nbd --export "$vol" -v --precapture-interval 10
SOCK=$NBD_SOCK
nbdsh -u "$(nbd_uri "$vol")" -c '
import random, sys
CS = 65536
p = lambda name: random.Random(name).randbytes(CS)
bad = [i for i in range(32) if h.pread(CS, i * CS) != p("A%d" % i)]
bad += [32 + i for i in range(32) if h.pread(CS, (32 + i) * CS) != p("B%d" % i)]
bad += [64 + i for i in range(16) if h.pread(CS, (64 + i) * CS) != p("F%d" % i)]
if bad:
    sys.exit("after kill -9: chunks %s lost although a FLUSH on the other connection was answered" % bad)
lost = sum(h.pread(CS, (80 + i) * CS) != p("U%d" % i) for i in range(16))
print("after kill -9: every flushed chunk is there; %d of 16 unflushed chunks were lost" % lost)
'

# ---- an online snapshot while a client writes ---------------------------
# The writer writes 4 KiB blocks k = 1, 2, ... at block k % 256 of chunks
# 128-143, each filled with the 8-byte k. Before sending write k it looks
# for returned-R (snapshot round R has returned); after its answer, for
# started-R (round R has started). Rounds 0-2.
cat >"$TMPDIR/writer.py" <<'EOF'
import json
import os
import struct
import time

import nbd

SYNC, NB, BS, BASE, ROUNDS = os.environ["SYNC"], 256, 4096, 128 * 65536, 3
h = nbd.NBD()
h.set_export_name(os.environ["VOL"])
h.connect_unix(os.environ["SOCK"])
log = []
k = 0
deadline = time.monotonic() + 60
while not os.path.exists(os.path.join(SYNC, "stop-writer")) and time.monotonic() < deadline:
    k += 1
    after = [os.path.exists(os.path.join(SYNC, "returned-%d" % r)) for r in range(ROUNDS)]
    h.pwrite(struct.pack("<Q", k) * (BS // 8), BASE + (k % NB) * BS)
    before = [not os.path.exists(os.path.join(SYNC, "started-%d" % r)) for r in range(ROUNDS)]
    log.append((k, before, after))
    if k % 100 == 0:
        with open(os.path.join(SYNC, "progress.tmp"), "w") as f:
            f.write(str(k))
        os.rename(os.path.join(SYNC, "progress.tmp"), os.path.join(SYNC, "progress"))
h.shutdown()
json.dump(log, open(os.path.join(SYNC, "writer.json"), "w"))
EOF

progress() { cat "$SYNC/progress" 2>/dev/null || echo 0; }
at_least() { # N: the writer is past write N (fail at once if it died)
	[ "$(progress)" -lt "$1" ] || return 0
	kill -0 "$pid_w" 2>/dev/null || fail "the writer died: $(cat "$TMPDIR/writer.out")"
	return 1
}
nbdsh_run "$TMPDIR/writer.py" >"$TMPDIR/writer.out" 2>&1 &
pid_w=$!
cleanup_fn "kill $pid_w 2>/dev/null"
snaps=()
for r in 0 1 2; do
	p=$(progress)
	wait_until 30 at_least $((p + 300)) || fail "the writer makes no progress: $(cat "$TMPDIR/writer.out")"
	# the daemon holds the volume: the snapshot can only go through it
	assert_eq "$(vol_field "$vol" State)" in-use "State of $vol before snapshot $r"
	touch "$SYNC/started-$r"
	snaps[r]=$(kiln snapshot create "$vol" --description "online $r")
	touch "$SYNC/returned-$r"
	assert_id snap "${snaps[r]}"
	echo "round $r: ${snaps[r]} taken with the writer at write $p+"
done
p=$(progress)
wait_until 30 at_least $((p + 300)) || fail "the writer stopped: $(cat "$TMPDIR/writer.out")"
touch "$SYNC/stop-writer"
rc=0
wait $pid_w || rc=$?
cat "$TMPDIR/writer.out"
assert_eq "$rc" 0 "exit status of the writer"

for r in 0 1 2; do
	kiln snapshot export "${snaps[r]}" "$TMPDIR/snap-$r.raw"
done
nbdsh -u "$(nbd_uri "$vol")" -c "open('$TMPDIR/final.raw', 'wb').write(h.pread(h.get_size(), 0))"
/usr/bin/python3 - "$SYNC/writer.json" "$TMPDIR" <<'EOF'
import json
import struct
import sys

NB, BS, BASE = 256, 4096, 128 * 65536
log = json.load(open(sys.argv[1]))
n = len(log)
assert [e[0] for e in log] == list(range(1, n + 1))


def blocks(path):
    data = open(path, "rb").read()[BASE:BASE + NB * BS]
    out = []
    for b in range(NB):
        blk = data[b * BS:(b + 1) * BS]
        v = struct.unpack("<Q", blk[:8])[0]
        if blk != blk[:8] * (BS // 8):
            sys.exit("block %d is torn: not one counter repeated" % b)
        if v and (v > n or v % NB != b):
            sys.exit("block %d holds %d, which no write put there" % (b, v))
        out.append(v)
    return out


def state(cut):
    """Each block as of the first cut writes."""
    return [max([k for k in range(b, cut + 1, NB) if k > 0] or [0]) for b in range(NB)]


for r in range(3):
    v = blocks("%s/snap-%d.raw" % (sys.argv[2], r))
    cut = max(v)
    if v != state(cut):
        bad = [b for b in range(NB) if v[b] != state(cut)[b]]
        sys.exit("snapshot %d is no point in time: with write %d in it, blocks %s disagree"
                 % (r, cut, bad[:10]))
    answered = [k for k, before, _ in log if before[r]]
    late = [k for k, _, after in log if after[r]]
    if not answered or not late:
        sys.exit("round %d: no write on one side of the snapshot" % r)
    if cut < max(answered):
        sys.exit("snapshot %d misses write %d, answered before kiln snapshot create started"
                 " (it holds writes up to %d)" % (r, max(answered), cut))
    if cut >= min(late):
        sys.exit("snapshot %d holds write %d, sent after kiln snapshot create returned"
                 % (r, min(late)))
    print("snapshot %d = the volume after write %d (answered before: <= %d, sent after: >= %d)"
          % (r, cut, max(answered), min(late)))
final = blocks(sys.argv[2] + "/final.raw")
if final != state(n):
    sys.exit("the volume does not hold the writer's last writes")
print("the volume holds all %d writes" % n)
EOF

grep -q "dirty chunks were captured ahead" "$NBD_LOG" ||
	fail "no online snapshot took a chunk captured ahead (the race was not run)"

# ---- the exported volume cannot be deleted ------------------------------
expect_fail kiln volume delete "$vol"
[[ $ERR == *"in use"* ]] || fail "volume delete of an exported volume: unclear error: $ERR"
assert_eq "$(vol_field "$vol" State)" in-use "State of $vol while exported"

stop_nbd
assert_eq "$(vol_field "$vol" State)" available "State of $vol after the daemon stopped"
cmp_volume "$vol" "$TMPDIR/final.raw"
echo PASS
