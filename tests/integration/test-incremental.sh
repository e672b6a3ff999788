#!/bin/bash
# Incremental snapshots: change ~1% of a 64 MiB mixed image (whole 64K
# chunks and unaligned ranges), import the new version into the same
# volume and snapshot again. The second snapshot reads exactly the changed
# chunks, stores about their size and no more, `snapshot diff` lists
# exactly their ranges, and each snapshot exports its own version.
# Importing the same file again changes nothing and stores nothing.
source "$(dirname "$0")/functions.sh"
requires openssl cmp

cs=65536
size=$((64 * 1024 * 1024 + 12345))     # the last chunk is partial
nchunks=$(((size + cs - 1) / cs))
v1=$TMPDIR/v1.img v2=$TMPDIR/v2.img

new_store
make_mixed "$v1" "$size"
cp "$v1" "$v2"

# make_mixed lays out runs of 4 chunks: random, zero, text, repeated random.
# Whole chunks rewritten with new random data, in runs of every kind:
for c in 0 101 202 303 1023; do
	overwrite "$v2" $((c * cs)) $cs "new$c"
done
# unaligned ranges: across the boundary of chunks 399|400 and 770|771,
# inside chunk 513, one byte in the zero chunk 900, the file's last 100 bytes
overwrite "$v2" $((400 * cs - 5000)) 10000 u1
overwrite "$v2" $((513 * cs + 100)) 3000 u2
overwrite "$v2" $((770 * cs + 65000)) 2000 u3
printf '\x01' | dd of="$v2" bs=1 seek=$((900 * cs + 4321)) conv=notrunc status=none
overwrite "$v2" $((size - 100)) 100 u4
# chunk 104 (text) becomes a copy of chunk 1: changed, but deduplicated
dd if="$v1" of="$v2" bs=$cs skip=1 seek=104 count=1 conv=notrunc status=none
changed=(0 101 104 202 303 399 400 513 770 771 900 1023 1024)
nchanged=${#changed[@]}
new_chunks=$((nchanged - 1))            # all but the copy of chunk 1
[ "$(stat -c %s "$v2")" -eq "$size" ] || fail "v2 has the wrong size"

# the changed chunks, computed independently of the list above
actual=$({ cmp -l "$v1" "$v2" || true; } | awk -v cs=$cs '{ print int(($1 - 1) / cs) }' | uniq | tr '\n' ' ')
assert_eq "$actual" "${changed[*]} " "chunks that differ between v1 and v2"

vol=$(kiln volume import "$v1")
assert_id vol "$vol"
stored0=$(stat_field StoredBytes)
unique0=$(stat_field UniqueChunks)
snap1=$(kiln snapshot create "$vol")
assert_id snap "$snap1"
assert_eq "$(snap_field "$snap1" ChunksChanged)" 0 "chunks read by the first snapshot after an import"
assert_eq "$(stat_field StoredBytes)" "$stored0" "stored bytes after the first snapshot"

kiln volume import "$v2" --volume-id "$vol" --output json >"$TMPDIR/import.json"
assert_eq "$(json "$TMPDIR/import.json" "j['VolumeId']")" "$vol" "volume id of the import"
assert_eq "$(json "$TMPDIR/import.json" "j['ChangedChunks']")" "$nchanged" "chunks the import changed"
assert_eq "$(vol_field "$vol" DirtyChunks)" "$nchanged" "dirty chunks after the import"
cmp_volume "$vol" "$v2"

snap2=$(kiln snapshot create "$vol")
assert_id snap "$snap2"
[ "$snap2" != "$snap1" ] || fail "two snapshots with one id"
assert_eq "$(snap_field "$snap2" State)" completed "state of $snap2"
assert_eq "$(snap_field "$snap2" ParentSnapshotId)" "$snap1" "parent of $snap2"
assert_eq "$(snap_field "$snap2" ChunksChanged)" "$nchanged" "ChunksChanged of $snap2"
assert_eq "$(snap_field "$snap2" ChunksNew)" "$new_chunks" "ChunksNew of $snap2"
assert_eq "$(vol_field "$vol" DirtyChunks)" 0 "dirty chunks after the snapshot"

stored1=$(stat_field StoredBytes)
unique1=$(stat_field UniqueChunks)
added=$((stored1 - stored0))
assert_eq $((unique1 - unique0)) "$new_chunks" "new unique chunks"
assert_eq "$(snap_field "$snap2" BytesNewStored)" "$added" "BytesNewStored of $snap2"
# Random data does not compress: the 10 whole random chunks cost 64 KiB
# each (plus a record header); chunk 900 (one byte in zeroes) and the
# partial last chunk (12345 random bytes and zeroes) cost little more
# than their non-zero bytes.
lo=$((10 * cs + 12345))
hi=$((10 * (cs + 40) + 2 * (cs + 40)))
[ "$added" -ge "$lo" ] && [ "$added" -le "$hi" ] ||
	fail "the second snapshot stored $added bytes, expected $lo..$hi"
# ... which is about 1% of the image: between 0.5% and 3%
[ $((added * 1000)) -ge $((size * 5)) ] && [ $((added * 1000)) -le $((size * 30)) ] ||
	fail "the second snapshot stored $added bytes for a 1% change of $size bytes"

# snapshot diff lists exactly the runs of changed chunks
expected=""
start=-1 prev=-2
for c in "${changed[@]}" END; do
	if [ "$c" != END ] && [ "$c" -eq $((prev + 1)) ]; then
		prev=$c
		continue
	fi
	if [ "$start" -ge 0 ]; then
		end=$(((prev + 1) * cs))
		[ "$end" -gt "$size" ] && end=$size
		expected+="$((start * cs)) $((end - start * cs))"$'\n'
	fi
	[ "$c" = END ] || { start=$c; prev=$c; }
done
kiln snapshot diff "$snap1" "$snap2" >"$TMPDIR/diff"
assert_eq "$(cat "$TMPDIR/diff")" "${expected%$'\n'}" "snapshot diff $snap1 $snap2"
kiln snapshot diff "$snap2" "$snap1" >"$TMPDIR/diff"
assert_eq "$(cat "$TMPDIR/diff")" "${expected%$'\n'}" "snapshot diff $snap2 $snap1"
assert_eq "$(kiln snapshot diff "$snap1" "$snap1")" "" "diff of a snapshot with itself"
kiln snapshot diff "$snap1" "$snap2" --output json >"$TMPDIR/diff.json"
assert_eq "$(json "$TMPDIR/diff.json" "len(j['ChangedBlocks'])")" "$(printf '%s' "$expected" | wc -l)" \
	"ChangedBlocks in the JSON diff"
assert_eq "$(json "$TMPDIR/diff.json" "sum(b['Length'] for b in j['ChangedBlocks'])")" \
	"$(printf '%s' "$expected" | awk '{ s += $2 } END { print s }')" "changed bytes in the JSON diff"

# each snapshot is its own version
cmp_snapshot "$snap1" "$v1"
cmp_snapshot "$snap2" "$v2"

# the same file again: nothing changes, nothing is stored
kiln volume import "$v2" --volume-id "$vol" --output json >"$TMPDIR/import.json"
assert_eq "$(json "$TMPDIR/import.json" "j['ChangedChunks']")" 0 "chunks changed by importing v2 again"
snap3=$(kiln snapshot create "$vol")
assert_eq "$(snap_field "$snap3" ChunksChanged)" 0 "ChunksChanged of a snapshot of an unchanged volume"
assert_eq "$(snap_field "$snap3" BytesNewStored)" 0 "BytesNewStored of a snapshot of an unchanged volume"
assert_eq "$(stat_field StoredBytes)" "$stored1" "stored bytes after a snapshot of an unchanged volume"
assert_eq "$(kiln snapshot diff "$snap2" "$snap3")" "" "diff of two snapshots of an unchanged volume"
cmp_snapshot "$snap3" "$v2"

# back to v1: the same chunks change again, and every one is already stored
kiln volume import "$v1" --volume-id "$vol" --output json >"$TMPDIR/import.json"
assert_eq "$(json "$TMPDIR/import.json" "j['ChangedChunks']")" "$nchanged" "chunks changed by going back to v1"
snap4=$(kiln snapshot create "$vol")
# (chunks 101 and 900 turn back into zeroes: changed, though not read)
check_eq "$(snap_field "$snap4" ChunksChanged)" "$nchanged" "ChunksChanged going back to v1"
assert_eq "$(snap_field "$snap4" BytesNewStored)" 0 "BytesNewStored going back to v1"
assert_eq "$(stat_field StoredBytes)" "$stored1" "stored bytes going back to v1"
kiln snapshot diff "$snap3" "$snap4" >"$TMPDIR/diff"
assert_eq "$(cat "$TMPDIR/diff")" "${expected%$'\n'}" "snapshot diff $snap3 $snap4"
cmp_snapshot "$snap4" "$v1"
cmp_snapshot "$snap2" "$v2"
cmp_volume "$vol" "$v1"
verify_clean
finish
