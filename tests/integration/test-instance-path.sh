#!/bin/bash
# The whole path from a raw disk to a booted instance in another region:
# boot-bios.raw -> volume import -> snapshot create -> image register
# (register wants --architecture: an MBR type 0x83 partition names none)
# -> image copy to eu-west-1 -> instance launch there (which starts
# eu-west-1's kiln-nbd, and only that one) -> instance boot: qemu boots the
# copy over NBD and KILN-BOOT-OK appears on the serial console (in what boot
# prints and in the instance's console log). All of it within 60 s,
# measured and printed. Then terminate, and the daemon stops on SIGTERM.
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/nbd-functions.sh"
source "$(dirname "$0")/instance-functions.sh"
requires_qemu
requires nbdinfo
requires_fixtures

limit=60
new_store
region_nbd_cleanup us-east-1 eu-west-1
disk=$FIXTURES/boot-bios.raw

t0=$(now_ns)
vol=$(kiln volume import "$disk")
assert_id vol "$vol"
snap=$(kiln snapshot create "$vol")
assert_id snap "$snap"
cmp_snapshot "$snap" "$disk"
# what docs/IMAGES.md says: no architecture from this disk's contents
spec="[{\"DeviceName\":\"/dev/xvda\",\"Ebs\":{\"SnapshotId\":\"$snap\"}}]"
expect_fail kiln image register --name kiln-path --root-device-name /dev/xvda --block-device-mappings "$spec"
[[ $ERR == *--architecture* ]] || fail "register without an architecture does not say to give --architecture: $ERR"
ami=$(kiln image register --name kiln-path --root-device-name /dev/xvda --block-device-mappings "$spec" \
	--architecture x86_64)
[[ $ami =~ ^ami-[0-9a-f]{17}$ ]] || fail "image register printed '$ami'"
kiln image describe --image-ids "$ami" --output json >"$TMPDIR/ami.json"
assert_eq "$(json "$TMPDIR/ami.json" "j['Images'][0]['BootMode']")" legacy-bios "BootMode of $ami"

copy=$(kiln image copy --region eu-west-1 --source-region us-east-1 --source-image-id "$ami" --name kiln-path-copy)
[[ $copy =~ ^ami-[0-9a-f]{17}$ ]] || fail "image copy printed '$copy'"
[ "$copy" != "$ami" ] || fail "the copy has the source's id"
kiln wait image-available "$copy" --region eu-west-1 --timeout 30 || fail "copy $copy did not become available"
kiln image describe --region eu-west-1 --image-ids "$copy" --output json >"$TMPDIR/copy.json"
assert_eq "$(json "$TMPDIR/copy.json" "j['Images'][0]['SourceImageId']")" "$ami" "SourceImageId of the copy"
assert_eq "$(json "$TMPDIR/copy.json" "j['Images'][0]['SourceImageRegion']")" us-east-1 "SourceImageRegion of the copy"
csnap=$(json "$TMPDIR/copy.json" "j['Images'][0]['BlockDeviceMappings'][0]['Ebs']['SnapshotId']")
assert_id snap "$csnap"
[ "$csnap" != "$snap" ] || fail "the copy's snapshot has the source's id"
# the copy is not in us-east-1, the source not in eu-west-1
expect_fail kiln image describe --image-ids "$copy"

inst=$(kiln instance launch "$copy" --region eu-west-1)
[[ $inst =~ ^i-[0-9a-f]{17}$ ]] || fail "instance launch printed '$inst', not one instance id"
pid=$(region_nbd_pid eu-west-1)
[ -n "$pid" ] && nbd_alive "$pid" || fail "no kiln-nbd runs for eu-west-1 after the launch"
[ -z "$(region_nbd_pid us-east-1)" ] || fail "a launch in eu-west-1 started a kiln-nbd for us-east-1"
instance_json "$inst" eu-west-1
assert_eq "$(json "$TMPDIR/.inst.json" "j['Reservations'][0]['Instances'][0]['ImageId']")" "$copy" "ImageId of $inst"
assert_eq "$(json "$TMPDIR/.inst.json" "j['Reservations'][0]['Instances'][0]['State']")" "{'Code': 16, 'Name': 'running'}" \
	"State of $inst"
assert_eq "$(json "$TMPDIR/.inst.json" "j['Reservations'][0]['Instances'][0]['NbdSocket']")" \
	"$(region_sock eu-west-1)" "NbdSocket of $inst"
root=$(instance_volume "$inst" /dev/xvda eu-west-1)
assert_id vol "$root"
assert_eq "$(kiln volume describe "$root" --region eu-west-1 --output json | /usr/bin/python3 -c \
	'import json, sys; print(json.load(sys.stdin)["Volumes"][0]["SnapshotId"])')" "$csnap" "SnapshotId of the root volume"
assert_eq "$(nbdinfo --size "$(dev_uri "$inst" xvda eu-west-1)")" $((1 << 30)) \
	"size of $inst/xvda (the copy's VolumeSize, 1 GiB)"
expect_fail kiln instance describe "$inst"      # not in us-east-1
expect_fail kiln instance launch "$ami" --region eu-west-1

boot_instance "$inst" eu-west-1
t1=$(now_ns)
ms=$(((t1 - t0) / 1000000))
secs=$(printf '%d.%03d' $((ms / 1000)) $((ms % 1000)))
echo "import -> snapshot -> register -> copy -> launch -> boot: $secs s (boot $BOOT_SECS s)"
[ "$ms" -lt $((limit * 1000)) ] || fail "the whole path took $secs s (limit $limit s)"

log=$KILN_STORE/regions/eu-west-1/instances/$inst.console.log
grep -aq "$BOOT_MARKER" "$log" || fail "no $BOOT_MARKER in the console log $log"
instance_json "$inst" eu-west-1
assert_eq "$(json "$TMPDIR/.inst.json" "j['Reservations'][0]['Instances'][0]['Booted']")" False \
	"Booted of $inst once boot has returned"

kiln instance terminate "$inst" --region eu-west-1 >"$TMPDIR/term.out"
assert_eq "$(cat "$TMPDIR/term.out")" "$root: deleted" "what terminate says"
volume_exists "$root" eu-west-1 && fail "the root volume $root outlived terminate"
stop_region_nbd eu-west-1

# An arm64 image launches, but qemu-system-x86_64 cannot run it: boot says
# so at once rather than sit in firmware until a timeout.
make_image "$disk" kiln-arm --architecture arm64
arm=$(kiln instance launch "$IMG_AMI")
start=$(date +%s)
expect_fail kiln instance boot "$arm" --timeout 60
[[ $ERR == *"is arm64"* ]] || fail "boot of an arm64 instance: $ERR"
(($(date +%s) - start < 10)) || fail "boot of an arm64 instance took $(($(date +%s) - start)) s to refuse"
kiln instance terminate "$arm" >/dev/null
stop_region_nbd us-east-1
echo PASS
