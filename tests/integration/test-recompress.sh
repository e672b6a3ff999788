#!/bin/bash
# kiln store recompress: chunks written at the store's level (1) are
# compressed again at a stronger one; the store gets smaller, every
# snapshot and volume exports byte for byte, kiln-nbd goes on serving a
# volume whose chunks moved under it, verify is clean, and a second
# run finds nothing to do. Only new chunks are worked on later. Bad levels
# are refused and change nothing; a corrupt chunk stops it with a clear
# error before anything changes; a crash at each of gc's points leaves
# the store whole, and the next run finishes the job.
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/nbd-functions.sh"
requires openssl cmp sha256sum nbdcopy

cs=65536

# Real text (C headers, licences) compresses better at 19 than at 1.
make_text() { # FILE SIZE
	# (cat dies of SIGPIPE when head has enough: not an error)
	{ find /usr/include /usr/share/common-licenses -type f -size -200k -print0 2>/dev/null |
		sort -z | xargs -0 cat || true; } | head -c "$2" >"$1"
	[ "$(stat -c %s "$1")" -eq "$2" ] || fail "not enough text for $1"
}

rc_json() { # ARGS...
	kiln store recompress --output json "$@" >"$TMPDIR/rc.json"
}
rc_field() {
	json "$TMPDIR/rc.json" "j['$1']"
}
files_state() {
	(cd "$region" && sha256sum index packs/*)
}

new_store
region=$KILN_STORE/regions/us-east-1
img1=$TMPDIR/v1.img img2=$TMPDIR/v2.img
make_text "$TMPDIR/text" $((48 * cs))
make_mixed "$img1" $((32 * cs))
cat "$TMPDIR/text" >>"$img1"                    # chunks 32-79: text
cp "$img1" "$img2"
overwrite "$img2" $((4 * cs)) $((2 * cs)) v2    # two random chunks differ

vol=$(kiln volume import "$img1")
s1=$(kiln snapshot create "$vol")
kiln volume import "$img2" --volume-id "$vol" >/dev/null
s2=$(kiln snapshot create "$vol")
unique=$(stat_field UniqueChunks)
stored=$(stat_field StoredBytes)
packs=$(stat_field PackBytes)

# ---- bad levels: refused, nothing changed ---------------------------------
files_state >"$TMPDIR/files.before"
for bad in 0 20 -8 abc 1.5 ""; do
	expect_fail kiln store recompress --zstd-level "$bad"
	[[ $ERR == *"invalid --zstd-level"* ]] || fail "recompress --zstd-level '$bad': $ERR"
done
files_state >"$TMPDIR/files.after"
cmp "$TMPDIR/files.before" "$TMPDIR/files.after" || fail "a refused recompress changed the store"

# ---- the first run does every chunk, and the store shrinks ----------------
# kiln-nbd serves a volume made from $s1 all along: its chunks are in the
# packs being replaced under it.
cow=$(kiln volume create --snapshot-id "$s1")
start_nbd
nbdcopy "$(nbd_uri "$cow")" "$TMPDIR/served.img"
cmp "$TMPDIR/served.img" "$img1" || fail "the served volume differs before recompress"
rc_json
assert_eq "$(rc_field ChunksRecompressed)" "$unique" "chunks recompressed by the first run"
assert_eq "$(rc_field ChunksKept)" "$unique" "chunks kept by the first run"
assert_eq "$(rc_field ChunksRemoved)" 0 "chunks removed by the first run"
after=$(stat_field StoredBytes)
[ "$after" -lt $((stored - stored / 50)) ] || fail "stored bytes $stored -> $after: not 2% smaller"
assert_eq "$(rc_field BytesFreed)" $((packs - $(stat_field PackBytes))) "bytes freed, against the stats"
cmp_snapshot "$s1" "$img1"
cmp_snapshot "$s2" "$img2"
cmp_volume "$vol" "$img2"
rm -f "$TMPDIR/served.img"
nbdcopy "$(nbd_uri "$cow")" "$TMPDIR/served.img"
cmp "$TMPDIR/served.img" "$img1" || fail "the served volume differs after recompress"
stop_nbd
kiln volume delete "$cow"
verify_clean

# ---- a second run, or a weaker level, has nothing to do --------------------
files_state >"$TMPDIR/files.before"
for level in 9 3; do
	rc_json --zstd-level $level
	assert_eq "$(rc_field ChunksRecompressed)" 0 "chunks recompressed again at $level"
	assert_eq "$(rc_field PacksWritten)" 0 "packs written again at $level"
	assert_eq "$(rc_field BytesFreed)" 0 "bytes freed again at $level"
done
files_state >"$TMPDIR/files.after"
cmp "$TMPDIR/files.before" "$TMPDIR/files.after" || fail "a recompress with nothing to do changed the store"
[[ $(kiln store recompress) == "recompressed 0 chunks at zstd level 9; removed 0 chunks"* ]] ||
	fail "text output of an idle recompress: $(kiln store recompress)"

# ---- later, only the new chunks are worked on; gc's work is done too ------
img3=$TMPDIR/v3.img
cp "$img2" "$img3"
overwrite "$img3" $((40 * cs)) $((3 * cs)) v3   # three text chunks become random
kiln volume import "$img3" --volume-id "$vol" >/dev/null
s3=$(kiln snapshot create "$vol")
assert_eq "$(snap_field "$s3" ChunksNew)" 3 "ChunksNew of $s3"
make_random "$TMPDIR/lone.img" $((2 * cs)) lone
lone=$(kiln volume import "$TMPDIR/lone.img")
kiln volume delete "$lone"                      # its two chunks go
rc_json
assert_eq "$(rc_field ChunksRecompressed)" 3 "chunks recompressed after three new ones"
assert_eq "$(rc_field ChunksRemoved)" 2 "chunks removed with $lone"
cmp_snapshot "$s1" "$img1"
cmp_snapshot "$s2" "$img2"
cmp_snapshot "$s3" "$img3"
verify_clean

# ---- a crash at each point: whole store, the next run finishes ------------
prev=$img3
for point in gc:pack-written gc:index-written gc:pack-removed; do
	img=$TMPDIR/$point.img
	cp "$prev" "$img"
	dd if="$TMPDIR/text" of="$img" bs=64K count=4 seek=8 conv=notrunc status=none
	for k in 0 1 2 3; do                        # four new text chunks
		overwrite "$img" $(((8 + k) * cs)) 100 "$point$k"
	done
	kiln volume import "$img" --volume-id "$vol" >/dev/null
	s=$(kiln snapshot create "$vol")
	assert_eq "$(snap_field "$s" ChunksNew)" 4 "ChunksNew before $point"
	expect_killed env KILN_CRASH_POINT=$point "$KILN" store recompress --region us-east-1
	cmp_snapshot "$s" "$img"
	cmp_snapshot "$s2" "$img2"
	verify_clean
	# before the new index the old one stands, all four still to do;
	# after it, the work is done
	left=0
	[ $point = gc:pack-written ] && left=4
	rc_json
	assert_eq "$(rc_field ChunksRecompressed)" $left "chunks recompressed after $point"
	rc_json
	assert_eq "$(rc_field ChunksRecompressed)" 0 "chunks left to recompress after $point and a rerun"
	n=$(find "$region/packs" -name '*.pack' | wc -l)
	assert_eq "$(stat_field PackBytes)" $(($(stat_field StoredBytes) + 16 * n)) "pack bytes after $point"
	cmp_snapshot "$s" "$img"
	verify_clean
	prev=$img
	echo "ok: $point"
done

# ---- a daemon across index replacements ------------------------------------
# gc and recompress replace the index by rename; kiln-nbd, which looks at
# the index only now and then, must take each one for a new index and read
# snapshots made since. (That a reused inode number cannot fool it is
# test_bug_reader_after_gc_reuses_index_inode, where the reuse is certain.)
start_nbd
for round in 1 2; do
	make_random "$TMPDIR/new.img" $((3 * cs)) "new-$round"
	nv=$(kiln volume import "$TMPDIR/new.img")
	ns=$(kiln snapshot create "$nv")
	nbdcopy "$(nbd_uri "$ns")" "$TMPDIR/new.read" || fail "round $round: kiln-nbd cannot read $ns"
	cmp "$TMPDIR/new.read" "$TMPDIR/new.img" || fail "round $round: kiln-nbd reads $ns wrong"
	for k in $(seq 1 6); do
		make_random "$TMPDIR/gone.img" $((2 * cs)) "gone-$round-$k"
		gone=$(kiln volume import "$TMPDIR/gone.img")
		kiln volume delete "$gone"
		if [ $((k % 2)) = 1 ]; then kiln store gc >/dev/null; else kiln store recompress >/dev/null; fi
	done
done
make_random "$TMPDIR/new.img" $((3 * cs)) last
nv=$(kiln volume import "$TMPDIR/new.img")
ns=$(kiln snapshot create "$nv")
nbdcopy "$(nbd_uri "$ns")" "$TMPDIR/new.read" || fail "kiln-nbd cannot read $ns"
cmp "$TMPDIR/new.read" "$TMPDIR/new.img" || fail "kiln-nbd reads $ns wrong"
stop_nbd
verify_clean

# ---- a corrupt chunk: a clear error, and nothing changes -------------------
img=$TMPDIR/corrupt.img
cp "$prev" "$img"
dd if="$TMPDIR/text" of="$img" bs=64K count=1 skip=20 seek=12 conv=notrunc status=none
overwrite "$img" $((12 * cs)) 100 corrupt
kiln volume import "$img" --volume-id "$vol" >/dev/null
s=$(kiln snapshot create "$vol")
assert_eq "$(snap_field "$s" ChunksNew)" 1 "ChunksNew of the snapshot to corrupt"
newest=$(ls "$region/packs" | sort | tail -1)
size=$(stat -c %s "$region/packs/$newest")
flip_byte "$region/packs/$newest" $((size - 100))  # inside the one record's zstd frame
files_state >"$TMPDIR/files.before"
expect_fail kiln store recompress
[[ $ERR == *"is damaged (a corrupt chunk"*"nothing was changed"* ]] || fail "recompress of a corrupt chunk: $ERR"
files_state >"$TMPDIR/files.after"
cmp "$TMPDIR/files.before" "$TMPDIR/files.after" || fail "a failed recompress changed the store"
cmp_snapshot "$s2" "$img2"
expect_fail kiln store verify
[[ $ERR == *"store verify found problems"* ]] || fail "verify after the flip: $ERR"

finish
