#!/bin/bash
# Power cuts, emulated: the store is on a loop-mounted ext4, the daemon is
# killed, and the loop's backing file is copied before anything syncs it
# (what the inner filesystem had not written back is not in the copy).
#
# 1. After an online snapshot of writes that were never flushed.
# The store is on a loop-mounted ext4. A client writes 1 MiB over chunks
# of a volume's base snapshot and stays connected (no flush), `kiln
# snapshot create` takes the volume through the daemon, the daemon is
# killed, and the loop's backing file is copied before anything syncs it:
# what the inner filesystem had not written back is not in the copy, as
# after a power cut. On the copy, every chunk of the write must read the
# base's bytes or the new ones (a map state never claims bytes that are
# not on disk, docs/FORMAT.md), never zeroes, and the snapshot the new ones.
# 2. While one connection writes whole chunks of a base snapshot (128 KiB
# chunks) and another flushes every 30 ms: a flush must not write a
# state another writer set after its fdatasync began. Every chunk reads
# old or new, and a snapshot taken after equals the volume.
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/nbd-functions.sh"
requires_libnbd_python
requires losetup mkfs.ext4 mount umount cmp

mkdir -p "$TMPDIR/mnt" "$TMPDIR/mnt2"
truncate -s 256M "$TMPDIR/fs.img"
mkfs.ext4 -q -F -m 0 "$TMPDIR/fs.img"
loop=$(losetup -f --show "$TMPDIR/fs.img") || { echo "no loop device"; exit 77; }
cleanup_fn losetup -d "$loop"
mount "$loop" "$TMPDIR/mnt" || { echo "cannot mount $loop"; exit 77; }
cleanup_fn umount "$TMPDIR/mnt"
export KILN_STORE=$TMPDIR/mnt/store
kiln init >/dev/null 2>&1 || fail "init on the loop mount"

# cow_of FILE: import FILE, snapshot it, and print a volume made from
# the snapshot, with the store on disk
cow_of() {
	local v s
	v=$(kiln volume import "$1") && s=$(kiln snapshot create "$v") &&
		kiln volume create --snapshot-id "$s" && sync
}

make_random "$TMPDIR/img.raw" 4M base
make_random "$TMPDIR/new.raw" 1M new
cow=$(cow_of "$TMPDIR/img.raw") || fail "a volume of a snapshot of img.raw"

start_nbd
# The client stays connected: a connection's end flushes the volume.
/usr/bin/python3 -c '
import sys, time
import nbd
h = nbd.NBD()
h.set_export_name(sys.argv[2])
h.connect_unix(sys.argv[1])
h.pwrite(open(sys.argv[3], "rb").read(), 1 << 20)
open(sys.argv[4], "w").close()
time.sleep(60)' "$NBD_SOCK" "$cow" "$TMPDIR/new.raw" "$TMPDIR/written" &
client=$!
cleanup_fn "kill $client 2>/dev/null"
wait_until 10 test -e "$TMPDIR/written" || fail "the client did not write"
s1=$(kiln snapshot create "$cow") || fail "online snapshot failed"
kill9_nbd
kill "$client"

# the power cut: the backing file as the loop device left it, unsynced
cp --sparse=always "$TMPDIR/fs.img" "$TMPDIR/cut.img"
loop2=$(losetup -f --show "$TMPDIR/cut.img") || fail "losetup"
cleanup_fn losetup -d "$loop2"
mount "$loop2" "$TMPDIR/mnt2" || fail "mount the copy"
cleanup_fn umount "$TMPDIR/mnt2"
export KILN_STORE=$TMPDIR/mnt2/store
kiln volume export "$cow" "$TMPDIR/after.raw" || fail "volume export after the cut"
kiln snapshot export "$s1" "$TMPDIR/s1.raw" || fail "snapshot export after the cut"

/usr/bin/python3 - "$TMPDIR" <<'EOF' || fail "bytes after the power cut"
import sys
d = sys.argv[1]
img, new = open(d + "/img.raw", "rb").read(), open(d + "/new.raw", "rb").read()
after, s1 = open(d + "/after.raw", "rb").read(), open(d + "/s1.raw", "rb").read()
MiB, CS = 1 << 20, 64 << 10
bad = []
if s1 != img[:MiB] + new + img[2 * MiB:]:
    bad.append("the snapshot does not hold the write")
if after[:MiB] != img[:MiB] or after[2 * MiB:] != img[2 * MiB:]:
    bad.append("bytes outside the write changed")
for c in range(MiB // CS):
    got = after[MiB + c * CS:MiB + (c + 1) * CS]
    if got not in (new[c * CS:(c + 1) * CS], img[MiB + c * CS:MiB + (c + 1) * CS]):
        bad.append("chunk %d of the write is neither old nor new%s" %
                   (c, " (zeroes)" if got.count(0) == CS else ""))
for b in bad:
    print(b)
sys.exit(1 if bad else 0)
EOF

# 2. flushes racing whole-chunk writes over base chunks
export KILN_STORE=$TMPDIR/mnt/store2
kiln init --chunk-size 128K >/dev/null 2>&1 || fail "init with 128 KiB chunks"
make_random "$TMPDIR/base2.raw" 32M base2
cow2=$(cow_of "$TMPDIR/base2.raw") || fail "a volume of a snapshot of base2.raw"
start_nbd
# The writer kills the daemon itself halfway through its one pass over
# the chunks, while it has writes in flight and flushes keep coming.
/usr/bin/python3 - "$NBD_SOCK" "$cow2" "$TMPDIR/new2.raw" "$NBD_PID" <<'EOF' || fail "the racing writer failed"
import os, random, signal, sys, threading, time
import nbd
sock, vol, out, pid = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
CS, SIZE = 128 << 10, 32 << 20
new = os.urandom(SIZE)
open(out, "wb").write(new)
a, b = nbd.NBD(), nbd.NBD()
for h in (a, b):
    h.set_export_name(vol)
    h.connect_unix(sock)


def flusher():
    try:
        while True:
            b.flush()
            time.sleep(0.03)
    except nbd.Error:
        pass            # the daemon is gone


threading.Thread(target=flusher, daemon=True).start()
order = list(range(SIZE // CS))
random.shuffle(order)
for n, c in enumerate(order):
    while a.aio_in_flight() >= 16:
        a.poll(-1)
    a.aio_pwrite(nbd.Buffer.from_bytearray(bytearray(new[c * CS:(c + 1) * CS])), c * CS)
    if n % 4 == 3:
        time.sleep(0.003)
    if n == len(order) // 2:
        os.kill(pid, signal.SIGKILL)
        break
EOF
rc=0
_nbd_reap "$NBD_PID" || rc=$?
assert_eq "$rc" 137 "exit status of kiln-nbd killed by the writer"
cp --sparse=always "$TMPDIR/fs.img" "$TMPDIR/cut2.img"
mkdir -p "$TMPDIR/mnt3"
loop3=$(losetup -f --show "$TMPDIR/cut2.img") || fail "losetup"
cleanup_fn losetup -d "$loop3"
mount "$loop3" "$TMPDIR/mnt3" || fail "mount the second copy"
cleanup_fn umount "$TMPDIR/mnt3"
export KILN_STORE=$TMPDIR/mnt3/store2
kiln volume export "$cow2" "$TMPDIR/after2.raw" || fail "volume export after the second cut"
s3=$(kiln snapshot create "$cow2") || fail "snapshot after the second cut"
cmp_snapshot "$s3" "$TMPDIR/after2.raw"
/usr/bin/python3 - "$TMPDIR" <<'EOF' || fail "bytes after flushes raced writes"
import sys
d = sys.argv[1]
base, new = open(d + "/base2.raw", "rb").read(), open(d + "/new2.raw", "rb").read()
after = open(d + "/after2.raw", "rb").read()
CS = 128 << 10
bad = [c for c in range(len(base) // CS)
       if after[c * CS:(c + 1) * CS] not in (base[c * CS:(c + 1) * CS], new[c * CS:(c + 1) * CS])]
print("%d chunks neither old nor new: %s" % (len(bad), bad[:10]))
sys.exit(1 if bad else 0)
EOF
echo PASS
