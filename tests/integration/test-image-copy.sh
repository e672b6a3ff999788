#!/bin/bash
# image copy (docs/IMAGES.md "copy"): a copy to eu-west-1 is a new image
# with new snapshots whose root exports byte for byte as the source's,
# owned by the caller (also when the source was only shared with it),
# without launch permissions, with the tags only given --copy-image-tags,
# recording SourceImageId and SourceImageRegion. Only the chunks the
# destination lacks move: a new version of an image that changed 3 chunks
# (2 alike) moves exactly the 2 new ones (ChunksMoved/ChunksPresent/
# BytesMoved of the copy report, and what eu-west-1 stores); a chunk the
# destination has is not even read (a damaged source copy of it does not
# matter). Each chunk that moves is checked against its id: a corrupt
# source chunk fails the copy (state failed, with the reason) and moves
# nothing bad; after the repair the same command completes it.
# kill -9 at copy:image-pending, copy:manifest-written and
# copy:chunks-committed (a store with 4 KiB chunks and 8192-chunk disks)
# leaves a failed image that the same command resumes (Resumed, committed
# chunks not moved again) and completes; `store verify` is clean and the
# copies export as their sources. `wait image-available` on an interrupted
# copy reports it failed.
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/image-functions.sh"
requires sha256sum openssl cmp flock

fixtures
new_store
cs=65536
rec=$((40 + cs))                # a stored random chunk: header and raw payload
EU=(--region eu-west-1)

copy() { # ARGS: kiln image copy --output json ARGS; prints the new id. What
	#   eu-west-1 stores grows by exactly the BytesMoved of the report.
	local before after
	before=$(stat_field StoredBytes eu-west-1)
	kiln image copy --output json "$@" >"$TMPDIR/.copy.json" || fail "image copy $* failed"
	after=$(stat_field StoredBytes eu-west-1)
	if [[ " $* " == *" eu-west-1 "* ]]; then
		assert_eq $((after - before)) "$(copy_field "c['BytesMoved']")" "bytes eu-west-1 stores more after image copy $*"
	fi
	json "$TMPDIR/.copy.json" "j['ImageId']"
}
root_snap() { # ID [ARGS]: the snapshot of its first mapping
	image_field "$1" "i['BlockDeviceMappings'][0]['Ebs']['SnapshotId']" "${@:2}"
}
data_chunks() { # FILE: its non-zero chunks of $cs bytes
	/usr/bin/python3 -c '
import sys
n, cs = 0, int(sys.argv[2])
with open(sys.argv[1], "rb") as f:
    for c in iter(lambda: f.read(cs), b""):
        n += c.count(0) != len(c)
print(n)' "$1" "$2"
}
verify_region() { # REGION: store verify of one region is clean
	kiln store verify --region "$1" --output json >"$TMPDIR/.verify.json" ||
		fail "store verify --region $1: $(cat "$TMPDIR/.verify.json")"
	assert_eq "$(json "$TMPDIR/.verify.json" "(j['CorruptChunks'], j['BadManifests'], j['Problems'])")" "(0, 0, [])" \
		"store verify --region $1"
}

vol=$(kiln volume import "$FIX/boot-bios.raw")
bios=$(kiln snapshot create "$vol")
P=$(register web-1 "$bios" --architecture x86_64 --tag env=prod Name=web --description "version 1")
kiln image modify-attribute "$P" --launch-permission "{\"Add\":[{\"UserId\":\"$OTHER\"}]}"
image_json "$P"
cp "$TMPDIR/.image.json" "$TMPDIR/P.json"
bios_chunks=$(data_chunks "$FIX/boot-bios.raw" $cs)

# ---- the first copy: everything moves ------------------------------------------
C=$(copy --source-region us-east-1 --source-image-id "$P" "${EU[@]}" --name web-1)
assert_id ami "$C"
[ "$C" != "$P" ] || fail "the copy kept the source's id"
assert_eq "$(copy_field "c['Snapshots'], c['ChunksTotal'], c['ChunksMoved'], c['ChunksPresent'], c['RawBytesMoved'], c['Resumed']")" \
	"(1, $bios_chunks, $bios_chunks, 0, $((bios_chunks * cs)), False)" "the report of the first copy"
[ "$(copy_field "c['BytesMoved']")" -gt 0 ] || fail "the first copy moved no bytes"
image_json "$C" "${EU[@]}"
i() { json "$TMPDIR/.image.json" "(lambda i: ($1))(j['Images'][0])"; }
assert_eq "$(i "i['Name'], i['OwnerId'], i['State'], i['Public'], i['SourceImageId'], i['SourceImageRegion']")" \
	"('web-1', '$OWNER', 'available', False, '$P', 'us-east-1')" "name, owner, state, public and source of the copy"
assert_eq "$(i "i['Tags']")" "[]" "tags of a copy without --copy-image-tags"
check_eq "$(i "i['Description']")" "" "the description of a copy without --description (help: 'default: none')"
for k in Architecture BootMode VirtualizationType RootDeviceName Probe; do
	assert_eq "$(i "i['$k']")" "$(json "$TMPDIR/P.json" "j['Images'][0]['$k']")" "$k of the copy"
done
csnap=$(i "i['BlockDeviceMappings'][0]['Ebs']['SnapshotId']")
assert_id snap "$csnap"
[ "$csnap" != "$bios" ] || fail "the copy kept the source's snapshot id"
assert_eq "$(i "i['BlockDeviceMappings']")" \
	"[{'DeviceName': '/dev/xvda', 'Ebs': {'SnapshotId': '$csnap', 'VolumeSize': 1, 'DeleteOnTermination': True, 'VolumeType': 'gp3'}}]" \
	"mappings of the copy"
assert_eq "$(kiln image describe-attribute "$C" "${EU[@]}" --attribute launchPermission --output json |
	json /dev/stdin "j['LaunchPermissions']")" "[]" "launch permissions of the copy (the source's: $OTHER)"
refused "image $C does not exist or is not yours to launch \(in region eu-west-1\)" \
	kiln image describe --image-ids "$C" "${EU[@]}" --account $OTHER
kiln snapshot describe "$csnap" "${EU[@]}" --output json >"$TMPDIR/csnap.json"
assert_eq "$(json "$TMPDIR/csnap.json" "[j['Snapshots'][0][k] for k in ('OwnerId', 'State', 'SizeBytes', 'ChunksData')]")" \
	"['$OWNER', 'completed', $(stat -c %s "$FIX/boot-bios.raw"), $bios_chunks]" "the copy's snapshot"
refused "snapshot $csnap belongs to another region" kiln snapshot describe "$csnap"
kiln snapshot export "$csnap" "$TMPDIR/c.raw" "${EU[@]}"
cmp "$TMPDIR/c.raw" "$FIX/boot-bios.raw" || fail "the copy's root snapshot differs from boot-bios.raw"
kiln wait image-available "$C" "${EU[@]}" --timeout 5 || fail "wait image-available on the copy"
image_json "$P"
cmp -s "$TMPDIR/.image.json" "$TMPDIR/P.json" || fail "the copy changed the source: $(diff "$TMPDIR/P.json" "$TMPDIR/.image.json")"
verify_region eu-west-1
echo "ok: first copy"

# ---- again, with its tags: nothing moves ---------------------------------------
C2=$(copy --source-region us-east-1 --source-image-id "$P" "${EU[@]}" --name web-1-tagged \
	--copy-image-tags --description "tagged copy")
assert_eq "$(copy_field "c['ChunksTotal'], c['ChunksMoved'], c['ChunksPresent'], c['BytesMoved'], c['RawBytesMoved']")" \
	"($bios_chunks, 0, $bios_chunks, 0, 0)" "the report of a second copy of the same image"
assert_eq "$(image_field "$C2" "i['Tags'], i['Description'], i['SourceImageId']" "${EU[@]}")" \
	"([{'Key': 'Name', 'Value': 'web'}, {'Key': 'env', 'Value': 'prod'}], 'tagged copy', '$P')" \
	"tags, description and source of a copy with --copy-image-tags"
c2snap=$(root_snap "$C2" "${EU[@]}")
[ "$c2snap" != "$csnap" ] && [ "$c2snap" != "$bios" ] || fail "the second copy reuses snapshot $c2snap"
cmp_snapshot_in() { # SNAP FILE ARGS
	rm -f "$TMPDIR/.export"
	kiln snapshot export "$1" "$TMPDIR/.export" "${@:3}" || fail "snapshot export $1 failed"
	cmp "$TMPDIR/.export" "$2" || fail "snapshot $1 differs from $2"
}
cmp_snapshot_in "$c2snap" "$FIX/boot-bios.raw" "${EU[@]}"
# the filters of copies
assert_eq "$(image_names "${EU[@]}" --filters Name=source-image-id,Values="$P" | tr '|' '\n' | sort | paste -sd ' ')" \
	"web-1 web-1-tagged" "the copies of P, by source-image-id"
assert_eq "$(image_names "${EU[@]}" --filters Name=source-image-region,Values='us-*' Name=tag:env,Values=prod)" \
	"web-1-tagged" "copies from us-* tagged env=prod"
echo "ok: tags"

# ---- what eu-west-1 has is not even read: a copy goes through while the
# source's copy of such a chunk is damaged (the first record of the pack
# boot-bios.raw was imported into) ----------------------------------------------
pack1=$KILN_STORE/regions/us-east-1/packs/00000001.pack
cp "$pack1" "$TMPDIR/pack1.good"
flip_byte "$pack1" $((16 + 40 + 10))
expect_fail kiln store verify --region us-east-1
C4=$(copy --source-region us-east-1 --source-image-id "$P" "${EU[@]}" --name web-1-damaged-source)
assert_eq "$(copy_field "c['ChunksMoved'], c['ChunksPresent']")" "(0, $bios_chunks)" \
	"the report of a copy whose chunks eu-west-1 has, from a damaged source"
cmp_snapshot_in "$(root_snap "$C4" "${EU[@]}")" "$FIX/boot-bios.raw" "${EU[@]}"
cp "$TMPDIR/pack1.good" "$pack1"
verify_region us-east-1
echo "ok: present chunks are not read"

# ---- a new version sharing most chunks: only the new ones move -------------------
cp "$FIX/boot-bios.raw" "$TMPDIR/v2.raw"
# 3 whole chunks past the first MiB of the partition, 2 of them alike:
# 2 new chunks, one of them twice in the disk
overwrite "$TMPDIR/v2.raw" $((100 * cs)) $cs v2-same
overwrite "$TMPDIR/v2.raw" $((200 * cs)) $cs v2-same
overwrite "$TMPDIR/v2.raw" $((201 * cs)) $cs v2-201
kiln volume import "$TMPDIR/v2.raw" --volume-id "$vol" >/dev/null
bios2=$(kiln snapshot create "$vol")
P2=$(register web-2 "$bios2" --architecture x86_64)
assert_eq "$(image_field "$P2" "i['BootMode']")" legacy-bios "boot mode of the new version"
v2_chunks=$(data_chunks "$TMPDIR/v2.raw" $cs)
C3=$(copy --source-region us-east-1 --source-image-id "$P2" "${EU[@]}" --name web-2)
assert_eq "$(copy_field "c['Snapshots'], c['ChunksTotal'], c['ChunksMoved'], c['ChunksPresent'], c['RawBytesMoved']")" \
	"(1, $v2_chunks, 2, $((v2_chunks - 2)), $((2 * cs)))" "the report of the copy of the new version"
assert_eq "$(copy_field "c['BytesMoved']")" $((2 * rec)) "bytes moved for 2 random chunks (stored raw)"
cmp_snapshot_in "$(root_snap "$C3" "${EU[@]}")" "$TMPDIR/v2.raw" "${EU[@]}"
cmp_snapshot_in "$csnap" "$FIX/boot-bios.raw" "${EU[@]}"
verify_region eu-west-1
echo "ok: new version"

# ---- every kind of mapping, the root not first: only snapshot ids change ----------
M=$(kiln image register --name mixed --architecture x86_64 --root-device-name /dev/sda1 --block-device-mappings \
	"[{\"DeviceName\":\"/dev/xvdz\",\"VirtualName\":\"ephemeral1\"},{\"DeviceName\":\"/dev/sda1\",\"Ebs\":{\"SnapshotId\":\"$bios2\",\"VolumeSize\":3,\"DeleteOnTermination\":false,\"VolumeType\":\"io2\"}},{\"DeviceName\":\"/dev/xvdb\",\"Ebs\":{\"VolumeSize\":5}},{\"DeviceName\":\"/dev/xvdc\",\"NoDevice\":\"\"},$(ebs /dev/xvdd "$bios")]")
MC=$(copy --source-region us-east-1 --source-image-id "$M" "${EU[@]}" --name mixed)
assert_eq "$(copy_field "c['Snapshots'], c['ChunksMoved']")" "(2, 0)" "snapshots and chunks of the copy of mixed"
msnaps=$(image_field "$MC" "' '.join(m['Ebs'].get('SnapshotId', '-') for m in i['BlockDeviceMappings'] if 'Ebs' in m)" "${EU[@]}")
read -r m1 m2 m3 <<<"$msnaps"
assert_eq "$m2" - "the empty Ebs mapping of the copy"
assert_id snap "$m1"
assert_id snap "$m3"
[ "$m1" != "$m3" ] && [ "$m1" != "$bios2" ] && [ "$m3" != "$bios" ] || fail "snapshots of the copy of mixed: $msnaps"
assert_eq "$(image_field "$MC" "i['RootDeviceName'], i['BlockDeviceMappings']" "${EU[@]}")" \
	"$(image_field "$M" "i['RootDeviceName'], i['BlockDeviceMappings']" | sed "s/$bios2/$m1/; s/$bios/$m3/")" \
	"the mappings of the copy of mixed, but for the snapshot ids"
cmp_snapshot_in "$m1" "$TMPDIR/v2.raw" "${EU[@]}"
cmp_snapshot_in "$m3" "$FIX/boot-bios.raw" "${EU[@]}"
echo "ok: every kind of mapping"

# ---- shared (not public) and public sources: the copy is the caller's ----------------
O=$(copy --source-region us-east-1 --source-image-id "$P" "${EU[@]}" --name mine-now --account $OTHER)
assert_eq "$(image_field "$O" "i['OwnerId'], i['Public'], i['SourceImageId'], i['Tags']" "${EU[@]}" --account $OTHER)" \
	"('$OTHER', False, '$P', [])" "owner, public, source, tags of $OTHER's copy of a shared image"
assert_eq "$(copy_field "c['ChunksMoved']")" 0 "chunks moved by $OTHER's copy (eu-west-1 has them all)"
osnap=$(root_snap "$O" "${EU[@]}" --account $OTHER)
assert_eq "$(kiln snapshot describe "$osnap" "${EU[@]}" --account $OTHER --output json | json /dev/stdin "j['Snapshots'][0]['OwnerId']")" \
	$OTHER "owner of the snapshot of $OTHER's copy"
expect_fail kiln snapshot describe "$osnap" "${EU[@]}"
[[ $ERR == *"snapshot $osnap does not exist"* ]] || fail "$OTHER's unshared snapshot, described by $OWNER: $ERR"
cmp_snapshot_in "$osnap" "$FIX/boot-bios.raw" "${EU[@]}" --account $OTHER
expect_fail kiln snapshot export "$osnap" "$TMPDIR/o.raw" "${EU[@]}"
[[ $ERR == *"snapshot $osnap does not exist"* ]] || fail "$OTHER's unshared snapshot, exported by $OWNER: $ERR"
expect_fail kiln snapshot diff "$osnap" "$osnap" "${EU[@]}"
[[ $ERR == *"snapshot $osnap does not exist"* ]] || fail "$OTHER's unshared snapshot, diffed by $OWNER: $ERR"
assert_eq "$(kiln image describe-attribute "$O" "${EU[@]}" --account $OTHER --attribute launchPermission --output json |
	json /dev/stdin "j['LaunchPermissions']")" "[]" "launch permissions of $OTHER's copy"
refused "image $O does not exist or is not yours to launch" kiln image describe --image-ids "$O" "${EU[@]}"
kiln image modify-attribute "$O" "${EU[@]}" --account $OTHER --description "now $OTHER's"
# a public image: anyone's copy is their own and private
kiln image modify-attribute "$P2" --launch-permission '{"Add":[{"Group":"all"}]}'
T=$(copy --source-region us-east-1 --source-image-id "$P2" "${EU[@]}" --name from-public --account $THIRD --copy-image-tags)
assert_eq "$(image_field "$T" "i['OwnerId'], i['Public'], i['SourceImageId']" "${EU[@]}" --account $THIRD)" \
	"('$THIRD', False, '$P2')" "owner, public, source of $THIRD's copy of a public image"
refused "image $T does not exist or is not yours to launch" kiln image describe --image-ids "$T" "${EU[@]}" --account $OTHER
# not shared any more: no copy
kiln image modify-attribute "$P" --launch-permission "{\"Remove\":[{\"UserId\":\"$OTHER\"}]}"
refused "image $P does not exist or is not yours to launch \(in region us-east-1\)" \
	kiln image copy --source-region us-east-1 --source-image-id "$P" "${EU[@]}" --name again --account $OTHER
echo "ok: shared and public"

# ---- bad copies: refused, nothing made -----------------------------------------
images_state "$TMPDIR/before"
refused "account $OWNER already has an image named 'web-1' in eu-west-1" \
	kiln image copy --source-region us-east-1 --source-image-id "$P" "${EU[@]}" --name web-1
refused "cannot copy image $P: invalid name 'a#b': 3 to 128 letters" kiln image copy --source-region us-east-1 --source-image-id "$P" "${EU[@]}" --name 'a#b'
refused "cannot copy image $P: invalid name 'ab': 3 to 128 letters" kiln image copy --source-region us-east-1 --source-image-id "$P" "${EU[@]}" --name ab
refused "image $C does not exist or is not yours to launch \(in region us-east-1\)" \
	kiln image copy --source-region us-east-1 --source-image-id "$C" "${EU[@]}" --name wrong-region
refused "invalid --source-region" kiln image copy --source-region 'us east' --source-image-id "$P" "${EU[@]}" --name x-y-z
refused "invalid image id" kiln image copy --source-region us-east-1 --source-image-id ami-123 "${EU[@]}" --name x-y-z
refused "description is too long" kiln image copy --source-region us-east-1 --source-image-id "$P" "${EU[@]}" \
	--name x-y-z --description "$(printf 'd%.0s' {1..256})"
images_state "$TMPDIR/after"
cmp -s "$TMPDIR/before" "$TMPDIR/after" || fail "a refused copy changed the images: $(diff "$TMPDIR/before" "$TMPDIR/after")"
# within one region: a new image, new snapshots, nothing moves
L=$(copy --source-region us-east-1 --source-image-id "$P" --name web-1-local)
assert_eq "$(copy_field "c['ChunksMoved'], c['ChunksPresent']")" "(0, $bios_chunks)" "a copy within us-east-1"
lsnap=$(root_snap "$L")
[ "$L" != "$P" ] && [ "$lsnap" != "$bios" ] || fail "the copy within us-east-1 reuses $P or $bios"
cmp_snapshot "$lsnap" "$FIX/boot-bios.raw"
echo "ok: bad copies"

# ---- each chunk checked against its id: a corrupt source chunk ------------------
make_random "$TMPDIR/data.raw" 1M data
dvol=$(kiln volume import "$TMPDIR/data.raw")                # a pack of its own
dsnap=$(kiln snapshot create "$dvol")
pack=$(ls "$KILN_STORE"/regions/us-east-1/packs/*.pack | sort | tail -n 1)
assert_eq "$(stat -c %s "$pack")" $((16 + 16 * rec)) "size of the pack of the random disk"
D=$(kiln image register --name with-data --root-device-name /dev/xvda --architecture x86_64 \
	--block-device-mappings "[$(ebs /dev/xvda "$bios"),$(ebs /dev/xvdb "$dsnap")]")
cp "$pack" "$TMPDIR/pack.good"
flip_byte "$pack" $((16 + 40 + 1000))
refused "cannot copy image $D|image $D: corrupt" \
	kiln image copy --source-region us-east-1 --source-image-id "$D" "${EU[@]}" --name with-data
kiln image describe "${EU[@]}" --filters Name=name,Values=with-data --output json >"$TMPDIR/failed.json"
assert_eq "$(json "$TMPDIR/failed.json" "[(i['State'], i['StateReason']['Code']) for i in j['Images']]")" \
	"[('failed', 'Client.InvalidImage')]" "state of the copy that met a corrupt chunk"
reason=$(json "$TMPDIR/failed.json" "j['Images'][0]['StateReason']['Message']")
[[ $reason == *"$dsnap"* ]] || fail "the reason does not name the snapshot $dsnap: $reason"
F=$(json "$TMPDIR/failed.json" "j['Images'][0]['ImageId']")
refused "image $F failed: .*$dsnap" kiln wait image-available "$F" "${EU[@]}" --timeout 5
verify_region eu-west-1                    # the bad chunk did not arrive
cp "$TMPDIR/pack.good" "$pack"
F2=$(copy --source-region us-east-1 --source-image-id "$D" "${EU[@]}" --name with-data)
assert_eq "$F2" "$F" "the id of the copy taken up after the repair"
assert_eq "$(copy_field "c['Resumed'], c['ChunksMoved']")" "(True, 16)" "the copy after the repair"
assert_eq "$(image_field "$F" "i['State'], [m['DeviceName'] for m in i['BlockDeviceMappings']]" "${EU[@]}")" \
	"('available', ['/dev/xvda', '/dev/xvdb'])" "the copy after the repair"
cmp_snapshot_in "$(image_field "$F" "i['BlockDeviceMappings'][1]['Ebs']['SnapshotId']" "${EU[@]}")" "$TMPDIR/data.raw" "${EU[@]}"
verify_region eu-west-1
echo "ok: corrupt source chunk"

# ---- kill -9 in the middle; the same command resumes -----------------------------
# 4 KiB chunks: a 32 MiB random disk is 8192 chunks, so the destination
# commits at 4096 (copy:chunks-committed fires there). The root is
# boot-bios.raw (fewer than 4096 non-zero 4 KiB chunks), copied first.
KILN_STORE=$TMPDIR/store4k
kiln init --chunk-size 4K >/dev/null 2>&1
root4=$(snap_of "$FIX/boot-bios.raw")
root4_chunks=$(data_chunks "$FIX/boot-bios.raw" 4096)
[ "$root4_chunks" -lt 4096 ] || fail "boot-bios.raw has $root4_chunks chunks of 4 KiB: the root would commit"
for point in copy:chunks-committed copy:image-pending copy:manifest-written copy:snapshot-inserted; do
	tag=${point#copy:}
	make_random "$TMPDIR/$tag.raw" 32M "$tag"
	s=$(snap_of "$TMPDIR/$tag.raw")
	src=$(kiln image register --name "src-$tag" --root-device-name /dev/xvda --architecture x86_64 \
		--block-device-mappings "[$(ebs /dev/xvda "$root4"),$(ebs /dev/xvdb "$s")]")
	args=(image copy --source-region us-east-1 --source-image-id "$src" "${EU[@]}" --name "copy-$tag" --output json)
	expect_killed env KILN_CRASH_POINT=$point "$KILN" "${args[@]}"
	assert_eq "$(cat "$TMPDIR/.stdout")" "" "output of the copy killed at $point"
	if [ $point = copy:image-pending ]; then
		# While a writer holds eu-west-1 (flock, as a running kiln does), the
		# interrupted copy is listed pending; wait must still see that it
		# is dead and report it failed, not time out.
		flock "$KILN_STORE/regions/eu-west-1/lock" "$KILN" image describe "${EU[@]}" --output json \
			--filters Name=name,Values="copy-$tag" >"$TMPDIR/pending.json"
		assert_eq "$(json "$TMPDIR/pending.json" "[i['State'] for i in j['Images']]")" "['pending']" \
			"state of the copy killed at $point while a writer holds the region"
		pid_id=$(json "$TMPDIR/pending.json" "j['Images'][0]['ImageId']")
		rc=0
		kiln wait image-available "$pid_id" "${EU[@]}" --timeout 3 2>"$TMPDIR/wait.err" || rc=$?
		check_eq "$rc" 1 "exit status of wait image-available on the copy killed at $point ($(cat "$TMPDIR/wait.err"))"
	fi
	kiln image describe "${EU[@]}" --output json --filters Name=name,Values="copy-$tag" >"$TMPDIR/killed.json"
	assert_eq "$(json "$TMPDIR/killed.json" "[(i['State'], i['StateReason']['Message']) for i in j['Images']]")" \
		"[('failed', 'the copy was interrupted: run the same kiln image copy again to resume it')]" \
		"the copy killed at $point"
	killed=$(json "$TMPDIR/killed.json" "j['Images'][0]['ImageId']")
	refused "image $killed failed: the copy was interrupted" kiln wait image-available "$killed" "${EU[@]}" --timeout 3
	verify_region eu-west-1
	# the same command again: the same image, resumed, complete
	kiln "${args[@]}" >"$TMPDIR/.copy.json" || fail "the copy after $point failed"
	assert_eq "$(json "$TMPDIR/.copy.json" "j['ImageId']")" "$killed" "the image the copy after $point completed"
	assert_eq "$(copy_field "c['Resumed'], c['ChunksMoved'] + c['ChunksPresent'] == c['ChunksTotal']")" "(True, True)" \
		"Resumed and the chunk counts of the copy after $point"
	case $point in
	copy:chunks-committed)
		# the root was finished before the crash: kept, not copied again;
		# the 4096 committed chunks of the data disk are not moved again
		assert_eq "$(copy_field "c['Snapshots'], c['ChunksTotal']")" "(1, 8192)" \
			"snapshots and chunks copied after $point"
		[ "$(copy_field "c['ChunksPresent']")" -ge 4096 ] && [ "$(copy_field "c['ChunksMoved']")" -gt 0 ] ||
			fail "after $point: $(copy_field "c['ChunksPresent'], c['ChunksMoved']") chunks present, moved"
		;;
	copy:image-pending)
		assert_eq "$(copy_field "c['Snapshots'], c['ChunksTotal'], c['ChunksMoved']")" \
			"(2, $((root4_chunks + 8192)), 8192)" "snapshots and chunks copied after $point"
		;;
	copy:manifest-written | copy:snapshot-inserted)
		# killed at the root's snapshot: its chunks are kept, not
		# moved again, and neither its row nor its mapping was written
		assert_eq "$(copy_field "c['Snapshots'], c['ChunksMoved']")" "(2, 8192)" \
			"snapshots and chunks copied after $point"
		;;
	esac
	# no snapshot left over from the killed run: the copy's two, no more
	kiln snapshot describe "${EU[@]}" --output json >"$TMPDIR/eusnaps.json"
	assert_eq "$(json "$TMPDIR/eusnaps.json" "len([s for s in j['Snapshots'] if '$killed' in s['Description']])")" 2 \
		"snapshots copied for $killed"
	kiln image describe --image-ids "$killed" "${EU[@]}" --output json >"$TMPDIR/resumed.json"
	assert_eq "$(json "$TMPDIR/resumed.json" "(j['Images'][0]['State'], len(j['Images'][0]['BlockDeviceMappings']))")" \
		"('available', 2)" "the copy after $point"
	assert_eq "$(image_names "${EU[@]}" --filters Name=name,Values="copy-$tag")" "copy-$tag" "copies named copy-$tag"
	cmp_snapshot_in "$(json "$TMPDIR/resumed.json" "j['Images'][0]['BlockDeviceMappings'][0]['Ebs']['SnapshotId']")" \
		"$FIX/boot-bios.raw" "${EU[@]}"
	cmp_snapshot_in "$(json "$TMPDIR/resumed.json" "j['Images'][0]['BlockDeviceMappings'][1]['Ebs']['SnapshotId']")" \
		"$TMPDIR/$tag.raw" "${EU[@]}"
	verify_region eu-west-1
	kiln wait image-available "$killed" "${EU[@]}" --timeout 5 || fail "wait image-available after $point"
	echo "ok: $point"
done
# what the crashes left, gc takes: one manifest per snapshot, verify clean
kiln store gc --region eu-west-1 >/dev/null
kiln snapshot describe "${EU[@]}" --output json >"$TMPDIR/eusnaps.json"
assert_eq "$(find "$KILN_STORE/regions/eu-west-1/manifests" -type f -name '*.manifest' | wc -l)" \
	"$(json "$TMPDIR/eusnaps.json" "len(j['Snapshots'])")" "manifests in eu-west-1 after gc"
verify_region eu-west-1
verify_region us-east-1

finish
