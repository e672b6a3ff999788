#!/bin/bash
# Twenty instances of one image: `instance launch --count 20` prints 20
# distinct instance ids, each with its own copy-on-write root volume made
# from the image's snapshot, and stores no chunk bytes (StoredBytes,
# PackBytes, UniqueChunks and OverlayBytes unchanged). Every root, read
# over NBD through the region's kiln-nbd as i-…/xvda (twenty nbdcopy at
# once), begins with the snapshot's bytes (`snapshot export`, compared with
# cmp) and is zero after them (VolumeSize rounds up to 1 GiB); reading
# copied nothing up. A write to one instance's root changes that one only.
# Terminating all twenty deletes all twenty roots.
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/nbd-functions.sh"
source "$(dirname "$0")/instance-functions.sh"
requires nbdcopy nbdinfo cmp openssl
requires_fixtures

n=20
new_store
region_nbd_cleanup us-east-1
make_image "$FIXTURES/boot-bios.raw" kiln-many --architecture x86_64
ref=$TMPDIR/snap.raw
kiln snapshot export "$IMG_SNAP" "$ref"
cmp "$ref" "$FIXTURES/boot-bios.raw" || fail "snapshot $IMG_SNAP does not export as boot-bios.raw"
size=$(stat -c %s "$ref")

stats() {
	echo "StoredBytes=$(stat_field StoredBytes) PackBytes=$(stat_field PackBytes)" \
		"UniqueChunks=$(stat_field UniqueChunks) OverlayBytes=$(stat_field OverlayBytes)"
}
before=$(stats)
vols_before=$(volume_count)
echo "before: $before"

kiln instance launch "$IMG_AMI" --count $n >"$TMPDIR/ids"
mapfile -t ids <"$TMPDIR/ids"
assert_eq "${#ids[@]}" $n "instance ids printed by launch --count $n"
for i in "${ids[@]}"; do
	[[ $i =~ ^i-[0-9a-f]{17}$ ]] || fail "launch printed '$i', not an instance id"
done
assert_eq "$(sort -u "$TMPDIR/ids" | wc -l)" $n "distinct instance ids"
after=$(stats)
echo "after the launch: $after"
assert_eq "$after" "$before" "store stats after launching $n instances"
assert_eq "$(volume_count)" $((vols_before + n)) "volumes after the launch"

# Each root: its own volume, from the image's snapshot, 1 GiB, in use.
roots=()
for i in "${ids[@]}"; do
	devs=$(instance_devices "$i")
	assert_eq "$(echo "$devs" | wc -l)" 1 "devices of $i"
	read -r dev vol kind dot <<<"$devs"
	assert_eq "$dev $kind $dot" "/dev/xvda Ebs True" "the device of $i"
	kiln volume describe "$vol" --output json >"$TMPDIR/v.json"
	assert_eq "$(json "$TMPDIR/v.json" "(j['Volumes'][0]['SnapshotId'], j['Volumes'][0]['SizeBytes'], j['Volumes'][0]['State'])")" \
		"('$IMG_SNAP', $((1 << 30)), 'in-use')" "SnapshotId, SizeBytes, State of the root $vol of $i"
	roots+=("$vol")
done
assert_eq "$(printf '%s\n' "${roots[@]}" | sort -u | wc -l)" $n "distinct root volumes"

# Read all twenty roots at once through the daemon.
pids=()
for k in "${!ids[@]}"; do
	nbdcopy "$(dev_uri "${ids[$k]}")" "$TMPDIR/root-$k.raw" 2>"$TMPDIR/root-$k.err" &
	pids+=($!)
done
for k in "${!pids[@]}"; do
	wait "${pids[$k]}" || fail "nbdcopy of ${ids[$k]}/xvda exited $?: $(cat "$TMPDIR/root-$k.err")"
done
for k in "${!ids[@]}"; do
	f=$TMPDIR/root-$k.raw
	assert_eq "$(stat -c %s "$f")" $((1 << 30)) "bytes read from ${ids[$k]}/xvda"
	cmp -n "$size" "$f" "$ref" || fail "the root of ${ids[$k]} does not begin with snapshot $IMG_SNAP"
	assert_zero_from "$f" "$size"
	rm -f "$f"
done
echo "all $n roots read back as the snapshot followed by zeroes"
after=$(stats)
assert_eq "$after" "$before" "store stats after reading every root"

# Instances share chunks, not blocks: a write to the first (a chunk and a
# half: the daemon wants 4 KiB-aligned writes) changes only it.
make_random "$TMPDIR/blob" 98304 many
nbdcopy "$TMPDIR/blob" "$(dev_uri "${ids[0]}")" || fail "nbdcopy to ${ids[0]}/xvda failed"
nbdcopy "$(dev_uri "${ids[0]}")" "$TMPDIR/first.raw"
cmp -n 98304 "$TMPDIR/first.raw" "$TMPDIR/blob" || fail "the write to ${ids[0]} does not read back"
cmp -i 98304 -n $((size - 98304)) "$TMPDIR/first.raw" "$ref" ||
	fail "the write to ${ids[0]} changed more than it wrote"
rm -f "$TMPDIR/first.raw"
cmp_device "$(dev_uri "${ids[1]}")" "$ref" $((1 << 30))
cmp_snapshot "$IMG_SNAP" "$ref"

kiln instance terminate "${ids[@]}" >"$TMPDIR/term.out"
assert_eq "$(grep -c ': deleted$' "$TMPDIR/term.out")" $n "volumes terminate says it deleted"
for vol in "${roots[@]}"; do
	volume_exists "$vol" && fail "root volume $vol outlived terminate"
done
assert_eq "$(volume_count)" "$vols_before" "volumes after terminating all"
kiln instance describe --output json >"$TMPDIR/all.json"
assert_eq "$(json "$TMPDIR/all.json" "len([i for i in j['Reservations'][0]['Instances'] if i['State']['Name'] != 'terminated'])")" 0 "instances left"
verify_clean
stop_region_nbd us-east-1
echo PASS
