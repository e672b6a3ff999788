#!/bin/bash
# A change made inside an instance's root filesystem becomes an image that
# still boots: nbdfuse exposes i-…/xvda (served by the region's kiln-nbd)
# as a file, a loop device at 1 MiB is boot-bios.raw's ext4 partition; it is
# mounted and /kiln-marker written, then everything is undone. `kiln image
# create` snapshots the root (incrementally: the new snapshot's parent is
# the image's, and only a few chunks are changed or new; the store grows by
# less than 2 MiB), a new instance of the new image boots (KILN-BOOT-OK),
# and the new image's root snapshot, exported and loop-mounted read-only,
# holds /kiln-marker. The source image's snapshot is unchanged.
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/nbd-functions.sh"
source "$(dirname "$0")/instance-functions.sh"
requires_qemu
requires nbdfuse fusermount3 losetup mount umount mountpoint cmp
if [ ! -e /dev/fuse ]; then
	echo "requires /dev/fuse"
	exit 77
fi
requires_fixtures

part=$((1 << 20))              # boot-bios.raw: one ext4 partition at 1 MiB,
partsize=$((31 << 20))         # 31 MiB long (make-disks.sh)
content="kiln was here $$ $(date -u +%s%N)"
new_store
region_nbd_cleanup us-east-1
make_image "$FIXTURES/boot-bios.raw" kiln-change --architecture x86_64
inst=$(kiln instance launch "$IMG_AMI")
[[ $inst =~ ^i-[0-9a-f]{17}$ ]] || fail "instance launch printed '$inst'"
root=$(instance_volume "$inst" /dev/xvda)
assert_id vol "$root"
stored=$(stat_field StoredBytes)
packs=$(stat_field PackBytes)

# ---- the change, through nbdfuse and a loop device ---------------------------
fuse=$TMPDIR/fuse mnt=$TMPDIR/mnt
mkdir "$fuse" "$mnt"
nbdfuse -P "$TMPDIR/nbdfuse.pid" "$fuse/disk" "$(dev_uri "$inst")" 2>"$TMPDIR/nbdfuse.err" &
fpid=$!
cleanup_fn "fusermount3 -u '$fuse' 2>/dev/null; kill $fpid 2>/dev/null"
wait_until 30 test -s "$TMPDIR/nbdfuse.pid" || fail "nbdfuse did not start: $(cat "$TMPDIR/nbdfuse.err")"
assert_eq "$(stat -c %s "$fuse/disk")" $((1 << 30)) "size of $inst/xvda as a file"
loop=$(losetup -f --show -o $part --sizelimit $partsize "$fuse/disk")
cleanup_fn "losetup -d '$loop' 2>/dev/null"
mount "$loop" "$mnt"
cleanup_fn "umount '$mnt' 2>/dev/null"
[ -f "$mnt/boot/extlinux/extlinux.conf" ] || fail "no /boot/extlinux/extlinux.conf on $inst's root partition"
[ ! -e "$mnt/kiln-marker" ] || fail "/kiln-marker is there before it was written"
printf '%s\n' "$content" >"$mnt/kiln-marker"
umount "$mnt"
losetup -d "$loop"
# the loop device lets go of the file asynchronously
wait_until 10 fusermount3 -u "$fuse" || fail "fusermount3 -u $fuse"
nbdfuse_gone() { ! kill -0 "$fpid" 2>/dev/null; }
wait_until 10 nbdfuse_gone || fail "nbdfuse still runs after fusermount3 -u"
wait "$fpid" || fail "nbdfuse exited $?: $(cat "$TMPDIR/nbdfuse.err")"
dirty=$(vol_field "$root" DirtyChunks)
echo "the root $root has $dirty dirty chunks after the change"
[ "$dirty" -gt 0 ] || fail "the write through nbdfuse left no dirty chunk in $root"

# ---- image create --------------------------------------------------------------
ami2=$(kiln image create --instance-id "$inst" --name kiln-changed)
[[ $ami2 =~ ^ami-[0-9a-f]{17}$ ]] || fail "image create printed '$ami2'"
kiln image describe --image-ids "$ami2" --output json >"$TMPDIR/ami2.json"
assert_eq "$(json "$TMPDIR/ami2.json" "j['Images'][0]['State']")" available "State of $ami2"
assert_eq "$(json "$TMPDIR/ami2.json" "(j['Images'][0]['RootDeviceName'], j['Images'][0]['Architecture'], j['Images'][0]['BootMode'])")" \
	"('/dev/xvda', 'x86_64', 'legacy-bios')" "root device, architecture, boot mode of $ami2"
assert_eq "$(json "$TMPDIR/ami2.json" "len(j['Images'][0]['BlockDeviceMappings'])")" 1 "mappings of $ami2"
snap2=$(json "$TMPDIR/ami2.json" "j['Images'][0]['BlockDeviceMappings'][0]['Ebs']['SnapshotId']")
assert_id snap "$snap2"
[ "$snap2" != "$IMG_SNAP" ] || fail "image create reused the source snapshot"
assert_eq "$(snap_field "$snap2" VolumeId)" "$root" "VolumeId of $snap2"
assert_eq "$(snap_field "$snap2" ParentSnapshotId)" "$IMG_SNAP" "ParentSnapshotId of $snap2"
data=$(snap_field "$snap2" ChunksData)
changed=$(snap_field "$snap2" ChunksChanged)
new=$(snap_field "$snap2" ChunksNew)
grown=$(($(stat_field StoredBytes) - stored))
pgrown=$(($(stat_field PackBytes) - packs))
echo "snapshot $snap2: ChunksData $data, ChunksChanged $changed, ChunksNew $new; StoredBytes +$grown, PackBytes +$pgrown"
[ "$changed" -ge 1 ] || fail "$snap2 has no changed chunk, but /kiln-marker was written"
[ "$new" -ge 1 ] || fail "$snap2 stored no new chunk, but /kiln-marker was written"
[ "$changed" -le 16 ] && [ $((changed * 10)) -lt "$data" ] ||
	fail "$snap2 changed $changed of $data chunks: not an incremental snapshot of a small change"
[ "$new" -le "$changed" ] || fail "$snap2 has more new chunks ($new) than changed ones ($changed)"
[ "$grown" -lt $((2 << 20)) ] || fail "StoredBytes grew by $grown bytes for a small change (limit 2 MiB)"
[ "$pgrown" -lt $((2 << 20)) ] || fail "PackBytes grew by $pgrown bytes for a small change (limit 2 MiB)"
cmp_snapshot "$IMG_SNAP" "$FIXTURES/boot-bios.raw"

# ---- the new image boots, and holds the change -----------------------------------
inst2=$(kiln instance launch "$ami2")
[[ $inst2 =~ ^i-[0-9a-f]{17}$ ]] || fail "instance launch $ami2 printed '$inst2'"
assert_eq "$(vol_field "$(instance_volume "$inst2" /dev/xvda)" SnapshotId)" "$snap2" \
	"SnapshotId of $inst2's root"
boot_instance "$inst2"

raw=$TMPDIR/snap2.raw
kiln snapshot export "$snap2" "$raw"
cmp -n 512 "$raw" "$FIXTURES/boot-bios.raw" || fail "$snap2's boot sector differs from boot-bios.raw's"
ro=$TMPDIR/ro
mkdir "$ro"
mount -o ro,loop,offset=$part,sizelimit=$partsize "$raw" "$ro"
cleanup_fn "umount '$ro' 2>/dev/null"
[ -f "$ro/kiln-marker" ] || fail "no /kiln-marker in $snap2"
assert_eq "$(cat "$ro/kiln-marker")" "$content" "/kiln-marker in $snap2"
umount "$ro"
# and the source image's snapshot has no marker
kiln snapshot export "$IMG_SNAP" "$TMPDIR/orig.raw"
mount -o ro,loop,offset=$part,sizelimit=$partsize "$TMPDIR/orig.raw" "$ro"
[ ! -e "$ro/kiln-marker" ] || fail "/kiln-marker leaked into the source image's snapshot $IMG_SNAP"
umount "$ro"

# ---- image create refuses a bad or taken name, and changes nothing ----------------
before=$(snapshot_ids | sort)
expect_fail kiln image create --instance-id "$inst" --name x
[[ $ERR == *"image name is 3 to 128"* ]] || fail "image create --name x: $ERR"
expect_fail kiln image create --instance-id "$inst" --name kiln-changed
[[ $ERR == *"already has an image named 'kiln-changed'"* ]] || fail "image create of a taken name: $ERR"
assert_eq "$(snapshot_ids | sort)" "$before" "snapshots after image creates that were refused"

# ---- image create the moment a client leaves -----------------------------------
# The export closes behind the client: image create must not find the
# volume busy and nobody answering (it did so in 2 of 3 tries before it
# tried again for a while, as snapshot create does).
for n in 1 2 3 4 5 6; do
	nbdsh -u "$(dev_uri "$inst")" -c "h.pwrite(b'$n' * 4096, $n * 458752)" ||
		fail "write $n through $(dev_uri "$inst")"
	kiln image create --instance-id "$inst" --name "leaving-$n" >/dev/null 2>"$TMPDIR/leaving.err" ||
		fail "image create right after client $n left: $(cat "$TMPDIR/leaving.err")"
done

kiln instance terminate "$inst" "$inst2" >/dev/null
verify_clean
stop_region_nbd us-east-1
echo PASS
