#!/bin/bash
# Damage is not garbage. A region whose catalog is damaged (a b-tree page
# overwritten), removed or emptied, or whose chunk index lost records
# (removed, cut short), must not let `kiln store gc` take what the lost
# records named: gc refuses and removes nothing, and verify says what is
# wrong. Before these checks, gc took every manifest, volume and pack for
# garbage. Also: verify names a completed snapshot whose manifest is
# gone, and an import whose sparse source is cut short while it is read
# fails and imports nothing (the chunks past the new end read as holes,
# not as short reads).
source "$(dirname "$0")/functions.sh"
requires sqlite3 cmp truncate

new_store
make_random "$TMPDIR/a.raw" 4M damage-a
make_random "$TMPDIR/b.raw" 3M damage-b
vol=$(kiln volume import "$TMPDIR/a.raw")
s1=$(kiln snapshot create "$vol")
cow=$(kiln volume create --snapshot-id "$s1")
vb=$(kiln volume import "$TMPDIR/b.raw")
s2=$(kiln snapshot create "$vb")
R=$KILN_STORE/regions/us-east-1
verify_clean
cp -a "$KILN_STORE" "$TMPDIR/good"
# what gc would remove: manifests, volume files and packs
files() { (cd "$R" && find manifests volumes packs -type f | sort | xargs md5sum); }
files >"$TMPDIR/files.good"

# restore: the store as it was, and it reads as it did
restore() {
	rm -rf "$KILN_STORE"
	cp -a "$TMPDIR/good" "$KILN_STORE"
}
# untouched WHAT: gc removed nothing, and once the damage is undone the
# snapshots read as they did
untouched() {
	files >"$TMPDIR/files.now"
	cmp -s "$TMPDIR/files.good" "$TMPDIR/files.now" ||
		fail "$1 changed the region's files: $(diff "$TMPDIR/files.good" "$TMPDIR/files.now" | head -5)"
}

# ---- a damaged catalog -------------------------------------------------------
# Overwrite the first byte of the pages of the unique indexes on volumes and
# snapshots: SQLite finds them malformed only when it walks them.
db=$R/catalog.db
for t in volumes snapshots; do
	page=$(sqlite3 "$db" "select rootpage from sqlite_master where name = 'sqlite_autoindex_${t}_1'")
	[ -n "$page" ] || fail "no index page for $t in $db"
	printf '\377' | dd of="$db" bs=1 seek=$(((page - 1) * 4096)) conv=notrunc status=none
done
expect_fail kiln store gc
[[ $ERR == *"region us-east-1 is damaged"*"nothing was changed"* ]] || fail "gc with a damaged catalog: $ERR"
untouched "gc with a damaged catalog"
expect_fail kiln store verify --output json
assert_eq "$(json "$TMPDIR/.stdout" "j['BadCatalog']")" True "BadCatalog of verify with a damaged catalog"
expect_fail kiln store verify
grep -q "region us-east-1: the catalog (catalog.db) is damaged" "$TMPDIR/.stdout" ||
	fail "verify does not name the damaged catalog: $(cat "$TMPDIR/.stdout")"
restore
verify_clean

# ---- a catalog removed, or emptied ---------------------------------------------
for how in removed emptied; do
	if [ $how = removed ]; then
		rm -f "$db" "$db-wal" "$db-shm"
	else
		: >"$db"
		rm -f "$db-wal"
	fi
	expect_fail kiln store gc
	[[ $ERR == *"region us-east-1 of store"*"is damaged"*"nothing was changed"* ]] ||
		fail "gc with the catalog $how: $ERR"
	untouched "gc with the catalog $how"
	expect_fail kiln volume describe
	[[ $ERR == *"is damaged"* ]] || fail "volume describe with the catalog $how: $ERR"
	if [ $how = removed ]; then
		[ ! -e "$db" ] || fail "opening the region made a new, empty catalog where it had been removed"
	else
		assert_eq "$(stat -c %s "$db")" 0 "size of the emptied catalog after kiln ran"
	fi
	restore
done
verify_clean

# ---- a chunk index that lost records ---------------------------------------
for how in removed cut; do
	if [ $how = removed ]; then
		rm -f "$R/index"
	else
		truncate -s 100 "$R/index"     # past the header, into the first record
	fi
	expect_fail kiln store gc
	[[ $ERR == *"a chunk the index lacks"* ]] || fail "gc with the index $how: $ERR"
	untouched "gc with the index $how"
	cp "$TMPDIR/good/regions/us-east-1/index" "$R/index"
	verify_clean
	cmp_snapshot "$s1" "$TMPDIR/a.raw"
	cmp_snapshot "$s2" "$TMPDIR/b.raw"
done

# ---- a completed snapshot without its manifest ----------------------------------
rm "$R/manifests/$s2.manifest"
expect_fail kiln store verify --output json
assert_eq "$(json "$TMPDIR/.stdout" "[(p['Problem'], p['Snapshots']) for p in j['Problems']]")" \
	"[('manifest is missing', ['$s2'])]" "verify with the manifest of $s2 gone"
expect_fail kiln store verify
grep -q "region us-east-1: manifest is missing: $s2" "$TMPDIR/.stdout" ||
	fail "verify does not name $s2's missing manifest: $(cat "$TMPDIR/.stdout")"
restore
verify_clean
cmp_volume "$cow" "$TMPDIR/a.raw"

# ---- a sparse source cut short while it is read ------------------------------------
# The import waits at its halfway point (KILN_STALL_POINT) while the file
# is cut to 45 MiB: the data at 40 MiB is still read, and after it the
# file reads as a hole to its end (the data at 60 MiB is gone), with no
# short read to tell.
truncate -s 64M "$TMPDIR/sparse.raw"
for off in 0 20 40 60; do
	dd if="$TMPDIR/a.raw" of="$TMPDIR/sparse.raw" bs=1M count=1 seek=$off conv=notrunc status=none
done
before=$(kiln volume describe --output json | json /dev/stdin "len(j['Volumes'])")
packs=$(stat_field PackBytes)
KILN_STALL_POINT=import:half:2 kiln volume import "$TMPDIR/sparse.raw" >"$TMPDIR/imp.out" 2>"$TMPDIR/imp.err" &
imp=$!
sleep 1
truncate -s 45M "$TMPDIR/sparse.raw"
rc=0
wait $imp || rc=$?
[ $rc -ne 0 ] || fail "an import whose source was cut from 64 to 45 MiB while it was read succeeded: $(cat "$TMPDIR/imp.out")"
grep -q "shrank" "$TMPDIR/imp.err" || fail "an import of a source cut short: $(cat "$TMPDIR/imp.err")"
assert_eq "$(kiln volume describe --output json | json /dev/stdin "len(j['Volumes'])")" "$before" \
	"volumes after an import of a source cut short"
assert_eq "$(stat_field PackBytes)" "$packs" "PackBytes after an import of a source cut short"
verify_clean
finish
