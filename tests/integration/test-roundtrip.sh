#!/bin/bash
# Import -> snapshot -> export gives back the image byte for byte: sparse,
# random and mixed images, sizes that are and are not a multiple of the
# chunk size (5 MiB + 12345 bytes, one chunk + 1 byte), chunk sizes 4K,
# 64K and 1M; the export of a sparse image is sparse; and the pread/pwrite
# backend (KILN_IO=sync) gives exactly the same chunks and bytes.
source "$(dirname "$0")/functions.sh"
requires openssl cmp stat

big=$((5 * 1024 * 1024 + 12345))

# allocated bytes of a file
allocated() {
	echo $(($(stat -c '%b * %B' "$1")))
}

roundtrip() { # KIND SIZE CHUNK
	local kind=$1 size=$2 cs=$3 img=$TMPDIR/$1-$2.img vol snap out
	case $kind in
	random) make_random "$img" "$size" "rt$size" ;;
	mixed) make_mixed "$img" "$size" ;;
	sparse)
		if [ "$size" -gt $((cs * 4)) ]; then
			make_sparse "$img" "$size"
		else
			# holes everywhere but the one byte past the first chunk
			rm -f "$img"
			truncate -s "$size" "$img"
			printf '\x5a' | dd of="$img" bs=1 seek=$((size - 1)) conv=notrunc status=none
		fi
		;;
	esac
	[ "$(stat -c %s "$img")" -eq "$size" ] || fail "test image $img has the wrong size"

	vol=$(kiln volume import "$img")
	assert_id vol "$vol"
	assert_eq "$(vol_field "$vol" SizeBytes)" "$size" "size of $vol ($kind, chunk $cs)"
	assert_eq "$(vol_field "$vol" ChunkSize)" "$cs" "chunk size of $vol"
	snap=$(kiln snapshot create "$vol")
	assert_id snap "$snap"
	assert_eq "$(snap_field "$snap" State)" completed "state of $snap"
	assert_eq "$(snap_field "$snap" SizeBytes)" "$size" "size of $snap"
	assert_eq "$(snap_field "$snap" ChunksTotal)" $(((size + cs - 1) / cs)) "chunks of $snap"

	out=$TMPDIR/out.img
	rm -f "$out"
	kiln snapshot export "$snap" "$out"
	cmp "$out" "$img" || fail "snapshot export of $kind $size (chunk $cs) differs"
	assert_eq "$(stat -c %s "$out")" "$size" "size of the snapshot export"
	if [ "$kind" = sparse ]; then
		local a
		a=$(allocated "$out")
		[ "$a" -lt "$size" ] || fail "export of a sparse image is not sparse ($a of $size bytes)"
		# three islands of 5000 bytes touch at most 6 chunks
		[ "$a" -le $((6 * (cs > 4096 ? cs : 4096))) ] ||
			fail "export of a sparse image allocates $a bytes (chunk $cs)"
	fi

	# exporting over an existing, longer, non-zero file leaves nothing behind
	make_random "$out" $((size + 70000)) junk
	kiln volume export "$vol" "$out"
	cmp "$out" "$img" || fail "volume export of $kind $size (chunk $cs) differs"

	# and the same with the pread/pwrite backend, into the same store:
	# the same chunk ids, so nothing new is stored
	local stored
	stored=$(stat_field StoredBytes)
	vol=$(KILN_IO=sync kiln volume import "$img")
	snap=$(KILN_IO=sync kiln snapshot create "$vol")
	assert_eq "$(stat_field StoredBytes)" "$stored" "stored bytes after a KILN_IO=sync import of the same image"
	rm -f "$out"
	KILN_IO=sync kiln snapshot export "$snap" "$out"
	cmp "$out" "$img" || fail "KILN_IO=sync snapshot export of $kind $size (chunk $cs) differs"
	KILN_IO=sync kiln volume export "$vol" "$out"
	cmp "$out" "$img" || fail "KILN_IO=sync volume export of $kind $size (chunk $cs) differs"
	rm -f "$img" "$out"
	echo "ok: $kind $size bytes, chunk $cs"
}

# the backends really differ: KILN_DEBUG names the one in use
new_store
KILN_DEBUG=1 KILN_IO=sync kiln region list 2>"$TMPDIR/debug" >/dev/null
grep -q 'pread/pwrite' "$TMPDIR/debug" || fail "KILN_IO=sync does not select the pread/pwrite backend"

for cs in 4096 65536 1048576; do
	new_store --chunk-size "$cs"
	for kind in sparse random mixed; do
		roundtrip "$kind" "$big" "$cs"
		roundtrip "$kind" $((cs + 1)) "$cs"
	done
	verify_clean
done

# a sync-written store reads back with io_uring and the other way round
new_store
make_mixed "$TMPDIR/m.img" "$big"
vol=$(KILN_IO=sync kiln volume import "$TMPDIR/m.img")
snap=$(KILN_IO=sync kiln snapshot create "$vol")
cmp_snapshot "$snap" "$TMPDIR/m.img"
vol=$(kiln volume create --size 6M)
kiln volume import "$TMPDIR/m.img" --volume-id "$vol" >/dev/null
snap=$(kiln snapshot create "$vol")
truncate -s 6M "$TMPDIR/m.img"
KILN_IO=sync cmp_snapshot "$snap" "$TMPDIR/m.img"
echo PASS
