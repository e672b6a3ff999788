#!/bin/bash
# image register (docs/IMAGES.md "register", "Ids and names"): the bootable
# fixtures register with what the libblkid probe found (BootMode,
# Architecture, Probe); the unbootable ones are refused with their reason
# and leave nothing registered, unless --no-verify-boot; the architecture
# comes from --architecture, or from a Discoverable Partitions root type,
# or register fails naming --architecture. Bad input each gets one clear
# line, exit != 0, nothing on stdout and nothing registered: malformed
# mapping JSON of many kinds, a missing root mapping, snapshots of the other
# region, of another account (not shared: it does not exist for the
# caller, as in EC2), missing or not completed, a
# VolumeSize below the snapshot's, a duplicate name, invalid names, bad
# architecture / boot mode / virtualization type, an unbootable root.
# VolumeSize defaults to the snapshot's size in GiB rounded up; names are
# unique per owner per region only; shared and public snapshots register.
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/image-functions.sh"
requires sha256sum sfdisk mkfs.fat flock

fixtures
new_store

bios=$(snap_of "$FIX/boot-bios.raw")
uefi=$(snap_of "$FIX/boot-uefi.raw")
zeros=$(snap_of "$FIX/zeros.raw")
ext4=$(snap_of "$FIX/ext4-noboot.raw")
mbr=$(snap_of "$FIX/mbr-noboot.raw")
for s in "$bios" "$uefi" "$zeros" "$ext4" "$mbr"; do assert_id snap "$s"; done

no_images() { # WHAT: no account sees any image in either region
	local r a
	for r in us-east-1 eu-west-1; do
		for a in $OWNER $OTHER $THIRD; do
			assert_eq "$(image_ids --region $r --account $a)" "" "images $a sees in $r after $1"
		done
	done
}

# ---- the unbootable fixtures are refused, with the reason ----------------
# (with --architecture, so that only the boot check can refuse them)
refused "cannot register image: root snapshot $zeros cannot boot: .*no boot signature" \
	register zeros-img "$zeros" --architecture x86_64
refused "cannot register image: root snapshot $ext4 cannot boot: sector 0 has no boot signature \(0x55AA\) and there is no EFI system partition \(found: no partition table disk:ext4\)" \
	register ext4-img "$ext4" --architecture x86_64
refused "cannot register image: root snapshot $mbr cannot boot: .*no boot signature" \
	register mbr-img "$mbr" --architecture x86_64
# asking for a boot mode does not make them bootable
for m in legacy-bios uefi uefi-preferred; do
	refused "root snapshot $ext4 cannot boot" register ext4-img "$ext4" --architecture x86_64 --boot-mode $m
done
no_images "the unbootable fixtures"

# ---- the architecture: given, from the partition types, or an error -------
for s in "$bios" "$uefi"; do
	refused "cannot tell the architecture of root snapshot $s.*give --architecture" register noarch "$s"
done
no_images "registers without an architecture"

# ---- the bootable fixtures ----------------------------------------------------
b=$(register boot-bios "$bios" --architecture x86_64 --description "the bios fixture" --tag os=linux)
assert_id ami "$b"
image_json "$b"
i() { json "$TMPDIR/.image.json" "(lambda i: ($1))(j['Images'][0])"; }
assert_eq "$(i "i['ImageId'], i['Name'], i['OwnerId'], i['State'], i['Public']")" \
	"('$b', 'boot-bios', '$OWNER', 'available', False)" "id, name, owner, state, public of boot-bios"
assert_eq "$(i "i['BootMode'], i['Architecture'], i['VirtualizationType']")" \
	"('legacy-bios', 'x86_64', 'hvm')" "boot mode, architecture, virtualization of boot-bios"
assert_eq "$(i "i['RootDeviceName'], i['RootDeviceType'], i['ImageType'], i['Description']")" \
	"('/dev/xvda', 'ebs', 'machine', 'the bios fixture')" "root device, types, description of boot-bios"
assert_eq "$(i "i['BlockDeviceMappings']")" \
	"[{'DeviceName': '/dev/xvda', 'Ebs': {'SnapshotId': '$bios', 'VolumeSize': 1, 'DeleteOnTermination': True, 'VolumeType': 'gp3'}}]" \
	"mappings of boot-bios (VolumeSize: 32 MiB rounded up to 1 GiB)"
assert_eq "$(i "i['Tags']")" "[{'Key': 'os', 'Value': 'linux'}]" "tags of boot-bios"
[[ $(i "i['CreationDate']") =~ ^20[0-9]{2}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.000Z$ ]] ||
	fail "CreationDate of boot-bios: $(i "i['CreationDate']")"
assert_eq "$(i "sorted(i['Probe'])")" \
	"['Architecture', 'BootCode', 'BootSignature', 'BootablePartition', 'EfiSystemPartition', 'Filesystem', 'PartitionTable', 'Partitions']" \
	"the keys of the Probe of boot-bios"
assert_eq "$(i "[i['Probe'][k] for k in ('PartitionTable', 'BootSignature', 'BootCode', 'BootablePartition', 'EfiSystemPartition', 'Architecture')]")" \
	"['dos', True, True, True, False, '']" "Probe of boot-bios"
assert_eq "$(i "[(p['Number'], p['Start'], p['Size'], p['Type'], p['Bootable'], p['Filesystem'], p['Label'], p['EfiSystemPartition']) for p in i['Probe']['Partitions']]")" \
	"[(1, 1048576, 32505856, '0x83', True, 'ext4', 'kiln-boot', False)]" "Probe partitions of boot-bios"

u=$(register boot-uefi "$uefi" --architecture x86_64)
assert_id ami "$u"
image_json "$u"
assert_eq "$(i "i['BootMode'], i['Architecture'], i['State']")" "('uefi', 'x86_64', 'available')" \
	"boot mode, architecture, state of boot-uefi"
assert_eq "$(i "[i['Probe'][k] for k in ('PartitionTable', 'BootCode', 'EfiSystemPartition')]")" \
	"['gpt', False, True]" "Probe of boot-uefi"
assert_eq "$(i "[(p['Number'], p['Type'], p['Filesystem'], p['Label'], p['EfiSystemPartition']) for p in i['Probe']['Partitions']]")" \
	"[(1, '${ESP_GUID,,}', 'vfat', 'KILN-ESP', True)]" "Probe partitions of boot-uefi"

# a boot mode the disk cannot do is refused with the reason; one it can is kept
refused "root snapshot $bios cannot boot with uefi: no EFI system partition" \
	register bios-as-uefi "$bios" --architecture x86_64 --boot-mode uefi
refused "root snapshot $uefi cannot boot with legacy-bios: .*no boot code.*use uefi" \
	register uefi-as-bios "$uefi" --architecture x86_64 --boot-mode legacy-bios
p=$(register bios-preferred "$bios" --architecture x86_64 --boot-mode uefi-preferred)
assert_eq "$(image_field "$p" "i['BootMode']")" uefi-preferred "boot mode given as uefi-preferred"
assert_eq "$(image_names | tr '|' '\n' | sort | tr '\n' ' ')" "bios-preferred boot-bios boot-uefi " \
	"the images after the refused boot modes"

# --no-verify-boot registers the unbootable ones, with what the probe found
z=$(register zeros-img "$zeros" --architecture x86_64 --no-verify-boot)
e=$(register ext4-img "$ext4" --architecture arm64 --no-verify-boot)
m=$(register mbr-img "$mbr" --architecture i386 --no-verify-boot)
assert_eq "$(image_field "$z" "'BootMode' in i, i['Architecture'], [i['Probe'][k] for k in ('PartitionTable', 'Partitions', 'Filesystem', 'BootSignature', 'BootCode', 'EfiSystemPartition')]")" \
	"(False, 'x86_64', ['', [], '', False, False, False])" "zeros.raw registered with --no-verify-boot"
assert_eq "$(image_field "$e" "'BootMode' in i, i['Architecture'], [i['Probe'][k] for k in ('PartitionTable', 'Filesystem', 'BootSignature')]")" \
	"(False, 'arm64', ['', 'ext4', False])" "ext4-noboot.raw registered with --no-verify-boot"
assert_eq "$(image_field "$m" "'BootMode' in i, i['Architecture'], [i['Probe'][k] for k in ('BootSignature', 'BootCode', 'EfiSystemPartition')]")" \
	"(False, 'i386', [False, False, False])" "mbr-noboot.raw registered with --no-verify-boot"
echo "ok: fixtures"

# ---- the architecture from the GPT partition types ------------------------
# A small GPT disk: a FAT EFI system partition and a root partition of TYPE.
gpt_disk() { # FILE ROOT-TYPE [EXTRA-PARTITIONS]
	rm -f "$1"
	truncate -s 16M "$1"
	{
		printf 'label: gpt\nstart=2048, size=4096, type=%s\nsize=4096, type=%s\n' "$ESP_GUID" "$2"
		for ((k = 0; k < ${3:-0}; k++)); do printf 'size=2048, type=%s\n' "$ROOT_LINUX"; done
	} | sfdisk -q "$1"
	mkfs.fat --offset=2048 "$1" 2048 >/dev/null 2>&1 || fail "mkfs.fat on $1 failed"
}
for t in x86_64:$ROOT_X86_64 arm64:$ROOT_ARM64 i386:$ROOT_I386; do
	gpt_disk "$TMPDIR/gpt.img" "${t#*:}"
	s=$(snap_of "$TMPDIR/gpt.img")
	id=$(register "gpt-${t%%:*}" "$s") || fail "register of a GPT disk with a ${t%%:*} root partition failed"
	assert_eq "$(image_field "$id" "i['Architecture'], i['BootMode'], i['Probe']['Architecture'], i['Probe']['PartitionTable'], len(i['Probe']['Partitions'])")" \
		"('${t%%:*}', 'uefi', '${t%%:*}', 'gpt', 2)" "a GPT disk with a ${t%%:*} root partition"
	# what is given wins over what the partitions say
	id=$(register "gpt-${t%%:*}-as-arm64" "$s" --architecture arm64)
	assert_eq "$(image_field "$id" "i['Architecture']")" arm64 "--architecture arm64 on a ${t%%:*} disk"
done
gpt_disk "$TMPDIR/gpt.img" "$ROOT_LINUX"           # a root type that names no architecture
s=$(snap_of "$TMPDIR/gpt.img")
refused "cannot tell the architecture of root snapshot $s.*--architecture" register gpt-generic "$s"
# an EFI system partition type without a FAT filesystem is no EFI system partition
cp "$TMPDIR/gpt.img" "$TMPDIR/nofat.img"
dd if=/dev/zero of="$TMPDIR/nofat.img" bs=512 seek=2048 count=4096 conv=notrunc status=none
s=$(snap_of "$TMPDIR/nofat.img")
refused "root snapshot $s cannot boot" register gpt-nofat "$s" --architecture x86_64
refused "root snapshot $s cannot boot with uefi: no EFI system partition with a FAT filesystem" \
	register gpt-nofat "$s" --architecture x86_64 --boot-mode uefi
# The probe records every partition: here 6 (the EFI system partition, an
# x86-64 root, 4 more). Each is kept in the Probe, and the record is JSON.
gpt_disk "$TMPDIR/gpt6.img" "$ROOT_X86_64" 4
s=$(snap_of "$TMPDIR/gpt6.img")
id=$(register gpt-6-partitions "$s") || fail "register of a GPT disk with 6 partitions failed"
assert_eq "$(image_field "$id" "i['Architecture'], i['BootMode']")" "('x86_64', 'uefi')" \
	"architecture and boot mode of a GPT disk with 6 partitions"
image_json "$id" 2>"$TMPDIR/describe.err"
check_eq "$(cat "$TMPDIR/describe.err")" "" "describe's warnings about the image of a disk with 6 partitions"
check_eq "$(i "i['Probe'].get('PartitionTable'), [p['Number'] for p in i['Probe'].get('Partitions', [])]")" \
	"('gpt', [1, 2, 3, 4, 5, 6])" "Probe of a GPT disk with 6 partitions"
# 16 partitions (as many as kiln probes), 15 of them ext4 with labels of
# the most ext4 allows (16 characters): all of them in the Probe
rm -f "$TMPDIR/gpt16.img"
truncate -s 40M "$TMPDIR/gpt16.img"
{
	printf 'label: gpt\nstart=2048, size=4096, type=%s\n' "$ESP_GUID"
	for ((k = 1; k < 16; k++)); do printf 'size=4096, type=%s\n' "$ROOT_X86_64"; done
} | sfdisk -q "$TMPDIR/gpt16.img"
mkfs.fat --offset=2048 "$TMPDIR/gpt16.img" 2048 >/dev/null 2>&1 || fail "mkfs.fat on gpt16.img failed"
for ((k = 1; k < 16; k++)); do
	mke2fs -q -F -t ext4 -L "$(printf 'kiln-label-%05d' $k)" -E offset=$(((2048 + k * 4096) * 512)) \
		"$TMPDIR/gpt16.img" 2M || fail "mke2fs of partition $((k + 1)) failed"
done
s=$(snap_of "$TMPDIR/gpt16.img")
id=$(register gpt-16-partitions "$s") || fail "register of a GPT disk with 16 partitions failed"
image_json "$id" 2>"$TMPDIR/describe.err"
check_eq "$(cat "$TMPDIR/describe.err")" "" "describe's warnings about the image of a disk with 16 partitions"
check_eq "$(i "len(i['Probe'].get('Partitions', [])), sorted(set(p['Filesystem'] for p in i['Probe'].get('Partitions', [])))")" \
	"(16, ['ext4', 'vfat'])" "Probe of a GPT disk with 16 partitions"
check_eq "$(i "[p['Label'] for p in i['Probe'].get('Partitions', [])][1:3]")" "['kiln-label-00001', 'kiln-label-00002']" \
	"labels in the Probe of a GPT disk with 16 partitions"
echo "ok: architectures"

# ---- ids and names ------------------------------------------------------------
for id in $(image_ids); do assert_id ami "$id"; done
# the limits: 3 and 128 characters, and every character allowed
n128=$(printf 'n%.0s' {1..128})
for name in abc "$n128" "(a) [b] c.d/e-f'g@h_i 0123456789 XYZ"; do
	id=$(register "$name" "$bios" --architecture x86_64)
	assert_eq "$(image_field "$id" "i['Name']")" "$name" "the name of $id"
done
echo "ok: names"

# ---- bad input: a clear error, exit != 0, nothing registered --------------------
images_state "$TMPDIR/before"
bad() { # PATTERN REGISTER-ARGS...: register fails so, and changes nothing
	local pattern=$1
	shift
	refused "$pattern" kiln image register "$@"
	images_state "$TMPDIR/after"
	cmp -s "$TMPDIR/before" "$TMPDIR/after" ||
		fail "kiln image register $* changed the images: $(diff "$TMPDIR/before" "$TMPDIR/after")"
}
ok=(--name fresh-name --root-device-name /dev/xvda --architecture x86_64)
map() { bad "$1" "${ok[@]}" --block-device-mappings "$2"; }
B=$bios
bdm="--block-device-mappings: "

# malformed mapping JSON
map "${bdm}invalid JSON: line 1, column [0-9]+" "[$(ebs /dev/xvda "$B")"
map "${bdm}invalid JSON: line 1, column [0-9]+: a trailing comma" "[$(ebs /dev/xvda "$B"),]"
map "${bdm}invalid JSON: line 1, column [0-9]+: unexpected 'x'" "[$(ebs /dev/xvda "$B")] x"
map "${bdm}invalid JSON" "[{DeviceName: '/dev/xvda'}]"
map "${bdm}invalid JSON" ""
map "${bdm}expected an array of mappings.*not an object" "$(ebs /dev/xvda "$B")"
map "${bdm}expected an array of mappings.*not a string" '"/dev/xvda"'
map "${bdm}no mappings" "[]"
map "${bdm}entry 1: must be an object, not a number" "[1]"
map "${bdm}entry 2: must be an object, not an array" "[$(ebs /dev/xvda "$B"),[]]"
map "${bdm}entry 1: DeviceName is missing" "[{\"Ebs\":{\"SnapshotId\":\"$B\"}}]"
map "${bdm}entry 1: DeviceName must be a string, not a number" "[{\"DeviceName\":1,\"Ebs\":{\"SnapshotId\":\"$B\"}}]"
map "${bdm}entry 1: unknown key \"Device\"" "[{\"Device\":\"/dev/xvda\",\"Ebs\":{\"SnapshotId\":\"$B\"}}]"
map "${bdm}entry 1: unknown key \"Ebs.Size\"" "[{\"DeviceName\":\"/dev/xvda\",\"Ebs\":{\"SnapshotId\":\"$B\",\"Size\":8}}]"
map "${bdm}entry 1: Ebs must be an object, not a string" "[{\"DeviceName\":\"/dev/xvda\",\"Ebs\":\"$B\"}]"
map "${bdm}entry 1: give exactly one of Ebs, VirtualName or NoDevice" "[{\"DeviceName\":\"/dev/xvda\"}]"
map "${bdm}entry 1: give exactly one of Ebs, VirtualName or NoDevice" \
	"[{\"DeviceName\":\"/dev/xvda\",\"Ebs\":{\"SnapshotId\":\"$B\"},\"NoDevice\":\"\"}]"
map "${bdm}entry 1: Ebs.VolumeSize must be a positive integer \(GiB\), not 1.5" "[$(ebs /dev/xvda "$B" 1.5)]"
map "${bdm}entry 1: Ebs.VolumeSize must be a positive integer \(GiB\), not 0" "[$(ebs /dev/xvda "$B" 0)]"
map "${bdm}entry 1: Ebs.VolumeSize must be a positive integer \(GiB\), not -1" "[$(ebs /dev/xvda "$B" -1)]"
map "${bdm}entry 1: Ebs.VolumeSize must be a positive integer \(GiB\), not a string" "[$(ebs /dev/xvda "$B" '"8"')]"
map "${bdm}entry 1: Ebs.VolumeSize .*too large" "[$(ebs /dev/xvda "$B" 99999999999999999999)]"
map "${bdm}entry 1: Ebs.DeleteOnTermination must be true or false, not a string" \
	"[{\"DeviceName\":\"/dev/xvda\",\"Ebs\":{\"SnapshotId\":\"$B\",\"DeleteOnTermination\":\"yes\"}}]"
map "${bdm}entry 1: Ebs.SnapshotId \"snap-123\" is not a snapshot id" "[$(ebs /dev/xvda snap-123)]"
map "${bdm}entry 1: Ebs.SnapshotId .* is not a snapshot id" "[$(ebs /dev/xvda "${B^^}")]"
map "${bdm}entry 1: Ebs.SnapshotId must not be empty" "[$(ebs /dev/xvda "")]"
map "${bdm}cannot read $TMPDIR/nothing.json" "file://$TMPDIR/nothing.json"
map "device name 'xvda' must look like /dev/xvdb" "[$(ebs xvda "$B")]"
map "device /dev/xvda is mapped twice" "[$(ebs /dev/xvda "$B"),$(ebs /dev/xvda "$B")]"
map "VirtualName 'ephemeral24' must be ephemeral0 to ephemeral23" \
	"[$(ebs /dev/xvda "$B"),{\"DeviceName\":\"/dev/xvdb\",\"VirtualName\":\"ephemeral24\"}]"
map "unknown VolumeType 'floppy'" \
	"[{\"DeviceName\":\"/dev/xvda\",\"Ebs\":{\"SnapshotId\":\"$B\",\"VolumeType\":\"floppy\"}}]"
echo "ok: malformed mappings"

# the root device must be mapped, to an Ebs snapshot
map "the root device /dev/xvda is not in the block device mappings" "[$(ebs /dev/xvdb "$B")]"
map "the root device /dev/xvda must be an Ebs mapping with a SnapshotId" \
	"[{\"DeviceName\":\"/dev/xvda\",\"VirtualName\":\"ephemeral0\"},$(ebs /dev/xvdb "$B")]"
map "the root device /dev/xvda must be an Ebs mapping with a SnapshotId" \
	"[{\"DeviceName\":\"/dev/xvda\",\"NoDevice\":\"\"},$(ebs /dev/xvdb "$B")]"
map "the root device /dev/xvda must be an Ebs mapping with a SnapshotId" \
	"[{\"DeviceName\":\"/dev/xvda\",\"Ebs\":{\"VolumeSize\":8}},$(ebs /dev/xvdb "$B")]"
bad "the root device name must look like /dev/xvda" --name fresh-name --root-device-name xvda \
	--architecture x86_64 --block-device-mappings "[$(ebs xvda "$B")]"

# snapshots: missing, in the other region, of another account, not completed
map "/dev/xvda: snapshot snap-0123456789abcdef0 does not exist" "[$(ebs /dev/xvda snap-0123456789abcdef0)]"
map "/dev/xvdb: snapshot snap-0123456789abcdef0 does not exist" \
	"[$(ebs /dev/xvda "$B"),$(ebs /dev/xvdb snap-0123456789abcdef0)]"
eu=$(snap_of "$FIX/boot-bios.raw" --region eu-west-1)
map "/dev/xvda: snapshot $eu is in another region" "[$(ebs /dev/xvda "$eu")]"
bad "/dev/xvda: snapshot $B is in another region" "${ok[@]}" --region eu-west-1 \
	--block-device-mappings "[$(ebs /dev/xvda "$B")]"
theirs=$(snap_of "$FIX/boot-bios.raw" --account $OTHER)
map "/dev/xvda: snapshot $theirs does not exist" "[$(ebs /dev/xvda "$theirs")]"
map "/dev/xvdb: snapshot $theirs does not exist" \
	"[$(ebs /dev/xvda "$B"),$(ebs /dev/xvdb "$theirs")]"
bad "/dev/xvda: snapshot $B does not exist" "${ok[@]}" --account $THIRD \
	--block-device-mappings "[$(ebs /dev/xvda "$B")]"
# A snapshot whose writer has not finished: another writer holds the
# region's lock (flock, as a running kiln does) while we learn its id.
vp=$(kiln volume import "$FIX/boot-bios.raw")
expect_killed env KILN_CRASH_POINT=snapshot:manifest-written "$KILN" snapshot create "$vp"
flock "$KILN_STORE/regions/us-east-1/lock" "$KILN" snapshot describe --output json >"$TMPDIR/snaps.json"
pending=$(json "$TMPDIR/snaps.json" "' '.join(s['SnapshotId'] for s in j['Snapshots'] if s['State'] != 'completed')")
assert_id snap "$pending"
map "/dev/xvda: snapshot $pending is pending, not completed" "[$(ebs /dev/xvda "$pending")]"
images_state "$TMPDIR/before"        # the pending snapshot is gone now
echo "ok: snapshots"

# VolumeSize: the snapshot's size in GiB rounded up by default, never smaller
big=$(kiln volume create --size 1048640K)              # 1 GiB + 64 KiB
kiln volume import "$FIX/boot-bios.raw" --volume-id "$big" >/dev/null
bigsnap=$(kiln snapshot create "$big")
exact=$(kiln volume create --size 1G)
kiln volume import "$FIX/boot-bios.raw" --volume-id "$exact" >/dev/null
exactsnap=$(kiln snapshot create "$exact")
assert_id vol "$big"
assert_id vol "$exact"
assert_id snap "$bigsnap"
map "/dev/xvda: VolumeSize 1 GiB is smaller than snapshot $bigsnap \(1073807360 bytes\)" \
	"[$(ebs /dev/xvda "$bigsnap" 1)]"
map "/dev/xvdb: VolumeSize 1 GiB is smaller than snapshot $bigsnap" \
	"[$(ebs /dev/xvda "$B"),$(ebs /dev/xvdb "$bigsnap" 1)]"
id=$(register big-default "$bigsnap" --architecture x86_64)
assert_eq "$(image_field "$id" "i['BlockDeviceMappings'][0]['Ebs']['VolumeSize']")" 2 \
	"default VolumeSize of a snapshot of 1 GiB + 64 KiB"
id=$(kiln image register --name big-2 --root-device-name /dev/xvda --architecture x86_64 \
	--block-device-mappings "[$(ebs /dev/xvda "$bigsnap" 2)]")
assert_eq "$(image_field "$id" "i['BlockDeviceMappings'][0]['Ebs']['VolumeSize']")" 2 "VolumeSize 2 given"
id=$(kiln image register --name exact-1 --root-device-name /dev/xvda --architecture x86_64 \
	--block-device-mappings "[$(ebs /dev/xvda "$exactsnap" 1)]")
assert_eq "$(image_field "$id" "i['BlockDeviceMappings'][0]['Ebs']['VolumeSize']")" 1 \
	"VolumeSize 1 for a snapshot of exactly 1 GiB"
id=$(register exact-default "$exactsnap" --architecture x86_64)
assert_eq "$(image_field "$id" "i['BlockDeviceMappings'][0]['Ebs']['VolumeSize']")" 1 \
	"default VolumeSize of a snapshot of exactly 1 GiB"
id=$(kiln image register --name sized-100 --root-device-name /dev/xvda --architecture x86_64 \
	--block-device-mappings "[$(ebs /dev/xvda "$B" 100),{\"DeviceName\":\"/dev/xvdb\",\"Ebs\":{\"VolumeSize\":5}},{\"DeviceName\":\"/dev/xvdc\",\"VirtualName\":\"ephemeral23\"},{\"DeviceName\":\"/dev/xvdd\",\"NoDevice\":\"\"}]")
assert_eq "$(image_field "$id" "i['BlockDeviceMappings']")" \
	"[{'DeviceName': '/dev/xvda', 'Ebs': {'SnapshotId': '$B', 'VolumeSize': 100, 'DeleteOnTermination': True, 'VolumeType': 'gp3'}}, {'DeviceName': '/dev/xvdb', 'Ebs': {'VolumeSize': 5, 'DeleteOnTermination': True, 'VolumeType': 'gp3'}}, {'DeviceName': '/dev/xvdc', 'VirtualName': 'ephemeral23'}, {'DeviceName': '/dev/xvdd', 'NoDevice': ''}]" \
	"a mapping of every kind"
images_state "$TMPDIR/before"
echo "ok: volume sizes"

# names: invalid ones, and unique per owner per region
nm="an image name is 3 to 128 letters, digits and \( \) \[ \] space \. / - ' @ _"
for name in ab "" "$(printf 'n%.0s' {1..129})" 'bad#name' 'bad:name' 'bad,name' 'bad!' 'star*' \
	'tab	name' 'new
line' 'abé' 'bad"q' 'semi;colon' 'back\slash'; do
	bad "$nm" --name "$name" --root-device-name /dev/xvda --architecture x86_64 \
		--block-device-mappings "[$(ebs /dev/xvda "$B")]"
done
bad "missing --name" --root-device-name /dev/xvda --block-device-mappings "[$(ebs /dev/xvda "$B")]"
bad "missing --root-device-name" --name fresh-name --block-device-mappings "[$(ebs /dev/xvda "$B")]"
bad "missing --block-device-mappings" --name fresh-name --root-device-name /dev/xvda
bad "account $OWNER already has an image named 'boot-bios' in us-east-1" --name boot-bios \
	--root-device-name /dev/xvda --architecture x86_64 --block-device-mappings "[$(ebs /dev/xvda "$B")]"
bad "already has an image named 'boot-uefi'" --name boot-uefi --root-device-name /dev/xvda \
	--architecture x86_64 --block-device-mappings "[$(ebs /dev/xvda "$uefi")]"
# another account may use the name, with a snapshot shared with it or public
kiln snapshot modify-attribute "$B" --create-volume-permission "{\"Add\":[{\"UserId\":\"$OTHER\"}]}"
o=$(register boot-bios "$B" --architecture x86_64 --account $OTHER) ||
	fail "$OTHER cannot name an image as one of $OWNER's"
assert_eq "$(image_field "$o" "i['OwnerId'], i['Name']" --account $OTHER)" "('$OTHER', 'boot-bios')" \
	"an image of $OTHER named as one of $OWNER's"
kiln snapshot modify-attribute "$uefi" --create-volume-permission '{"Add":[{"Group":"all"}]}'
t=$(register boot-uefi "$uefi" --architecture x86_64 --account $THIRD) ||
	fail "$THIRD cannot register a public snapshot under a name $OWNER uses"
assert_eq "$(image_field "$t" "i['OwnerId'], i['Name'], i['BootMode']" --account $THIRD)" \
	"('$THIRD', 'boot-uefi', 'uefi')" "an image of $THIRD made of a public snapshot"
# the same owner may use the name in the other region
w=$(register boot-bios "$eu" --architecture x86_64 --region eu-west-1) ||
	fail "$OWNER cannot use the name boot-bios in eu-west-1 too"
assert_eq "$(image_field "$w" "i['OwnerId'], i['Name']" --region eu-west-1)" "('$OWNER', 'boot-bios')" \
	"$OWNER's image named boot-bios in eu-west-1"
# ... but each once
images_state "$TMPDIR/before"
bad "account $OTHER already has an image named 'boot-bios' in us-east-1" --account $OTHER --name boot-bios \
	--root-device-name /dev/xvda --architecture x86_64 --block-device-mappings "[$(ebs /dev/xvda "$B")]"
bad "account $OWNER already has an image named 'boot-bios' in eu-west-1" --region eu-west-1 --name boot-bios \
	--root-device-name /dev/xvda --architecture x86_64 --block-device-mappings "[$(ebs /dev/xvda "$eu")]"
# a volume from a shared snapshot: the other account's own, deleted by it alone
ov=$(kiln --account $OTHER volume create --snapshot-id "$B") || fail "$OTHER cannot make a volume of shared $B"
expect_fail kiln volume delete "$ov"
[[ $ERR == *"only the owner of volume $ov"* ]] || fail "$OWNER deleting $OTHER's volume: $ERR"
expect_fail kiln --account $OTHER snapshot delete "$B"
[[ $ERR == *"only the owner of snapshot $B"* ]] || fail "$OTHER deleting $OWNER's snapshot: $ERR"
kiln snapshot describe "$B" >/dev/null || fail "$B is gone after $OTHER was refused"
kiln --account $OTHER volume delete "$ov" || fail "$OTHER cannot delete its own volume $ov"
# sharing taken back: no more registers or volumes with it
kiln snapshot modify-attribute "$B" --create-volume-permission "{\"Remove\":[{\"UserId\":\"$OTHER\"}]}"
expect_fail kiln --account $OTHER volume create --snapshot-id "$B"
[[ $ERR == *"snapshot $B does not exist"* ]] || fail "a volume of $B for $OTHER: $ERR"
expect_fail kiln --account $OTHER volume create --snapshot-id "$B" --size 1M
[[ $ERR == *"snapshot $B does not exist"* ]] || fail "a small volume of $B for $OTHER told it more: $ERR"
bad "/dev/xvda: snapshot $B does not exist" --account $OTHER --name other-name \
	--root-device-name /dev/xvda --architecture x86_64 --block-device-mappings "[$(ebs /dev/xvda "$B")]"
echo "ok: unique names"

# architecture, boot mode, virtualization type, description, tags, unbootable root
bad "invalid --architecture 'sparc': expected x86_64, arm64 or i386" "${ok[@]}" --architecture sparc \
	--block-device-mappings "[$(ebs /dev/xvda "$B")]"
bad "invalid --architecture 'X86_64'" "${ok[@]}" --architecture X86_64 --block-device-mappings "[$(ebs /dev/xvda "$B")]"
bad "invalid --architecture 'amd64'" "${ok[@]}" --architecture amd64 --block-device-mappings "[$(ebs /dev/xvda "$B")]"
bad "invalid --boot-mode 'efi': expected legacy-bios, uefi or uefi-preferred" "${ok[@]}" --boot-mode efi \
	--block-device-mappings "[$(ebs /dev/xvda "$B")]"
bad "invalid --boot-mode 'bios'" "${ok[@]}" --boot-mode bios --block-device-mappings "[$(ebs /dev/xvda "$B")]"
bad "invalid --virtualization-type 'paravirtual': expected hvm" "${ok[@]}" --virtualization-type paravirtual \
	--block-device-mappings "[$(ebs /dev/xvda "$B")]"
bad "--description is too long \(256 bytes; at most 255\)" "${ok[@]}" --description "$(printf 'd%.0s' {1..256})" \
	--block-device-mappings "[$(ebs /dev/xvda "$B")]"
bad "--tag 'novalue': expected KEY=VALUE" "${ok[@]}" --tag novalue --block-device-mappings "[$(ebs /dev/xvda "$B")]"
bad "the key 'k' is given twice" "${ok[@]}" --tag k=1 k=2 --block-device-mappings "[$(ebs /dev/xvda "$B")]"
bad "tag key 'aws:x' is empty or reserved" "${ok[@]}" --tag aws:x=1 --block-device-mappings "[$(ebs /dev/xvda "$B")]"
bad "root snapshot $ext4 cannot boot" "${ok[@]}" --block-device-mappings "[$(ebs /dev/xvda "$ext4")]"
bad "root snapshot $zeros cannot boot" "${ok[@]}" --block-device-mappings "[$(ebs /dev/xvda "$zeros"),$(ebs /dev/xvdb "$B")]"
bad "root snapshot $mbr cannot boot" "${ok[@]}" --block-device-mappings "[$(ebs /dev/xvda "$mbr")]"
# the bootable data disk does not make an unbootable root bootable; a bootable root with unbootable data disks is fine
id=$(kiln image register --name data-disks --root-device-name /dev/xvda --architecture x86_64 \
	--block-device-mappings "[$(ebs /dev/xvda "$B"),$(ebs /dev/xvdb "$zeros"),$(ebs /dev/xvdc "$ext4")]")
assert_eq "$(image_field "$id" "i['BootMode'], [m['Ebs']['SnapshotId'] for m in i['BlockDeviceMappings']]")" \
	"('legacy-bios', ['$B', '$zeros', '$ext4'])" "an image with unbootable data disks"
echo "ok: bad input"

# A snapshot deleted while a register of it is between its checks and its
# catalog row (it waits there, KILN_STALL_POINT): the delete goes through
# (no image maps it yet) and the register fails, so no image is left
# whose root snapshot is gone.
gone=$(snap_of "$FIX/boot-bios.raw")
KILN_STALL_POINT=image:register-checked:2 kiln image register --name racing --root-device-name /dev/xvda \
	--architecture x86_64 --block-device-mappings "[$(ebs /dev/xvda "$gone")]" \
	>"$TMPDIR/race.out" 2>"$TMPDIR/race.err" &
reg=$!
sleep 1
kiln snapshot delete "$gone" || fail "delete of $gone while a register of it waits"
rc=0
wait $reg || rc=$?
[ $rc -ne 0 ] || fail "register of $gone, deleted meanwhile, succeeded: $(cat "$TMPDIR/race.out")"
grep -q "was deleted while it registered" "$TMPDIR/race.err" || fail "register racing a delete: $(cat "$TMPDIR/race.err")"
[ -z "$(kiln image describe --output json | json /dev/stdin "[i['ImageId'] for i in j['Images'] if i['Name'] == 'racing']" | tr -d '[]')" ] ||
	fail "an image named racing was registered over a deleted snapshot"
# and the other way round: a delete that has checked no image maps the
# snapshot waits while an image of it is registered; it must then refuse
kept=$(snap_of "$FIX/boot-bios.raw")
KILN_STALL_POINT=snapshot:delete-checked:2 kiln snapshot delete "$kept" >/dev/null 2>"$TMPDIR/race.err" &
del=$!
sleep 1
kami=$(kiln image register --name racing-2 --root-device-name /dev/xvda --architecture x86_64 \
	--block-device-mappings "[$(ebs /dev/xvda "$kept")]") || fail "register of $kept while a delete of it waits"
rc=0
wait $del || rc=$?
[ $rc -ne 0 ] || fail "delete of $kept succeeded although image $kami maps it"
grep -q "in use by a registered image" "$TMPDIR/race.err" || fail "delete racing a register: $(cat "$TMPDIR/race.err")"
cmp_snapshot "$kept" "$FIX/boot-bios.raw"
echo "ok: a register racing a delete"

verify_clean
finish
