#!/bin/bash
# Copy-on-write volumes: `volume create --snapshot-id` copies no bytes
# (stored, pack and overlay bytes unchanged) and reads as the snapshot; a
# larger --size reads as zeroes past the snapshot; changing the CoW volume
# and snapshotting it makes a snapshot of the change while the source
# snapshot still exports as it was.
source "$(dirname "$0")/functions.sh"
requires openssl cmp stat

cs=65536
size=$((5 * 1024 * 1024 + 12345))
orig=$TMPDIR/orig.img

new_store
make_mixed "$orig" "$size"
base=$(kiln volume import "$orig")
snap=$(kiln snapshot create "$base")
assert_id snap "$snap"

kiln store stats --output json >"$TMPDIR/before.json"
stored=$(stat_field StoredBytes)
packs=$(stat_field PackBytes)
overlays=$(stat_field OverlayBytes)
unique=$(stat_field UniqueChunks)

cow=$(kiln volume create --snapshot-id "$snap")
assert_id vol "$cow"
[ "$cow" != "$base" ] || fail "the CoW volume has its source's id"
assert_eq "$(stat_field StoredBytes)" "$stored" "stored bytes after volume create --snapshot-id"
assert_eq "$(stat_field PackBytes)" "$packs" "pack bytes after volume create --snapshot-id"
assert_eq "$(stat_field UniqueChunks)" "$unique" "unique chunks after volume create --snapshot-id"
assert_eq "$(stat_field OverlayBytes)" "$overlays" "overlay bytes after volume create --snapshot-id"
# and nothing is allocated for the new volume's overlay in particular
ov=$KILN_STORE/regions/us-east-1/volumes/$cow.data
[ -f "$ov" ] || fail "no overlay file $ov"
assert_eq "$(stat -c %b "$ov")" 0 "blocks allocated to the overlay of $cow"
assert_eq "$(vol_field "$cow" SnapshotId)" "$snap" "SnapshotId of $cow"
assert_eq "$(vol_field "$cow" SizeBytes)" "$size" "SizeBytes of $cow"
assert_eq "$(vol_field "$cow" State)" available "State of $cow"
assert_eq "$(vol_field "$cow" DirtyChunks)" 0 "DirtyChunks of $cow"
cmp_volume "$cow" "$orig"
# reading it copied nothing either
assert_eq "$(stat -c %b "$ov")" 0 "blocks allocated to the overlay of $cow after an export"

# larger than the snapshot: the rest reads as zeroes
big=$(kiln volume create --snapshot-id "$snap" --size 8M)
assert_eq "$(vol_field "$big" SizeBytes)" $((8 * 1024 * 1024)) "SizeBytes of $big"
assert_eq "$(stat_field StoredBytes)" "$stored" "stored bytes after a larger CoW volume"
cp "$orig" "$TMPDIR/orig-8M.img"
truncate -s 8M "$TMPDIR/orig-8M.img"
cmp_volume "$big" "$TMPDIR/orig-8M.img"

# change the CoW volume: a modified image, larger than the snapshot too
mod=$TMPDIR/mod.img
cp "$TMPDIR/orig-8M.img" "$mod"
overwrite "$mod" 0 100 m1                             # the first chunk, partly
overwrite "$mod" $((17 * cs)) $cs m2                  # one whole chunk
overwrite "$mod" $((size - 10)) 5000 m3               # across the old end
overwrite "$mod" $((8 * 1024 * 1024 - cs)) $cs m4     # the new last chunk
kiln volume import "$mod" --volume-id "$big" --output json >"$TMPDIR/import.json"
assert_eq "$(json "$TMPDIR/import.json" "j['ChangedChunks']")" 4 "chunks changed in the CoW volume"
cmp_volume "$big" "$mod"
snap2=$(kiln snapshot create "$big")
assert_id snap "$snap2"
assert_eq "$(snap_field "$snap2" SizeBytes)" $((8 * 1024 * 1024)) "SizeBytes of $snap2"
assert_eq "$(snap_field "$snap2" ChunksChanged)" 4 "ChunksChanged of $snap2"
assert_eq "$(snap_field "$snap2" ChunksNew)" 4 "ChunksNew of $snap2"
assert_eq "$(snap_field "$snap2" VolumeId)" "$big" "VolumeId of $snap2"
cmp_snapshot "$snap2" "$mod"
# the diff of snapshots of two sizes: past the smaller one, it reads as zeroes
want=$(printf '%s\n' "0 $cs" "$((17 * cs)) $cs" "$((80 * cs)) $cs" "$((127 * cs)) $cs")
assert_eq "$(kiln snapshot diff "$snap" "$snap2")" "$want" "snapshot diff $snap $snap2"
assert_eq "$(kiln snapshot diff "$snap2" "$snap")" "$want" "snapshot diff $snap2 $snap"
cmp_snapshot "$snap" "$orig"
cmp_volume "$cow" "$orig"
cmp_volume "$base" "$orig"

# the same change to the same-size CoW volume: snapshots of two volumes of
# one source share their chunks
cp "$orig" "$TMPDIR/mod-5M.img"
dd if="$mod" of="$TMPDIR/mod-5M.img" bs=$cs count=18 conv=notrunc status=none
stored=$(stat_field StoredBytes)
kiln volume import "$TMPDIR/mod-5M.img" --volume-id "$cow" >/dev/null
snap3=$(kiln snapshot create "$cow")
assert_eq "$(snap_field "$snap3" ChunksChanged)" 2 "ChunksChanged of $snap3"
assert_eq "$(snap_field "$snap3" ChunksNew)" 0 "ChunksNew of $snap3 (the chunks are in $snap2)"
assert_eq "$(stat_field StoredBytes)" "$stored" "stored bytes after $snap3"
cmp_snapshot "$snap3" "$TMPDIR/mod-5M.img"

# a CoW volume of a CoW volume's snapshot
cow2=$(kiln volume create --snapshot-id "$snap2")
cmp_volume "$cow2" "$mod"
assert_eq "$(stat -c %b "$KILN_STORE/regions/us-east-1/volumes/$cow2.data")" 0 \
	"blocks allocated to the overlay of $cow2"
cmp_snapshot "$snap" "$orig"
verify_clean
echo PASS
