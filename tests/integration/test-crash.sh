#!/bin/bash
# Crashes: at every fault-injection point (KILN_CRASH_POINT), and with
# kill -9 at random moments during import and snapshot of a 200 MiB image.
# After each: the command died of SIGKILL; `store verify` is clean; every
# snapshot completed before exports byte for byte and no other snapshot
# is listed (one interrupted after the catalog commit is listed completed
# and exports right); the same command run again succeeds; gc reclaims
# what the crash left. And DESIGN rule 3: a crash during `import
# --volume-id` never lets a later snapshot miss a change.
source "$(dirname "$0")/functions.sh"
requires openssl cmp shuf

cs=65536
size=$((8 * 1024 * 1024))       # 2 batches of 64 chunks: import:half fires
declare -A want                 # snapshot or volume id -> its image file

new_store

# Every snapshot and volume we know of exports as its image; no snapshot
# we do not know of is listed (completed or pending); verify is clean.
check_store() { # WHAT
	local id extra=""
	verify_clean
	for id in $(snapshot_ids); do
		[ -n "${want[$id]:-}" ] || extra+="$id ($(snap_field "$id" State)) "
	done
	# an interrupted snapshot must not be listed, not even as pending
	check_eq "$extra" "" "snapshots listed after $1 besides the completed ones"
	for id in "${!want[@]}"; do
		case $id in
		snap-*) cmp_snapshot "$id" "${want[$id]}" ;;
		vol-*) cmp_volume "$id" "${want[$id]}" ;;
		esac
	done
	assert_eq "$(kiln volume describe --output json | /usr/bin/python3 -c \
		'import json, sys; print(" ".join(sorted(v["VolumeId"] for v in json.load(sys.stdin)["Volumes"])))')" \
		"$(for id in "${!want[@]}"; do [[ $id == vol-* ]] && echo "$id"; done | sort | tr '\n' ' ' |
			sed 's/ $//')" "volumes listed after $1"
}

# After gc, the packs hold exactly the indexed records: nothing a crash
# left behind survives (16 bytes of header per pack).
check_no_garbage() { # WHAT
	local n
	kiln store gc >/dev/null
	n=$(find "$KILN_STORE/regions/us-east-1/packs" -name '*.pack' | wc -l)
	assert_eq "$(stat_field PackBytes)" $(($(stat_field StoredBytes) + 16 * n)) \
		"pack bytes after gc, after $1"
	assert_eq "$(find "$KILN_STORE/regions/us-east-1" -name '.*.tmp')" "" "temporary files after $1"
}

make_random "$TMPDIR/base.img" $size base
vol=$(kiln volume import "$TMPDIR/base.img")
s=$(kiln snapshot create "$vol")
want[$s]=$TMPDIR/base.img
want[$vol]=$TMPDIR/base.img
check_store setup

# ---- import:* --------------------------------------------------------------
for point in import:half import:chunks-stored; do
	img=$TMPDIR/$point.img
	make_random "$img" $size "$point"
	expect_killed env KILN_CRASH_POINT=$point "$KILN" volume import "$img"
	assert_eq "$(cat "$TMPDIR/.stdout")" "" "output of the import killed at $point"
	check_store "$point"
	stored=$(stat_field StoredBytes)
	v=$(kiln volume import "$img")
	assert_id vol "$v"
	want[$v]=$img
	if [ $point = import:chunks-stored ]; then
		# the chunks were durable before the crash: nothing to store again
		assert_eq "$(stat_field StoredBytes)" "$stored" "stored bytes of the import after $point"
	fi
	s=$(kiln snapshot create "$v")
	want[$s]=$img
	check_store "import after $point"
	echo "ok: $point"
done
check_no_garbage "import crashes"

# ---- cs:* and snapshot:* during snapshot create ---------------------------
prev=$TMPDIR/base.img
last_snap=""
for id in "${!want[@]}"; do
	[ "${want[$id]}" = "$prev" ] && [[ $id == snap-* ]] && last_snap=$id
done
n=0
for point in cs:pack-synced cs:index-synced snapshot:manifest-written snapshot:completed; do
	n=$((n + 1))
	img=$TMPDIR/$point.img
	cp "$prev" "$img"
	overwrite "$img" $((n * 7 * cs)) $((3 * cs)) "$point"      # 3 whole chunks
	overwrite "$img" $((120 * cs + 1000)) 100 "$point-b"      # and a bit of one more
	kiln volume import "$img" --volume-id "$vol" >/dev/null
	want[$vol]=$img
	expect_killed env KILN_CRASH_POINT=$point "$KILN" snapshot create "$vol"
	if [ $point = snapshot:completed ]; then
		# after the catalog commit: the snapshot exists, whole
		new=$(snapshot_ids | grep -vxF -f <(printf '%s\n' "${!want[@]}")) ||
			fail "no snapshot after a crash at $point"
		assert_id snap "$new"
		assert_eq "$(snap_field "$new" State)" completed "state of the snapshot killed at $point"
		want[$new]=$img
	fi
	check_store "$point"
	s=$(kiln snapshot create "$vol")
	assert_id snap "$s"
	# the crash lost no dirty bit: the rerun read every changed chunk. After
	# snapshot:completed the changes are in that snapshot, the rerun's
	# parent: nothing changed since (its export is checked all the same).
	if [ $point = snapshot:completed ]; then
		assert_eq "$(snap_field "$s" ChunksChanged)" 0 "chunks changed since the snapshot completed at $point"
	else
		[ "$(snap_field "$s" ChunksChanged)" -ge 4 ] ||
			fail "snapshot after $point read $(snap_field "$s" ChunksChanged) chunks, 4 changed"
	fi
	if [ $point = snapshot:completed ]; then
		# the volume's last snapshot is the one completed at the crash
		assert_eq "$(vol_field "$vol" LastSnapshotId)" "$s" "LastSnapshotId after the rerun"
		check_eq "$(snap_field "$s" ParentSnapshotId)" "$new" \
			"ParentSnapshotId of the snapshot after one completed at $point"
	else
		assert_eq "$(snap_field "$s" ParentSnapshotId)" "$last_snap" "ParentSnapshotId after $point"
	fi
	want[$s]=$img
	last_snap=$s
	check_store "snapshot after $point"
	prev=$img
	echo "ok: $point"
done
check_no_garbage "snapshot crashes"

# ---- gc:* -----------------------------------------------------------------
for point in gc:pack-written gc:index-written gc:pack-removed; do
	# a snapshot with 5 chunks of its own, deleted: gc has work
	img=$TMPDIR/$point.img
	cp "$prev" "$img"
	overwrite "$img" $((100 * cs)) $((5 * cs)) "$point"
	kiln volume import "$img" --volume-id "$vol" >/dev/null
	s=$(kiln snapshot create "$vol")
	kiln volume import "$prev" --volume-id "$vol" >/dev/null
	s2=$(kiln snapshot create "$vol")
	want[$s2]=$prev
	want[$vol]=$prev
	kiln snapshot delete "$s"
	stored=$(stat_field StoredBytes)
	expect_killed env KILN_CRASH_POINT=$point "$KILN" store gc --region us-east-1  # the region with the work
	check_store "$point"
	kiln store gc --output json >"$TMPDIR/gc.json"
	after=$(stat_field StoredBytes)
	assert_eq "$after" $((stored - 5 * (cs + 40))) "stored bytes after the gc that follows $point"
	check_store "gc after $point"
	check_no_garbage "$point"
	echo "ok: $point"
done

# ---- kill -9 at random moments: import and snapshot of 200 MiB -------------
big=$TMPDIR/big.img
make_random "$big" 200M big
for round in 1 2 3; do
	"$KILN" volume import "$big" >"$TMPDIR/kill.out" 2>&1 &
	pid=$!
	delay=$(shuf -i 50-300 -n 1)
	sleep "0.$(printf '%03d' "$delay")"        # the kill delay, not a wait
	kill -9 "$pid" 2>/dev/null || true
	rc=0
	wait "$pid" || rc=$?
	echo "import killed after ${delay} ms: exit $rc"
	if [ $rc -eq 0 ]; then
		want[$(cat "$TMPDIR/kill.out")]=$big
	else
		assert_eq $rc 137 "exit of the killed import"
		# it may have finished all but printing: any new volume is whole
		for v in $(kiln volume describe --output json | /usr/bin/python3 -c \
			'import json, sys; print(" ".join(v["VolumeId"] for v in json.load(sys.stdin)["Volumes"]))'); do
			[ -n "${want[$v]:-}" ] || want[$v]=$big
		done
	fi
	check_store "import killed after $delay ms"
done

big2=$TMPDIR/big2.img
make_random "$big2" 200M big2
bvol=$(kiln volume create --size 200M)
kiln volume import "$big2" --volume-id "$bvol" >/dev/null
want[$bvol]=$big2
for round in 1 2 3; do
	"$KILN" snapshot create "$bvol" >"$TMPDIR/kill.out" 2>&1 &
	pid=$!
	delay=$(shuf -i 50-300 -n 1)
	sleep "0.$(printf '%03d' "$delay")"
	kill -9 "$pid" 2>/dev/null || true
	rc=0
	wait "$pid" || rc=$?
	echo "snapshot killed after ${delay} ms: exit $rc"
	if [ $rc -eq 0 ]; then
		want[$(cat "$TMPDIR/kill.out")]=$big2
	else
		assert_eq $rc 137 "exit of the killed snapshot"
		new=$(snapshot_ids | grep -vxF -f <(printf '%s\n' "${!want[@]}")) || true
		if [ -n "$new" ] && [ "$(snap_field "$new" State)" = completed ]; then
			want[$new]=$big2      # killed after the catalog commit
		fi
	fi
	check_store "snapshot killed after $delay ms"
done
s=$(kiln snapshot create "$bvol")
want[$s]=$big2
check_store "a snapshot after the kills"
check_no_garbage "the kills"

# ---- DESIGN rule 3: import --volume-id interrupted ---------------------------
r1=$TMPDIR/r1.img r2=$TMPDIR/r2.img
make_random "$r1" $size r1
cp "$r1" "$r2"
for ((c = 0; c < size / cs; c += 4)); do          # every 4th chunk, end to end
	overwrite "$r2" $((c * cs + c)) 100 "r2-$c"
done
for variant in rerun snapshot-first; do
	rv=$(kiln volume create --size $((size / 1024 / 1024))M)
	kiln volume import "$r1" --volume-id "$rv" >/dev/null          # every chunk LOCAL
	s=$(kiln snapshot create "$rv")
	want[$s]=$r1
	expect_killed env KILN_CRASH_POINT=import:half "$KILN" volume import "$r2" --volume-id "$rv"
	unset "want[$rv]"
	verify_clean
	if [ $variant = snapshot-first ]; then
		# a snapshot of the volume as the crash left it: what it reads
		kiln volume export "$rv" "$TMPDIR/crashed.img"
		s=$(kiln snapshot create "$rv")
		cmp_snapshot "$s" "$TMPDIR/crashed.img"
		# every chunk is r1's or r2's, and the import got somewhere
		/usr/bin/python3 - "$TMPDIR/crashed.img" "$r1" "$r2" $cs <<'EOF'
import sys
x, a, b, cs = open(sys.argv[1], "rb"), open(sys.argv[2], "rb"), open(sys.argv[3], "rb"), int(sys.argv[4])
changed = sum(1 for ca, cb in iter(lambda: (a.read(cs), b.read(cs)), (b"", b"")) if ca != cb)
a.seek(0)
b.seek(0)
new = torn = 0
while True:
    cx, ca, cb = x.read(cs), a.read(cs), b.read(cs)
    if not cx:
        break
    if cx != ca and cx != cb:
        torn += 1
    elif cx != ca:
        new += 1
assert torn == 0, "%d chunks are neither r1's nor r2's" % torn
assert 0 < new < changed, "%d of %d changed chunks after a crash half way" % (new, changed)
EOF
		want[$s]=$TMPDIR/crashed.img
	fi
	kiln volume import "$r2" --volume-id "$rv" >/dev/null
	s=$(kiln snapshot create "$rv")
	cmp_snapshot "$s" "$r2"
	cmp_volume "$rv" "$r2"
	want[$s]=$r2
	want[$rv]=$r2
	check_store "rule 3 ($variant)"
	echo "ok: rule 3, $variant"
done
check_no_garbage "everything"
finish
