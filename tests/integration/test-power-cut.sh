#!/bin/bash
# A power cut after an online snapshot of writes that were never flushed.
# The store is on a loop-mounted ext4. A client writes 1 MiB over chunks
# of a volume's base snapshot and stays connected (no flush), `kiln
# snapshot create` takes the volume through the daemon, the daemon is
# killed, and the loop's backing file is copied before anything syncs it:
# what the inner filesystem had not written back is not in the copy, as
# after a power cut. On the copy, every chunk of the write must read the
# base's bytes or the new ones (a map state never claims bytes that are
# not on disk, docs/FORMAT.md), never zeroes, and the snapshot the new ones.
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

make_random "$TMPDIR/img.raw" 4M base
make_random "$TMPDIR/new.raw" 1M new
vol=$(kiln volume import "$TMPDIR/img.raw")
s0=$(kiln snapshot create "$vol")
cow=$(kiln volume create --snapshot-id "$s0")
sync

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
echo PASS
