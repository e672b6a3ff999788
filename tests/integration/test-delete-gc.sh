#!/bin/bash
# Deleting snapshots and collecting garbage: deleting the middle one of
# three snapshots leaves the others whole; gc frees exactly the chunks only
# it used; gc never breaks a live snapshot, nor a volume whose source (or
# last) snapshot was deleted, nor a volume that was imported and never
# snapshotted; a second gc frees nothing; verify is clean throughout.
source "$(dirname "$0")/functions.sh"
requires openssl cmp

cs=65536
rec=$((cs + 40))        # a random chunk is stored raw, after a 40-byte header
v1=$TMPDIR/v1.img v2=$TMPDIR/v2.img v3=$TMPDIR/v3.img

new_store
make_random "$v1" $((128 * cs)) v1
cp "$v1" "$v2"
overwrite "$v2" $((10 * cs)) $((10 * cs)) v2a       # chunks 10-19
overwrite "$v2" $((50 * cs)) $((5 * cs)) v2b        # chunks 50-54
cp "$v2" "$v3"
overwrite "$v3" $((10 * cs)) $((10 * cs)) v3a       # chunks 10-19 again
overwrite "$v3" $((90 * cs)) $((5 * cs)) v3c        # chunks 90-94

gc_json() {
	kiln store gc --output json >"$TMPDIR/gc.json"
	cat "$TMPDIR/gc.json"
}
gc_field() {
	json "$TMPDIR/gc.json" "j['$1']"
}

vol=$(kiln volume import "$v1")
s1=$(kiln snapshot create "$vol")
kiln volume import "$v2" --volume-id "$vol" >/dev/null
s2=$(kiln snapshot create "$vol")
kiln volume import "$v3" --volume-id "$vol" >/dev/null
s3=$(kiln snapshot create "$vol")
assert_eq "$(snap_field "$s2" ChunksNew)" 15 "ChunksNew of $s2"
assert_eq "$(snap_field "$s3" ChunksNew)" 15 "ChunksNew of $s3"

# a volume that was imported and never snapshotted: only its own parent
# manifest names its chunks
other=$TMPDIR/other.img
make_random "$other" $((8 * cs)) other
lone=$(kiln volume import "$other")

# nothing to collect yet
gc_json
assert_eq "$(gc_field ChunksRemoved)" 0 "chunks removed by gc with nothing deleted"
assert_eq "$(gc_field BytesFreed)" 0 "bytes freed by gc with nothing deleted"
cmp_volume "$lone" "$other"

stored=$(stat_field StoredBytes)
packs=$(stat_field PackBytes)
unique=$(stat_field UniqueChunks)

kiln snapshot delete "$s2"
expect_fail kiln snapshot describe "$s2"
[[ $ERR == *"does not exist"* ]] || fail "describe of a deleted snapshot: $ERR"
assert_eq "$(snapshot_ids | sort)" "$(printf '%s\n' "$s1" "$s3" | sort)" "snapshots after deleting $s2"
cmp_snapshot "$s1" "$v1"
cmp_snapshot "$s3" "$v3"
# deleting the row only: the store is unchanged until gc
assert_eq "$(stat_field StoredBytes)" "$stored" "stored bytes after snapshot delete"

gc_json
# only v2's chunks 10-19 are dead: 50-54 live on in s3
assert_eq "$(gc_field ChunksRemoved)" 10 "chunks removed by gc after deleting $s2"
[ "$(gc_field BytesFreed)" -ge $((10 * cs)) ] || fail "gc freed $(gc_field BytesFreed) bytes, expected >= $((10 * cs))"
assert_eq "$(stat_field StoredBytes)" $((stored - 10 * rec)) "stored bytes after gc"
assert_eq "$(stat_field UniqueChunks)" $((unique - 10)) "unique chunks after gc"
assert_eq "$(stat_field PackBytes)" $((packs - $(gc_field BytesFreed))) "pack bytes after gc (less BytesFreed)"
verify_clean
cmp_snapshot "$s1" "$v1"
cmp_snapshot "$s3" "$v3"
cmp_volume "$vol" "$v3"
cmp_volume "$lone" "$other"

# a CoW volume outlives its source snapshot
cow=$(kiln volume create --snapshot-id "$s1")
kiln snapshot delete "$s1"
gc_json
# v1's chunks 10-19, 50-54 and 90-94 are used by the CoW volume alone
assert_eq "$(gc_field ChunksRemoved)" 0 "chunks removed by gc while a CoW volume uses them"
verify_clean
cmp_volume "$cow" "$v1"
cmp_snapshot "$s3" "$v3"
assert_eq "$(vol_field "$cow" SnapshotId)" "$s1" "SnapshotId of $cow after its snapshot was deleted"
# ... and can still be changed and snapshotted
mod=$TMPDIR/mod.img
cp "$v1" "$mod"
overwrite "$mod" $((3 * cs)) 10 mod
kiln volume import "$mod" --volume-id "$cow" >/dev/null
s4=$(kiln snapshot create "$cow")
cmp_snapshot "$s4" "$mod"

# a volume whose last snapshot was deleted
kiln snapshot delete "$s3"
gc_json
assert_eq "$(gc_field ChunksRemoved)" 0 "chunks removed by gc while the volume uses them"
cmp_volume "$vol" "$v3"
s5=$(kiln snapshot create "$vol")
assert_eq "$(snap_field "$s5" ChunksChanged)" 0 "ChunksChanged of $s5"
cmp_snapshot "$s5" "$v3"
cmp_snapshot "$s4" "$mod"
cmp_volume "$lone" "$other"

# now drop the CoW volume and its snapshot: v1's 20 chunks that v3 does
# not share, and the one chunk of mod, go
kiln volume delete "$cow"
expect_fail kiln volume describe "$cow"
kiln snapshot delete "$s4"
stored=$(stat_field StoredBytes)
gc_json
assert_eq "$(gc_field ChunksRemoved)" 21 "chunks removed by gc after deleting $cow and $s4"
[ "$(gc_field BytesFreed)" -ge $((21 * cs)) ] || fail "gc freed only $(gc_field BytesFreed) bytes"
assert_eq "$(stat_field StoredBytes)" $((stored - 21 * rec)) "stored bytes after the third gc"
verify_clean
cmp_snapshot "$s5" "$v3"
cmp_volume "$vol" "$v3"
cmp_volume "$lone" "$other"

# a second gc frees nothing
gc_json
assert_eq "$(gc_field ChunksRemoved)" 0 "chunks removed by a second gc"
assert_eq "$(gc_field BytesFreed)" 0 "bytes freed by a second gc"
assert_eq "$(gc_field PacksRemoved)" 0 "packs removed by a second gc"
assert_eq "$(gc_field PacksWritten)" 0 "packs written by a second gc"

# everything deleted: everything goes
kiln snapshot delete "$s5"
kiln volume delete "$vol"
kiln volume delete "$lone"
gc_json
assert_eq "$(stat_field UniqueChunks)" 0 "chunks left when nothing is left"
assert_eq "$(stat_field PackBytes)" 0 "pack bytes left when nothing is left"
r=$KILN_STORE/regions/us-east-1
assert_eq "$(find "$r/packs" "$r/manifests" "$r/volumes" -type f)" "" "files left when nothing is left"
verify_clean
echo PASS
