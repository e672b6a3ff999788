#!/bin/bash
# Damaged store files are found, named, and never read as good data:
# one flipped byte in a chunk payload, a truncated pack, a damaged
# manifest. `store verify` fails and names the chunk and the snapshots
# that use it; exporting such a snapshot fails with a clear error; other
# snapshots still export; repaired files verify clean again.
source "$(dirname "$0")/functions.sh"
requires openssl cmp xxd

cs=65536
rec=$((40 + cs))        # header + raw payload: random chunks are stored raw
packs=regions/us-east-1/packs
v1=$TMPDIR/v1.img v2=$TMPDIR/v2.img w1=$TMPDIR/w1.img

new_store
make_random "$v1" $((32 * cs)) v1
cp "$v1" "$v2"
overwrite "$v2" $((5 * cs)) $((3 * cs)) v2          # chunks 5, 6, 7
make_random "$w1" $((16 * cs)) w1

vol=$(kiln volume import "$v1")                       # pack 1
s1=$(kiln snapshot create "$vol")
kiln volume import "$v2" --volume-id "$vol" >/dev/null
s2=$(kiln snapshot create "$vol")                     # pack 2: chunks 5, 6, 7 of v2
wvol=$(kiln volume import "$w1")                      # pack 3
sw=$(kiln snapshot create "$wvol")
pack=$KILN_STORE/$packs/00000002.pack
[ -f "$pack" ] || fail "no pack $pack: $(ls "$KILN_STORE/$packs")"
assert_eq "$(stat -c %s "$pack")" $((16 + 3 * rec)) "size of the pack of $s2"
verify_clean
cp "$pack" "$TMPDIR/pack.good"

# ---- one flipped byte in the payload of the pack's first record ----------
first=$(hex_at "$pack" $((16 + 8)) 16)       # the chunk id in the record header
[ "$(hex_at "$pack" 16 4)" = 4b43484b ] || fail "no record magic at offset 16 of $pack"
flip_byte "$pack" $((16 + 40 + 1000))

expect_fail kiln store verify
grep -q "corrupt chunk $first" "$TMPDIR/.stdout" || fail "verify does not name chunk $first: $(cat "$TMPDIR/.stdout")"
line=$(grep "corrupt chunk $first" "$TMPDIR/.stdout")
[[ $line == *"$s2"* ]] || fail "verify does not name $s2 as a user of $first: $line"
[[ $line != *"$s1"* && $line != *"$sw"* ]] || fail "verify names a snapshot that does not use $first: $line"
assert_eq "$(grep -c 'corrupt chunk' "$TMPDIR/.stdout")" 1 "corrupt chunks listed by verify"
kiln store verify --output json >"$TMPDIR/verify.json" && fail "verify --output json exits 0 on a corrupt store"
assert_eq "$(json "$TMPDIR/verify.json" "j['CorruptChunks']")" 1 "CorruptChunks"
assert_eq "$(json "$TMPDIR/verify.json" "j['Problems'][0]['ChunkId']")" "$first" "ChunkId of the problem"
assert_eq "$(json "$TMPDIR/verify.json" "'$s2' in j['Problems'][0]['Snapshots']")" True "$s2 among the problem's snapshots"
assert_eq "$(json "$TMPDIR/verify.json" "'$s1' in j['Problems'][0]['Snapshots']")" False "$s1 among the problem's snapshots"
assert_eq "$(json "$TMPDIR/verify.json" "j['Problems'][0]['Volumes']")" "['$vol']" \
	"volumes whose parent manifest holds $first"

rm -f "$TMPDIR/out.img"
expect_fail kiln snapshot export "$s2" "$TMPDIR/out.img"
[[ $ERR == *"$s2"* && $ERR == *corrupt* ]] || fail "unclear error from exporting $s2: $ERR"
[ ! -e "$TMPDIR/out.img" ] || fail "a failed export of $s2 left $TMPDIR/out.img"
# an export that fails leaves the file it would have replaced as it was,
# through a symbolic link too, and no temporary file beside it
mkdir "$TMPDIR/keep"
cp "$w1" "$TMPDIR/keep/old.img"
ln -s old.img "$TMPDIR/keep/link.img"
for target in old.img link.img; do
	expect_fail kiln snapshot export "$s2" "$TMPDIR/keep/$target"
	cmp "$TMPDIR/keep/old.img" "$w1" || fail "a failed export of $s2 to $target changed the file"
done
assert_eq "$(ls -A "$TMPDIR/keep" | tr '\n' ' ')" "link.img old.img " "files beside a failed export"
# and one that succeeds replaces the file as writing it would have: its
# mode and owner kept, a hard link written in place (both names see it),
# a dangling link creating the file it names, a long name taken
k=$TMPDIR/keep
chmod 0666 "$k/old.img"
chown nobody:nogroup "$k/old.img"
kiln snapshot export "$s1" "$k/link.img" || fail "export of $s1 through a link"
cmp "$k/old.img" "$v1" || fail "export of $s1 through a link to old.img"
[ -L "$k/link.img" ] || fail "the link an export went through is no longer a link"
assert_eq "$(stat -c '%a %U %G' "$k/old.img")" "666 nobody nogroup" "mode and owner of a file an export replaced"
ln "$k/old.img" "$k/hard.img"
kiln snapshot export "$sw" "$k/hard.img" || fail "export of $sw to a file with two links"
cmp "$k/old.img" "$w1" || fail "the other name of a file with two links does not show the export"
ln -s new.img "$k/dangling.img"
kiln snapshot export "$s1" "$k/dangling.img" || fail "export of $s1 through a dangling link"
cmp "$k/new.img" "$v1" || fail "export through a dangling link did not make the file it names"
long=$k/$(printf 'l%.0s' {1..250})
kiln snapshot export "$s1" "$long" || fail "export of $s1 to a 250-byte name"
cmp "$long" "$v1" || fail "export of $s1 to a 250-byte name"
rm -f "$k"/*
# the volume keeps its own copy of the chunks it changed, in its overlay
cmp_volume "$vol" "$v2"
cmp_snapshot "$s1" "$v1"
cmp_snapshot "$sw" "$w1"
cmp_volume "$wvol" "$w1"
# a CoW volume of s1 does not use the chunk either
cow=$(kiln volume create --snapshot-id "$s1")
cmp_volume "$cow" "$v1"

cp "$TMPDIR/pack.good" "$pack"
verify_clean
cmp_snapshot "$s2" "$v2"

# ---- a flipped byte in a record header ------------------------------------
flip_byte "$pack" $((16 + rec + 30))          # stored length of the second record
expect_fail kiln store verify
second=$(hex_at "$pack" $((16 + rec + 8)) 16)
grep "corrupt chunk $second" "$TMPDIR/.stdout" | grep -q "$s2" ||
	fail "verify does not name chunk $second and $s2: $(cat "$TMPDIR/.stdout")"
expect_fail kiln snapshot export "$s2" "$TMPDIR/out.img"
cp "$TMPDIR/pack.good" "$pack"

# ---- a pack that is a directory: named as such ------------------------------
rm "$pack"
mkdir "$pack"
expect_fail kiln store verify
assert_eq "$(grep -c "its pack packs/00000002.pack is not a file" "$TMPDIR/.stdout")" 3 \
	"chunks of a pack that is a directory"
rmdir "$pack"
cp "$TMPDIR/pack.good" "$pack"
verify_clean

# ---- a truncated pack: the last record loses its last 100 bytes ----------
last=$(hex_at "$pack" $((16 + 2 * rec + 8)) 16)
truncate -s -100 "$pack"
expect_fail kiln store verify
grep "corrupt chunk $last" "$TMPDIR/.stdout" | grep -q "$s2" ||
	fail "verify does not name the truncated chunk $last and $s2: $(cat "$TMPDIR/.stdout")"
assert_eq "$(grep -c 'corrupt chunk' "$TMPDIR/.stdout")" 1 "corrupt chunks listed for a truncated pack"
# ... and names the damaged file, so that one knows what to restore
check_eq "$(grep -c "00000002.pack" "$TMPDIR/.stdout")" 1 "verify output naming the truncated pack 00000002.pack"
expect_fail kiln snapshot export "$s2" "$TMPDIR/out.img"
[[ $ERR == *"$s2"* && $ERR == *corrupt* ]] || fail "unclear error from exporting $s2: $ERR"
cmp_snapshot "$s1" "$v1"
cmp_snapshot "$sw" "$w1"


# new data can still be snapshotted; a new snapshot that inherits the
# damaged chunk is named by verify too
w2=$TMPDIR/w2.img
cp "$w1" "$w2"
overwrite "$w2" $((2 * cs)) 5000 w2
kiln volume import "$w2" --volume-id "$wvol" >/dev/null
sw2=$(kiln snapshot create "$wvol")
cmp_snapshot "$sw2" "$w2"
v3=$TMPDIR/v3.img
cp "$v2" "$v3"
overwrite "$v3" $((20 * cs)) 10 v3
kiln volume import "$v3" --volume-id "$vol" >/dev/null
s3=$(kiln snapshot create "$vol")
assert_eq "$(snap_field "$s3" State)" completed "state of $s3"
expect_fail kiln store verify
grep "corrupt chunk $last" "$TMPDIR/.stdout" | grep -q "$s3" ||
	fail "verify does not name $s3, which inherits $last: $(cat "$TMPDIR/.stdout")"
cp "$TMPDIR/pack.good" "$pack"
verify_clean
cmp_snapshot "$s3" "$v3"
cmp_snapshot "$s2" "$v2"

# ---- a damaged manifest ---------------------------------------------------
man=$KILN_STORE/regions/us-east-1/manifests/$s1.manifest
cp "$man" "$TMPDIR/manifest.good"
flip_byte "$man" 100
expect_fail kiln store verify
grep -q "$s1" "$TMPDIR/.stdout" || fail "verify does not name the snapshot of a damaged manifest: $(cat "$TMPDIR/.stdout")"
kiln store verify --output json >"$TMPDIR/verify.json" || true
# the manifest and its hard link, the parent of the CoW volume of s1
assert_eq "$(json "$TMPDIR/verify.json" "j['BadManifests']")" 2 "BadManifests"
assert_eq "$(json "$TMPDIR/verify.json" "sorted(s for p in j['Problems'] for s in p['Snapshots'])")" \
	"['$s1']" "snapshots of the damaged manifest"
assert_eq "$(json "$TMPDIR/verify.json" "sorted(s for p in j['Problems'] for s in p['Volumes'])")" \
	"['$cow']" "volumes whose parent is the damaged manifest"
expect_fail kiln volume export "$cow" "$TMPDIR/out.img"
[[ $ERR == *"$cow"* && $ERR == *corrupt* ]] || fail "unclear error from exporting $cow: $ERR"
expect_fail kiln snapshot export "$s1" "$TMPDIR/out.img"
[[ $ERR == *"$s1"* && $ERR == *corrupt* ]] || fail "unclear error from exporting $s1: $ERR"
cmp_snapshot "$s2" "$v2"
cp "$TMPDIR/manifest.good" "$man"
verify_clean
cmp_snapshot "$s1" "$v1"

# ---- a flipped byte in a zstd-compressed chunk ----------------------------
t1=$TMPDIR/t1.img
{ yes "kiln verify text" || true; } | head -c $((4 * cs)) >"$t1"
tvol=$(kiln volume import "$t1")
st=$(kiln snapshot create "$tvol")
pack=$KILN_STORE/$packs/$(ls "$KILN_STORE/$packs" | sort | tail -n 1)
flags=$(hex_at "$pack" $((16 + 6)) 2)
assert_eq "$flags" 0101 "flags (CS_FLAG_ZSTD, zstd level 1; little-endian) of the text chunk's record"
[ "$(stat -c %s "$pack")" -lt $((16 + 40 + cs / 4)) ] || fail "the text chunk did not compress"
chunk=$(hex_at "$pack" $((16 + 8)) 16)
flip_byte "$pack" $((16 + 40 + 12))
expect_fail kiln store verify
grep "corrupt chunk $chunk" "$TMPDIR/.stdout" | grep -q "$st" ||
	fail "verify does not name the compressed chunk $chunk and $st: $(cat "$TMPDIR/.stdout")"
expect_fail kiln snapshot export "$st" "$TMPDIR/out.img"
[[ $ERR == *"$st"* && $ERR == *corrupt* ]] || fail "unclear error from exporting $st: $ERR"
cmp_snapshot "$s1" "$v1"
flip_byte "$pack" $((16 + 40 + 12))
verify_clean
cmp_snapshot "$st" "$t1"

# ---- verify beside deletes -------------------------------------------------
# verify takes no lock: snapshots deleted while it runs (row first, then
# the manifest) are not problems. Without the re-checks, about one verify
# in ten here reported a missing or unreadable manifest.
make_random "$TMPDIR/tiny.raw" 64K tiny
tv=$(kiln volume import "$TMPDIR/tiny.raw")
for i in $(seq 150); do kiln snapshot create "$tv"; done >"$TMPDIR/tiny.snaps"
# verify_beside PID WHAT MIN: verify in a loop until PID ends; every run
# must be clean, PID must succeed, and at least MIN runs must have run
verify_beside() {
	local n=0
	while kill -0 "$1" 2>/dev/null; do
		kiln store verify >"$TMPDIR/race.out" 2>&1 || fail "verify beside $2: $(head -5 "$TMPDIR/race.out")"
		n=$((n + 1))
	done
	wait "$1" || fail "the $2 beside verify failed"
	echo "$n verifies ran beside $2"
	[ $n -ge "$3" ] || fail "only $n verifies ran beside $2: the test tests little"
	verify_clean
}
(while read -r s; do kiln snapshot delete "$s"; done <"$TMPDIR/tiny.snaps") &
verify_beside $! deletes 5

# ... and beside imports (chunks stored after verify listed them) and gc
# (chunks moved to new packs, or gone, after it listed them). Without the
# re-checks, every verify here reported chunks missing from the store.
for i in 1 2 3; do make_random "$TMPDIR/churn$i.raw" 8M "churn$i"; done
(
	for round in 1 2 3 4; do
		for i in 1 2 3; do
			v=$(kiln volume import "$TMPDIR/churn$i.raw") && s=$(kiln snapshot create "$v") &&
				kiln volume delete "$v" && kiln snapshot delete "$s" || exit 1
		done
		kiln store gc >/dev/null || exit 1
	done
) &
verify_beside $! "imports, deletes and gc" 3
finish
