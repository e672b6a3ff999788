#!/bin/bash
# image deregister and wait image-available (docs/IMAGES.md "deregister"):
# a snapshot behind a registered image (of any account) cannot be deleted,
# with a clear message; deregister keeps the snapshots unless
# --delete-associated-snapshots, which deletes those no other image uses
# (each once, even when mapped twice) and keeps and reports the others:
# used by another image, or owned by another account (JSON and text
# output). Only the owner deregisters; a deregistered image is gone (its
# name free again), and gc reclaims what the deleted snapshots held.
# wait image-available: exit 0 on an available image, 1 on an unknown,
# deregistered or failed one (with the reason), 2 when --timeout passes on
# a copy still pending; once that copy goes on it becomes available.
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/image-functions.sh"
requires sha256sum openssl cmp

fixtures
new_store

s1=$(snap_of "$FIX/boot-bios.raw")        # root of A, B, C, K
s2=$(snap_of "$FIX/zeros.raw")            # A, twice
s3=$(snap_of "$FIX/ext4-noboot.raw")      # A
s4=$(snap_of "$FIX/mbr-noboot.raw")       # K
make_random "$TMPDIR/r5.raw" 2M r5
s5=$(snap_of "$TMPDIR/r5.raw")            # C
declare -A file=([$s1]=$FIX/boot-bios.raw [$s2]=$FIX/zeros.raw [$s3]=$FIX/ext4-noboot.raw
	[$s4]=$FIX/mbr-noboot.raw [$s5]=$TMPDIR/r5.raw)
mappings() { # ROOT-SNAP [SNAP...]: /dev/xvda, then /dev/xvdb...
	local devs=(a b c d e f) k=0 out="" s
	for s in "$@"; do
		out+="${out:+,}$(ebs "/dev/xvd${devs[$k]}" "$s")"
		k=$((k + 1))
	done
	echo "[$out]"
}
reg() { # NAME SNAP...
	local name=$1
	shift
	kiln image register --name "$name" --root-device-name /dev/xvda --architecture x86_64 \
		--block-device-mappings "$(mappings "$@")"
}
has_snaps() { # WANT...: exactly these snapshots are listed in us-east-1, and export right
	local s
	assert_eq "$(snapshot_ids | sort | paste -sd ' ')" "$(printf '%s\n' "$@" | sort | paste -sd ' ')" "snapshots listed"
	for s in "$@"; do
		[ -n "${file[$s]:-}" ] && cmp_snapshot "$s" "${file[$s]}"
	done
	return 0
}
gone() { # ID: deregistered: invisible to describe, every account
	local a
	refused "image $1 does not exist or is not yours to launch \(in region us-east-1\)" kiln image describe --image-ids "$1"
	for a in $OWNER $OTHER $THIRD; do
		[[ " $(image_ids --account $a) " != *" $1 "* ]] || fail "$a still lists $1"
	done
}

A=$(reg img-a "$s1" "$s2" "$s2" "$s3")
B=$(reg img-b "$s1")
K=$(reg img-k "$s1" "$s4")
C=$(reg img-c "$s1" "$s5")

# ---- a snapshot behind an image cannot be deleted -------------------------------
for s in "$s1" "$s2" "$s3" "$s4" "$s5"; do
	refused "snapshot $s is in use by a registered image \(deregister it first\)" kiln snapshot delete "$s"
done
has_snaps "$s1" "$s2" "$s3" "$s4" "$s5"
echo "ok: in use"

# ---- deregister keeps the snapshots -----------------------------------------------
kiln image deregister "$K" >"$TMPDIR/out"
assert_eq "$(cat "$TMPDIR/out")" "" "output of deregister without --delete-associated-snapshots"
gone "$K"
has_snaps "$s1" "$s2" "$s3" "$s4" "$s5"
refused "image $K does not exist or is not yours to launch" kiln image deregister "$K"
# the snapshot no image uses may go now, the others not
kiln snapshot delete "$s4"
refused "snapshot $s1 is in use by a registered image" kiln snapshot delete "$s1"
has_snaps "$s1" "$s2" "$s3" "$s5"
# the name is free again
K2=$(reg img-k "$s1")
assert_eq "$(image_field "$K2" "i['Name']")" img-k "the name of a deregistered image, used again"
kiln image deregister "$K2"
echo "ok: keeps the snapshots"

# ---- only the owner deregisters -----------------------------------------------------
kiln image modify-attribute "$B" --launch-permission '{"Add":[{"Group":"all"}]}'
images_state "$TMPDIR/before"
refused "only the owner of $B may do that" kiln image deregister "$B" --account $OTHER
refused "only the owner of $B may do that" kiln image deregister "$B" --account $OTHER --delete-associated-snapshots
refused "image $A does not exist or is not yours to launch" kiln image deregister "$A" --account $OTHER
refused "image $A does not exist or is not yours to launch" kiln image deregister "$A" --account $OTHER \
	--delete-associated-snapshots
refused "image $A does not exist or is not yours to launch \(in region eu-west-1\)" \
	kiln image deregister "$A" --region eu-west-1
refused "invalid image id" kiln image deregister ami-0123
refused "invalid image id" kiln image deregister "$s1"
refused "missing IMAGE-ID" kiln image deregister
images_state "$TMPDIR/after"
cmp -s "$TMPDIR/before" "$TMPDIR/after" || fail "a refused deregister changed the images: $(diff "$TMPDIR/before" "$TMPDIR/after")"
has_snaps "$s1" "$s2" "$s3" "$s5"
echo "ok: only the owner"

# ---- --delete-associated-snapshots: deleted once, or kept with the reason ------------------
kiln image deregister "$A" --delete-associated-snapshots --output json >"$TMPDIR/a.json"
assert_eq "$(json "$TMPDIR/a.json" "j['DeletedSnapshots']")" "['$s2', '$s3']" "snapshots deleted with $A"
# B and C use s1: the reason names one of them
assert_eq "$(json "$TMPDIR/a.json" "j['KeptSnapshots'] in ([{'SnapshotId': '$s1', 'Reason': 'image $B still uses it'}], [{'SnapshotId': '$s1', 'Reason': 'image $C still uses it'}])")" \
	True "snapshots kept with $A: $(json "$TMPDIR/a.json" "j['KeptSnapshots']")"
gone "$A"
has_snaps "$s1" "$s5"
# text output: one line per snapshot
kiln image deregister "$C" --delete-associated-snapshots >"$TMPDIR/c.txt"
assert_eq "$(cat "$TMPDIR/c.txt")" "$s1: kept: image $B still uses it
$s5: deleted" "output of deregister $C --delete-associated-snapshots"
gone "$C"
has_snaps "$s1"
echo "ok: deletes the unshared"

# ---- snapshots of another account; images of another account ---------------------------
o1=$(snap_of "$FIX/boot-bios.raw" --account $OTHER)
kiln snapshot modify-attribute "$o1" --account $OTHER --create-volume-permission "{\"Add\":[{\"UserId\":\"$OWNER\"}]}"
make_random "$TMPDIR/r6.raw" 1M r6
s6=$(snap_of "$TMPDIR/r6.raw")
file[$o1]=$FIX/boot-bios.raw
file[$s6]=$TMPDIR/r6.raw
D=$(reg img-d "$o1" "$s6")
refused "snapshot $o1 is in use by a registered image" kiln snapshot delete "$o1" --account $OTHER
kiln image deregister "$D" --delete-associated-snapshots --output json >"$TMPDIR/d.json"
assert_eq "$(json "$TMPDIR/d.json" "(j['DeletedSnapshots'], j['KeptSnapshots'])")" \
	"(['$s6'], [{'SnapshotId': '$o1', 'Reason': 'owned by account $OTHER'}])" \
	"deregister of an image made of $OTHER's snapshot"
has_snaps "$s1" "$o1"
# OWNER's snapshot in an image of OTHER: kept, and not deletable
kiln snapshot modify-attribute "$s1" --create-volume-permission "{\"Add\":[{\"UserId\":\"$OTHER\"}]}"
E=$(kiln image register --account $OTHER --name img-e --root-device-name /dev/xvda --architecture x86_64 \
	--block-device-mappings "$(mappings "$s1")")
kiln image deregister "$B" --delete-associated-snapshots --output json >"$TMPDIR/b.json"
assert_eq "$(json "$TMPDIR/b.json" "(j['DeletedSnapshots'], j['KeptSnapshots'])")" \
	"([], [{'SnapshotId': '$s1', 'Reason': 'image $E still uses it'}])" "deregister of $B while $OTHER's $E uses $s1"
gone "$B"
refused "snapshot $s1 is in use by a registered image" kiln snapshot delete "$s1"
kiln image deregister "$E" --account $OTHER
kiln snapshot delete "$s1"
kiln snapshot delete "$o1" --account $OTHER
has_snaps
echo "ok: other accounts"

# ---- what the deleted snapshots held, gc frees; the store verifies --------------
for a in $OWNER $OTHER; do
	kiln volume describe --output json --account $a >"$TMPDIR/vols.json"      # its own volumes
	for v in $(json "$TMPDIR/vols.json" "' '.join(v['VolumeId'] for v in j['Volumes'])"); do
		assert_id vol "$v"
		kiln volume delete "$v" --account $a
	done
done
kiln store gc >/dev/null
assert_eq "$(stat_field UniqueBytes)" 0 "unique bytes after every image, snapshot and volume is gone"
verify_clean
echo "ok: gc"

# ---- wait image-available -------------------------------------------------------------
W=$(reg img-w "$(snap_of "$FIX/boot-bios.raw")")
start=$(date +%s%N)
kiln wait image-available "$W" >"$TMPDIR/out" || fail "wait image-available on an available image"
assert_eq "$(cat "$TMPDIR/out")" "" "output of wait on an available image"
[ $(($(date +%s%N) - start)) -lt 2000000000 ] || fail "wait on an available image took more than 2 s"
kiln wait image-available "$W" --timeout 0 || fail "wait --timeout 0 on an available image"
refused "image ami-0123456789abcdef0 does not exist or is not yours to launch \(in region us-east-1\)" \
	kiln wait image-available ami-0123456789abcdef0
refused "image $W does not exist or is not yours to launch \(in region us-east-1\)" \
	kiln wait image-available "$W" --account $OTHER
refused "image $W does not exist or is not yours to launch \(in region eu-west-1\)" \
	kiln wait image-available "$W" --region eu-west-1
refused "invalid image id" kiln wait image-available ami-XYZ
refused "invalid --timeout 'soon'" kiln wait image-available "$W" --timeout soon
refused "invalid --timeout '-1'" kiln wait image-available "$W" --timeout -1
kiln image deregister "$W"
refused "image $W does not exist or is not yours to launch" kiln wait image-available "$W"
# A copy in progress is pending: wait gives up at --timeout with exit 2;
# once the copy goes on, it is available. The copy (2 x 32 MiB of 4 KiB
# chunks) is stopped with SIGSTOP as soon as its image is listed.
KILN_STORE=$TMPDIR/store4k
kiln init --chunk-size 4K >/dev/null 2>&1
make_random "$TMPDIR/big1.raw" 32M big1
make_random "$TMPDIR/big2.raw" 32M big2
G=$(reg img-g "$(snap_of "$FIX/boot-bios.raw")" "$(snap_of "$TMPDIR/big1.raw")" "$(snap_of "$TMPDIR/big2.raw")")
"$KILN" image copy --source-region us-east-1 --source-image-id "$G" --region eu-west-1 --name img-g \
	>"$TMPDIR/copy.out" 2>"$TMPDIR/copy.err" &
cpid=$!
cleanup_fn "kill -CONT $cpid 2>/dev/null"
pending=""
for ((k = 0; k < 2000; k++)); do
	kill -STOP $cpid 2>/dev/null || break
	kiln image describe --region eu-west-1 --output json --filters Name=name,Values=img-g >"$TMPDIR/g.json"
	pending=$(json "$TMPDIR/g.json" "' '.join(i['ImageId'] for i in j['Images'] if i['State'] == 'pending')")
	[ -n "$pending" ] && break
	[ "$(json "$TMPDIR/g.json" "len(j['Images'])")" = 0 ] ||
		fail "the copy of $G was over before it was seen pending: $(cat "$TMPDIR/g.json")"
	kill -CONT $cpid
	sleep 0.005            # let the copy run a little before the next look
done
[ -n "$pending" ] || fail "never saw the copy of $G pending (copy: $(cat "$TMPDIR/copy.err"))"
echo "the copy was listed pending at look $((k + 1))"
rc=0
kiln wait image-available "$pending" --region eu-west-1 --timeout 1 2>"$TMPDIR/wait.err" || rc=$?
assert_eq "$rc" 2 "exit status of wait --timeout 1 on a pending copy ($(cat "$TMPDIR/wait.err"))"
grep -q "image $pending is still pending after 1 seconds" "$TMPDIR/wait.err" ||
	fail "the message of wait at its timeout: $(cat "$TMPDIR/wait.err")"
kill -CONT $cpid
rc=0
kiln wait image-available "$pending" --region eu-west-1 --timeout 60 || rc=$?
wait $cpid || fail "the copy of $G failed: $(cat "$TMPDIR/copy.err")"
assert_eq "$rc" 0 "exit status of wait on the copy that went on"
assert_eq "$(cat "$TMPDIR/copy.out")" "$pending" "the id the copy printed"
assert_eq "$(image_field "$pending" "i['State']" --region eu-west-1)" available "state of the finished copy"
verify_clean
echo "ok: wait"

finish
