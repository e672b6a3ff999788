#!/bin/bash
# kill -9 of kiln-nbd under a client:
#  1. during a write+flush loop (12 KiB blocks, across 64 KiB chunks, over
#     a volume whose chunks are clean after a snapshot): after a restart
#     every block whose FLUSH was answered reads back, and nothing the
#     client never wrote has changed;
#  2. right after writes that no FLUSH covered, into chunks that were clean
#     (so the on-disk map still says "clean"): after a restart, `kiln
#     snapshot create` (through the daemon) captures every LOCAL chunk, so
#     the snapshot exports exactly what the volume reads.
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/nbd-functions.sh"
requires_libnbd_python
requires openssl cmp nbdcopy

new_store
make_random "$TMPDIR/img.raw" 8M crash
vol=$(kiln volume import "$TMPDIR/img.raw")
# An import leaves BASE chunks. Make chunks 100-115 LOCAL (whole-chunk
# writes, through kiln-nbd -s) and then clean (a snapshot).
export VOL=$vol KILN_STORE
/usr/bin/nbdsh -n -c "
import nbd, os, random
h = nbd.NBD()
h.set_export_name(os.environ['VOL'])
h.connect_command([os.environ['KILN_NBD'], '-s'])
img = bytearray(open('$TMPDIR/img.raw', 'rb').read())
for i in range(100, 116):
    img[i * 65536:(i + 1) * 65536] = random.Random('P%d' % i).randbytes(65536)
    h.pwrite(img[i * 65536:(i + 1) * 65536], i * 65536)
h.flush()
h.shutdown()
open('$TMPDIR/base.raw', 'wb').write(img)
"
s0=$(kiln snapshot create "$vol")
assert_eq "$(vol_field "$vol" DirtyChunks)" 0 "dirty chunks after the first snapshot"
cmp_snapshot "$s0" "$TMPDIR/base.raw"

start_nbd
export SOCK=$NBD_SOCK SYNC=$TMPDIR/sync
mkdir "$SYNC"

# ---- 1. kill -9 during write+flush ---------------------------------------
cat >"$TMPDIR/flusher.py" <<'EOF'
import os
import random
import sys

import nbd

BS = 12 * 1024
h = nbd.NBD()
h.set_export_name(os.environ["VOL"])
h.connect_unix(os.environ["SOCK"])
rec = open(os.path.join(os.environ["SYNC"], "flushed"), "w", buffering=1)
i = -1
try:
    for i in range(512):
        h.pwrite(random.Random("blk%d" % i).randbytes(BS), i * BS)
        h.flush()
        rec.write("%d\n" % i)
except nbd.Error as e:
    print("the server went away at block %d: %s" % (i, e.string))
    sys.exit(0)
sys.exit("wrote all 512 blocks before the server was killed")
EOF
nbdsh_run "$TMPDIR/flusher.py" >"$TMPDIR/flusher.out" 2>&1 &
pid_f=$!
cleanup_fn "kill $pid_f 2>/dev/null"
n_kill=$((40 + RANDOM % 80))
flushed() { [ -e "$SYNC/flushed" ] && [ "$(wc -l <"$SYNC/flushed")" -ge "$1" ]; }
wait_until 30 flushed "$n_kill" || fail "the client flushed fewer than $n_kill blocks: $(cat "$TMPDIR/flusher.out")"
kill9_nbd
rc=0
wait "$pid_f" || rc=$?
cat "$TMPDIR/flusher.out"
assert_eq "$rc" 0 "exit status of the flush loop"
n=$(wc -l <"$SYNC/flushed")
echo "killed kiln-nbd with $n blocks flushed (aimed at $n_kill)"

start_nbd
SOCK=$NBD_SOCK
nbdsh -u "$(nbd_uri "$vol")" -c "
import random, sys
BS, n = 12 * 1024, $n
img = open('$TMPDIR/base.raw', 'rb').read()
lost = [i for i in range(n) if h.pread(BS, i * BS) != random.Random('blk%d' % i).randbytes(BS)]
if lost:
    sys.exit('blocks %s were flushed (FLUSH answered) but are lost after kill -9' % lost[:20])
# block n may have been in flight; everything after it was never written
rest = (n + 1) * BS
if h.pread(len(img) - rest, rest) != img[rest:]:
    sys.exit('bytes past block %d changed although no client wrote them' % n)
print('all %d flushed blocks read back; the rest of the volume is intact' % n)
"
nbdcopy "$(nbd_uri "$vol")" "$TMPDIR/after1.raw"
stop_nbd
# Clean again: the recovery above counted every LOCAL chunk as dirty.
s_mid=$(kiln snapshot create "$vol")
cmp_snapshot "$s_mid" "$TMPDIR/after1.raw"
assert_eq "$(vol_field "$vol" DirtyChunks)" 0 "dirty chunks after the second snapshot"

# ---- 2. unflushed writes into clean chunks, kill -9, snapshot -----------
start_nbd
SOCK=$NBD_SOCK
cat >"$TMPDIR/unflushed.py" <<'EOF'
import os
import random
import time

import nbd

CS = 65536
h = nbd.NBD()
h.set_export_name(os.environ["VOL"])
h.connect_unix(os.environ["SOCK"])
for i in range(16):
    h.pwrite(random.Random("U%d" % i).randbytes(4096), (100 + i) * CS + 1024)
open(os.path.join(os.environ["SYNC"], "u-written"), "w").close()
# stay connected (a disconnect flushes) until the server is killed
for _ in range(3000):
    if os.path.exists(os.path.join(os.environ["SYNC"], "stop")):
        break
    time.sleep(0.01)
EOF
nbdsh_run "$TMPDIR/unflushed.py" >"$TMPDIR/unflushed.out" 2>&1 &
pid_u=$!
cleanup_fn "kill $pid_u 2>/dev/null"
wait_until 30 test -e "$SYNC/u-written" || fail "the writer did not write: $(cat "$TMPDIR/unflushed.out")"
kill9_nbd
touch "$SYNC/stop"
rc=0
wait "$pid_u" || rc=$?
assert_eq "$rc" 0 "exit status of the unflushed writer: $(cat "$TMPDIR/unflushed.out")"
# The map on disk (docs/FORMAT.md: one byte per chunk at 4096 + index,
# state in bits 0-1, DIRTY in bit 7) still calls chunks 100-115 LOCAL and
# clean: only the crash rule can make the snapshot below read them.
assert_eq "$(hex_at "$KILN_STORE/regions/us-east-1/volumes/$vol.map" $((4096 + 100)) 16)" \
	"$(printf '01%.0s' $(seq 16))" "map entries of chunks 100-115 on disk after kill -9"

start_nbd --export "$vol"
nbdcopy "$(nbd_uri "$vol")" "$TMPDIR/truth.raw"
/usr/bin/python3 - "$TMPDIR/truth.raw" <<'EOF'
import random
import sys

CS = 65536
data = open(sys.argv[1], "rb").read()
missing = [i for i in range(16)
           if data[(100 + i) * CS + 1024:(100 + i) * CS + 5120] != random.Random("U%d" % i).randbytes(4096)]
if missing:
    sys.exit("unflushed blocks %s are not in the overlay after kill -9: this test then proves nothing"
             % missing)
print("the 16 unflushed blocks are in the volume after kill -9 (the on-disk map still calls them clean)")
EOF
s1=$(kiln snapshot create "$vol" --description "after two crashes")
assert_id snap "$s1"
cmp_snapshot "$s1" "$TMPDIR/truth.raw"
cmp_snapshot "$s0" "$TMPDIR/base.raw"
stop_nbd
cmp_volume "$vol" "$TMPDIR/truth.raw"
verify_clean
echo PASS
