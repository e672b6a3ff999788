#!/bin/bash
# Devices and termination (EC2's RunInstances BlockDeviceMappings and
# TerminateInstances):
#  1. a launch whose mapping overrides the root's DeleteOnTermination only,
#     and adds an instance store (ephemeral0) and an empty EBS volume: the
#     root keeps the image's snapshot and size (EC2 merges an override into
#     the image's mapping); describe shows the three devices, and each is
#     served as i-…/xvdX;
#  2. a volume of a running instance cannot be deleted (`volume delete`);
#  3. terminate deletes exactly the DeleteOnTermination volumes; the root is
#     kept, available, holding the image's bytes; the instance and its
#     exports are gone;
#  4. an override of the root's VolumeSize only keeps the image's snapshot;
#  5. NoDevice removes a device of the image; removing the root is refused
#     and leaves no volume behind; the image's own DeleteOnTermination=false
#     keeps that volume;
#  6. terminate while an NBD client holds the root: either it fails and the
#     instance stays, or it succeeds and the root is gone (not reported
#     "kept" although DeleteOnTermination is true);
#  7. terminate of a booted instance stops qemu and deletes the volumes;
#  8. a second account cannot launch a private image, nor see or terminate
#     another account's instance; with a launch permission it can launch,
#     and after reset-attribute no longer.
# The checks after a wrong answer go on (check_eq) to show what else breaks.
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/nbd-functions.sh"
source "$(dirname "$0")/instance-functions.sh"
requires nbdinfo nbdcopy cmp mkfifo
requires_libnbd_python
requires_fixtures

G=$((1 << 30))
other=210987654321
new_store
region_nbd_cleanup us-east-1
disk=$FIXTURES/boot-bios.raw
size=$(stat -c %s "$disk")
make_image "$disk" kiln-terminate --architecture x86_64
ami=$IMG_AMI snap=$IMG_SNAP

# FIELD of volume VOL, or "gone" when describe does not know it
vol_is() { # VOL FIELD
	if volume_exists "$1"; then vol_field "$1" "$2"; else echo gone; fi
}
# One device of the last instance_devices: "VOL KIND DOT"
dev_line() { # DEVICES-TEXT DEV
	echo "$1" | awk -v d="$2" '$1 == d { print $2, $3, $4 }'
}

# ---- 1. mapping overrides --------------------------------------------------------
ov='[{"DeviceName":"/dev/xvda","Ebs":{"DeleteOnTermination":false}},
     {"DeviceName":"/dev/xvdb","VirtualName":"ephemeral0"},
     {"DeviceName":"/dev/xvdc","Ebs":{"VolumeSize":2}}]'
rc=0
inst=$(kiln instance launch "$ami" --block-device-mappings "$ov" 2>"$TMPDIR/launch.err") || rc=$?
check_eq "$rc" 0 "exit status of a launch overriding only the root's DeleteOnTermination ($(cat "$TMPDIR/launch.err"))"
merged=true
if [ "$rc" -ne 0 ]; then
	# so that the rest can be tested: the root's snapshot spelled out
	merged=false
	echo "NOTE: launching again with the root's SnapshotId in the override"
	inst=$(kiln instance launch "$ami" --block-device-mappings "${ov/\"Ebs\":\{\"DeleteOnTermination\":false\}/\"Ebs\":{\"SnapshotId\":\"$snap\",\"DeleteOnTermination\":false\}}")
fi
[[ $inst =~ ^i-[0-9a-f]{17}$ ]] || fail "instance launch printed '$inst'"
devs=$(instance_devices "$inst")
echo "devices of $inst:"
echo "$devs" | sed 's/^/    /'
assert_eq "$(echo "$devs" | awk '{ print $1 }' | tr '\n' ' ')" "/dev/xvda /dev/xvdb /dev/xvdc " "devices of $inst"
read -r root kind dot <<<"$(dev_line "$devs" /dev/xvda)"
assert_eq "$kind $dot" "Ebs False" "kind and DeleteOnTermination of /dev/xvda"
read -r eph kind dot <<<"$(dev_line "$devs" /dev/xvdb)"
assert_eq "$kind $dot" "InstanceStore True" "kind and DeleteOnTermination of /dev/xvdb"
read -r extra kind dot <<<"$(dev_line "$devs" /dev/xvdc)"
assert_eq "$kind $dot" "Ebs True" "kind and DeleteOnTermination of /dev/xvdc"
for v in "$root" "$eph" "$extra"; do
	assert_id vol "$v"
	assert_eq "$(vol_field "$v" State)" in-use "State of $v"
done
assert_eq "$(vol_field "$root" SnapshotId)" "$snap" "SnapshotId of the root $root"
$merged && check_eq "$(vol_field "$root" SizeBytes)" $G "SizeBytes of the root (the image's VolumeSize, 1 GiB)"
assert_eq "$(vol_field "$eph" SnapshotId)/$(vol_field "$eph" SizeBytes)" "/$G" "SnapshotId/SizeBytes of ephemeral0"
assert_eq "$(vol_field "$extra" SnapshotId)/$(vol_field "$extra" SizeBytes)" "/$((2 * G))" "SnapshotId/SizeBytes of /dev/xvdc"
rootsize=$(vol_field "$root" SizeBytes)
assert_eq "$(nbdinfo --size "$(dev_uri "$inst" xvda)")" "$rootsize" "size of $inst/xvda"
assert_eq "$(nbdinfo --size "$(dev_uri "$inst" xvdb)")" $G "size of $inst/xvdb"
assert_eq "$(nbdinfo --size "$(dev_uri "$inst" xvdc)")" $((2 * G)) "size of $inst/xvdc"
cmp_device "$(dev_uri "$inst" xvda)" "$disk" "$rootsize"
nbdcopy "$(dev_uri "$inst" xvdb)" "$TMPDIR/eph.raw"
assert_zero_from "$TMPDIR/eph.raw" 0
rm -f "$TMPDIR/eph.raw"

# ---- 2. in use: no volume delete ---------------------------------------------------
for v in "$root" "$eph" "$extra"; do
	expect_fail kiln volume delete "$v"
	assert_eq "$(vol_is "$v" State)" in-use "State of $v after a refused delete"
done

# ---- 3. terminate ---------------------------------------------------------------
kiln instance terminate "$inst" >"$TMPDIR/term.out"
cat "$TMPDIR/term.out"
assert_eq "$(sort "$TMPDIR/term.out")" "$(printf '%s\n' "$root: kept (available)" "$eph: deleted" "$extra: deleted" | sort)" \
	"what terminate says"
assert_eq "$(vol_is "$root" State)" available "State of the kept root"
assert_eq "$(vol_is "$eph" State)" gone "the instance store volume after terminate"
assert_eq "$(vol_is "$extra" State)" gone "the DeleteOnTermination EBS volume after terminate"
# as EC2 shows it: terminated, no longer served, and terminating it again
# is no error and changes nothing
kiln instance describe "$inst" --output json >"$TMPDIR/term.json"
assert_eq "$(json "$TMPDIR/term.json" "j['Reservations'][0]['Instances'][0]['State']")" \
	"{'Code': 48, 'Name': 'terminated'}" "State of a terminated instance"
assert_eq "$(json "$TMPDIR/term.json" "j['Reservations'][0]['Instances'][0]['BlockDeviceMappings']")" "[]" \
	"BlockDeviceMappings of a terminated instance"
expect_fail nbdinfo --size "$(dev_uri "$inst" xvda)"
kiln instance terminate "$inst" >"$TMPDIR/term2.out"
assert_eq "$(cat "$TMPDIR/term2.out")" "" "what a second terminate says"
# the kept root holds the image's bytes, and is an ordinary volume now
kiln volume export "$root" "$TMPDIR/kept.raw"
cmp -n "$size" "$TMPDIR/kept.raw" "$disk" || fail "the kept root $root does not hold the image's bytes"
assert_zero_from "$TMPDIR/kept.raw" "$size"
rm -f "$TMPDIR/kept.raw"
kiln volume delete "$root"
assert_eq "$(vol_is "$root" State)" gone "the kept root after volume delete"

# ---- 4. VolumeSize alone (launched with a relative store path) --------------------
inst=$(cd "$(dirname "$KILN_STORE")" && KILN_STORE=$(basename "$KILN_STORE") \
	kiln instance launch "$ami" --block-device-mappings '[{"DeviceName":"/dev/xvda","Ebs":{"VolumeSize":2}}]')
# the socket it records holds from any directory
sock=$(cd / && kiln instance describe "$inst" --output json |
	/usr/bin/python3 -c 'import json, sys; print(json.load(sys.stdin)["Reservations"][0]["Instances"][0]["NbdSocket"])')
check_eq "$sock" "$(realpath "$KILN_STORE")/regions/us-east-1/nbd.sock" "NbdSocket of an instance launched with a relative store"
root=$(instance_volume "$inst" /dev/xvda)
check_eq "$(vol_field "$root" SnapshotId)" "$snap" "SnapshotId of a root whose VolumeSize alone is overridden"
check_eq "$(vol_field "$root" SizeBytes)" $((2 * G)) "SizeBytes of that root"
nbdcopy "$(dev_uri "$inst" xvda)" "$TMPDIR/big.raw"
rc=0
cmp -n "$size" "$TMPDIR/big.raw" "$disk" >/dev/null 2>&1 || rc=$?
check_eq "$rc" 0 "cmp of that root's first $size bytes with the image's (0: the same)"
rm -f "$TMPDIR/big.raw"
kiln instance terminate "$inst" >/dev/null
assert_eq "$(vol_is "$root" State)" gone "that root after terminate"
# a terminated instance: nothing to boot or to make an image of, and said so
expect_fail kiln instance boot "$inst" --timeout 5
[[ $ERR == *"instance $inst is terminated"* ]] || fail "boot of terminated $inst: $ERR"
expect_fail kiln image create --instance-id "$inst" --name from-terminated
[[ $ERR == *"instance $inst is terminated"* ]] || fail "image create of terminated $inst: $ERR"

# ---- 5. NoDevice, and DeleteOnTermination from the image ----------------------------
ami3=$(kiln image register --name kiln-three --root-device-name /dev/xvda --architecture x86_64 \
	--block-device-mappings "[{\"DeviceName\":\"/dev/xvda\",\"Ebs\":{\"SnapshotId\":\"$snap\"}},
		{\"DeviceName\":\"/dev/xvdb\",\"Ebs\":{\"VolumeSize\":1,\"DeleteOnTermination\":false}},
		{\"DeviceName\":\"/dev/xvdc\",\"VirtualName\":\"ephemeral0\"}]")
nvol=$(volume_count)
inst=$(kiln instance launch "$ami3" --block-device-mappings '[{"DeviceName":"/dev/xvdb","NoDevice":""}]')
devs=$(instance_devices "$inst")
assert_eq "$(echo "$devs" | awk '{ print $1, $3 }' | tr '\n' ' ')" "/dev/xvda Ebs /dev/xvdc InstanceStore " \
	"devices of an instance launched with NoDevice for /dev/xvdb"
assert_eq "$(volume_count)" $((nvol + 2)) "volumes made by that launch"
expect_fail nbdinfo --size "$(dev_uri "$inst" xvdb)"
kiln instance terminate "$inst" >/dev/null
assert_eq "$(volume_count)" "$nvol" "volumes after terminating it"
expect_fail kiln instance launch "$ami3" --block-device-mappings '[{"DeviceName":"/dev/xvda","NoDevice":""}]'
[[ $ERR == */dev/xvda* ]] || fail "a launch without the root device does not name it: $ERR"
assert_eq "$(volume_count)" "$nvol" "volumes after a launch refused for want of a root"
kiln instance describe --output json >"$TMPDIR/all.json"
assert_eq "$(json "$TMPDIR/all.json" "len([i for i in j['Reservations'][0]['Instances'] if i['State']['Name'] != 'terminated'])")" 0 "instances after the refused launch"
inst=$(kiln instance launch "$ami3")
devs=$(instance_devices "$inst")
read -r keep kind dot <<<"$(dev_line "$devs" /dev/xvdb)"
assert_eq "$kind $dot" "Ebs False" "/dev/xvdb of $ami3 (DeleteOnTermination false in the image)"
kiln instance terminate "$inst" --output json >"$TMPDIR/term.json"
assert_eq "$(json "$TMPDIR/term.json" "[(i['InstanceId'], i['PreviousState']['Name'], i['CurrentState']['Code']) for i in j['TerminatingInstances']]")" \
	"[('$inst', 'running', 48)]" "instance terminate --output json"
assert_eq "$(json "$TMPDIR/term.json" "sorted((v['VolumeId'], v['Deleted']) for v in j['TerminatingInstances'][0]['Volumes'])")" \
	"$(for d in /dev/xvda /dev/xvdb /dev/xvdc; do v=$(dev_line "$devs" $d | cut -d' ' -f1); [ $d = /dev/xvdb ] && echo "$v False" || echo "$v True"; done |
		sort | /usr/bin/python3 -c 'import sys; print(sorted((a, b == "True") for a, b in (l.split() for l in sys.stdin)))')" \
	"the volumes in instance terminate --output json"
assert_eq "$(vol_is "$(dev_line "$devs" /dev/xvda | cut -d' ' -f1)" State)" gone "the root of $inst after terminate"
assert_eq "$(vol_is "$(dev_line "$devs" /dev/xvdc | cut -d' ' -f1)" State)" gone "ephemeral0 of $inst after terminate"
assert_eq "$(vol_is "$keep" State)" available "/dev/xvdb of $inst after terminate"

# ---- 6. terminate while a client holds the root -------------------------------------
inst=$(kiln instance launch "$ami")
root=$(instance_volume "$inst" /dev/xvda)
mkfifo "$TMPDIR/hold"
/usr/bin/nbdsh -u "$(dev_uri "$inst")" -c 'import sys
print("connected", h.get_size(), flush=True)
sys.stdin.read()' <"$TMPDIR/hold" >"$TMPDIR/hold.out" 2>&1 &
hpid=$!
cleanup_fn "kill $hpid 2>/dev/null"
exec 7>"$TMPDIR/hold"
wait_until 20 grep -q connected "$TMPDIR/hold.out" || fail "nbdsh did not connect: $(cat "$TMPDIR/hold.out")"
rc=0
kiln instance terminate "$inst" >"$TMPDIR/term.out" 2>"$TMPDIR/term.err" || rc=$?
echo "terminate with a client on $inst/xvda: exit $rc: $(cat "$TMPDIR/term.out" "$TMPDIR/term.err")"
if [ "$rc" -eq 0 ]; then
	check_eq "$(vol_is "$root" State)" gone \
		"the root (DeleteOnTermination true) after terminate exited 0 while a client held it"
	check_eq "$(cat "$TMPDIR/term.out")" "$root: deleted" "what terminate says of it"
else
	kiln instance describe "$inst" >/dev/null || fail "terminate failed ($rc) but the instance is gone"
fi
exec 7>&-
wait "$hpid" || true
if [ "$rc" -eq 0 ] && volume_exists "$root"; then
	echo "NOTE: $root still there with no client left: state $(vol_field "$root" State)"
	kiln volume delete "$root"
elif [ "$rc" -ne 0 ]; then
	kiln instance terminate "$inst" >/dev/null
fi

# ---- 7. terminate a booted instance -----------------------------------------------
if command -v qemu-system-x86_64 >/dev/null; then
	inst=$(kiln instance launch "$ami")
	root=$(instance_volume "$inst" /dev/xvda)
	kiln instance boot "$inst" --timeout 60 >"$TMPDIR/boot.out" 2>&1 &
	bpid=$!
	cleanup_fn "kill $bpid 2>/dev/null"
	booted() {
		instance_json "$inst"
		[ "$(json "$TMPDIR/.inst.json" "j['Reservations'][0]['Instances'][0]['Booted']")" = True ]
	}
	wait_until 20 booted || fail "$inst is not Booted 20 s after instance boot began"
	kiln instance terminate "$inst" >"$TMPDIR/term.out"
	assert_eq "$(cat "$TMPDIR/term.out")" "$root: deleted" "what terminate of a booted instance says"
	assert_eq "$(vol_is "$root" State)" gone "the root of a booted instance after terminate"
	boot_gone() { ! kill -0 "$bpid" 2>/dev/null; }
	wait_until 15 boot_gone || fail "instance boot still runs 15 s after terminate"
	wait "$bpid" || true
	echo "terminate of the booted $inst stopped qemu and deleted $root"
else
	echo "NOTE: no qemu-system-x86_64: part 7 (terminate a booted instance) skipped"
fi

# ---- 8. accounts -------------------------------------------------------------------
inst=$(kiln instance launch "$ami")
expect_fail kiln instance launch "$ami" --account $other
[[ $ERR == *"may not launch"* ]] || fail "a refused launch does not say why: $ERR"
expect_fail kiln instance describe "$inst" --account $other
expect_fail kiln instance terminate "$inst" --account $other
kiln instance describe --account $other --output json >"$TMPDIR/other.json"
assert_eq "$(json "$TMPDIR/other.json" "len(j['Reservations'][0]['Instances'])")" 0 "instances $other sees"
instance_json "$inst"        # still there for its owner
kiln image modify-attribute "$ami" --launch-permission "{\"Add\":[{\"UserId\":\"$other\"}]}"
oinst=$(kiln instance launch "$ami" --account $other)
[[ $oinst =~ ^i-[0-9a-f]{17}$ ]] || fail "launch by $other with a launch permission printed '$oinst'"
kiln instance describe "$oinst" --account $other --output json >"$TMPDIR/other.json"
assert_eq "$(json "$TMPDIR/other.json" "j['Reservations'][0]['Instances'][0]['OwnerId']")" $other "OwnerId of $oinst"
expect_fail kiln instance describe "$oinst"
expect_fail kiln instance terminate "$oinst"
cmp_device "$(dev_uri "$oinst")" "$disk" $G
kiln image reset-attribute "$ami" --attribute launchPermission
expect_fail kiln instance launch "$ami" --account $other
kiln instance terminate "$oinst" --account $other >/dev/null
kiln instance terminate "$inst" >/dev/null
kiln instance describe --output json >"$TMPDIR/all.json"
assert_eq "$(json "$TMPDIR/all.json" "len([i for i in j['Reservations'][0]['Instances'] if i['State']['Name'] != 'terminated'])")" 0 "instances left"

stop_region_nbd us-east-1
finish
