#!/bin/bash
# Who sees and launches what (docs/IMAGES.md "Who sees and launches
# what"): a second account cannot see or launch a private image and gets
# exactly the error of a nonexistent id from every command (describe,
# describe-attribute, modify-attribute, reset-attribute, deregister, copy,
# wait, instance launch); it can once the owner adds it, and not after the
# owner removes it; everyone can when the group all is added. Launch
# permissions are a set (adding or removing twice changes nothing), all is
# the only group, reset-attribute empties them, the owner can always
# launch, only the owner changes or deregisters (the "only the owner"
# error for a caller that may launch). describe lists own, shared and
# public images by creation date then id; --image-type, --owners,
# --executable-users and --filters (values ORed, filters ANDed, * and ?
# wildcards, \ escapes) select among them and never show more.
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/image-functions.sh"
requires sha256sum

fixtures
new_store
cleanup_fn stop_instance_daemons
NOPE=ami-0123456789abcdef0          # no such image
FOURTH=444444444444

bios=$(snap_of "$FIX/boot-bios.raw")
uefi=$(snap_of "$FIX/boot-uefi.raw")
kiln snapshot modify-attribute "$bios" --create-volume-permission '{"Add":[{"Group":"all"}]}'
P=$(register web-1 "$bios" --architecture x86_64 --tag env=prod role=web --description "web server")
Q=$(register web-2 "$bios" --architecture arm64 --tag env=dev role=web)
R=$(register db-1 "$uefi" --architecture x86_64 --tag env=prod role=db --description "database")
S=$(register theirs-1 "$bios" --architecture x86_64 --account $OTHER --tag env=prod)
T=$(register "pub [x]" "$bios" --architecture i386 --account $THIRD --description "a public image")
kiln image modify-attribute "$T" --account $THIRD --launch-permission '{"Add":[{"Group":"all"}]}'
for id in $P $Q $R $S $T; do assert_id ami "$id"; done
name_of() { # ID...: their names, sorted, as sees prints them
	local n=() id
	for id in "$@"; do
		case $id in
		"$P") n+=(web-1) ;; "$Q") n+=(web-2) ;; "$R") n+=(db-1) ;; "$S") n+=(theirs-1) ;; "$T") n+=("pub [x]") ;;
		*) n+=("$id") ;;
		esac
	done
	printf '%s\n' "${n[@]}" | LC_ALL=C sort | paste -sd ' '
}
sees() { # ACCOUNT [DESCRIBE-ARGS]: the names the account's describe lists,
	#   sorted (as a set); the list itself must be in describe's order
	local a=$1
	shift
	kiln image describe --output json --account "$a" "$@" >"$TMPDIR/sees.json" ||
		fail "describe --account $a $* failed"
	[ "$(sorted_check "$TMPDIR/sees.json")" = True ] ||
		fail "describe --account $a $*: not by creation date then id: $(json "$TMPDIR/sees.json" \
			"[(i['CreationDate'], i['ImageId']) for i in j['Images']]")"
	json "$TMPDIR/sees.json" "' '.join(sorted(i['Name'] for i in j['Images']))"
}
# what describe lists must be sorted by (CreationDate, ImageId): checked
# for every listing below through this
sorted_check() { # FILE
	json "$1" "[(i['CreationDate'], i['ImageId']) for i in j['Images']] == sorted((i['CreationDate'], i['ImageId']) for i in j['Images'])"
}

# ---- a private image: invisible to others, as if it did not exist ---------
# Every command reports P to the second account exactly as a missing image.
same_as_missing() { # WHAT ARGS-WITH-@ID@...: run for P and NOPE as $OTHER, compare
	local what=$1 a args_p=() args_n=() msg_p msg_n
	shift
	for a in "$@"; do
		args_p+=("${a//@ID@/$P}")
		args_n+=("${a//@ID@/$NOPE}")
	done
	refused "$P.*does not exist|does not exist.*$P" kiln --account $OTHER "${args_p[@]}"
	msg_p=$(not_found_msg "$P" "$ERR")
	refused "$NOPE.*does not exist|does not exist.*$NOPE" kiln --account $OTHER "${args_n[@]}"
	msg_n=$(not_found_msg "$NOPE" "$ERR")
	assert_eq "$msg_p" "$msg_n" "$what: the error for a private image of another account vs a missing one"
}
private_checks() { # WHEN
	same_as_missing "describe ($1)" image describe --image-ids @ID@
	same_as_missing "describe several ($1)" image describe --image-ids "$T" @ID@
	same_as_missing "describe-attribute ($1)" image describe-attribute @ID@ --attribute description
	same_as_missing "describe-attribute launchPermission ($1)" image describe-attribute @ID@ --attribute launchPermission
	same_as_missing "modify-attribute ($1)" image modify-attribute @ID@ --description mine
	same_as_missing "modify-attribute ($1)" image modify-attribute @ID@ \
		--launch-permission "{\"Add\":[{\"UserId\":\"$OTHER\"}]}"
	same_as_missing "reset-attribute ($1)" image reset-attribute @ID@ --attribute launchPermission
	same_as_missing "deregister ($1)" image deregister @ID@
	same_as_missing "copy ($1)" image copy --source-region us-east-1 --source-image-id @ID@ --region eu-west-1 --name stolen
	same_as_missing "wait ($1)" wait image-available @ID@ --timeout 1
	same_as_missing "instance launch ($1)" instance launch @ID@
	[[ $(sees $OTHER) != *web-1* ]] || fail "$OTHER lists P ($1): $(sees $OTHER)"
	[[ $(sees $OTHER --owners $OWNER) != *web-1* ]] || fail "$OTHER lists P with --owners ($1)"
	[[ $(sees $OTHER --filters Name=image-id,Values="$P") == "" ]] || fail "$OTHER finds P by filter ($1)"
	[[ $(sees $OTHER --filters Name=name,Values='web-*') == "" ]] || fail "$OTHER finds P by name ($1)"
}
private_checks "private"
assert_eq "$(kiln instance describe --account $OTHER --output json | json /dev/stdin "sum(len(r['Instances']) for r in j['Reservations'])")" 0 \
	"instances of $OTHER after the refused launches"
assert_eq "$(image_names --region eu-west-1 --account $OTHER)" "" "images $OTHER copied from a private one"
# each account sees its own, the shared and the public: no more
assert_eq "$(sees $OWNER)" "$(name_of $P $Q $R $T)" "what $OWNER sees"
assert_eq "$(sees $OTHER)" "$(name_of $S $T)" "what $OTHER sees"
assert_eq "$(sees $THIRD)" "$(name_of $T)" "what $THIRD sees"
assert_eq "$(sees $FOURTH)" "$(name_of $T)" "what $FOURTH sees"
echo "ok: private"

# ---- shared with OTHER -----------------------------------------------------
perms() { # ID: its launch permissions as the owner sees them
	kiln image describe-attribute "$1" --attribute launchPermission --output json >"$TMPDIR/perm.json"
	json "$TMPDIR/perm.json" "j['LaunchPermissions']"
}
share() { # ID JSON
	kiln image modify-attribute "$1" --launch-permission "$2" || fail "modify-attribute $1 $2 failed"
}
share "$P" "{\"Add\":[{\"UserId\":\"$OTHER\"}]}"
assert_eq "$(perms "$P")" "[{'UserId': '$OTHER'}]" "launch permissions of P"
assert_eq "$(sees $OTHER)" "pub [x] theirs-1 web-1" "what $OTHER sees once P is shared"
assert_eq "$(image_field "$P" "i['Name'], i['OwnerId'], i['Public']" --account $OTHER)" "('web-1', '$OWNER', False)" \
	"P as $OTHER describes it"
assert_eq "$(sees $THIRD)" "$(name_of $T)" "what $THIRD sees once P is shared with $OTHER"
inst=$(kiln instance launch "$P" --account $OTHER)
[[ $inst =~ ^i-[0-9a-f]{17}$ ]] || fail "instance launch of P by $OTHER printed '$inst'"
kiln instance terminate "$inst" --account $OTHER >/dev/null
# a set: adding again changes nothing; so does adding in one call twice
share "$P" "{\"Add\":[{\"UserId\":\"$OTHER\"}]}"
share "$P" "{\"Add\":[{\"UserId\":\"$OTHER\"},{\"UserId\":\"$OTHER\"}]}"
assert_eq "$(perms "$P")" "[{'UserId': '$OTHER'}]" "launch permissions of P after adding $OTHER again"
# the shared caller may look, not change: "only the owner"
images_state "$TMPDIR/before"
owner_only() { refused "only the owner of $P may do that" kiln --account $OTHER "$@"; }
owner_only image modify-attribute "$P" --description mine
owner_only image modify-attribute "$P" --launch-permission "{\"Add\":[{\"UserId\":\"$FOURTH\"}]}"
owner_only image modify-attribute "$P" --launch-permission "{\"Remove\":[{\"UserId\":\"$OTHER\"}]}"
owner_only image modify-attribute "$P" --launch-permission '{"Add":[{"Group":"all"}]}'
owner_only image reset-attribute "$P" --attribute launchPermission
owner_only image deregister "$P"
owner_only image deregister "$P" --delete-associated-snapshots
owner_only image describe-attribute "$P" --attribute launchPermission
images_state "$TMPDIR/after"
cmp -s "$TMPDIR/before" "$TMPDIR/after" || fail "the shared caller changed something: $(diff "$TMPDIR/before" "$TMPDIR/after")"
assert_eq "$(perms "$P")" "[{'UserId': '$OTHER'}]" "launch permissions of P after $OTHER tried to change them"
assert_eq "$(kiln image describe-attribute "$P" --attribute description --account $OTHER --output json |
	json /dev/stdin "j['Description']")" "{'Value': 'web server'}" "the description of P, as $OTHER reads it"
# Q has no description: {} as in EC2, and "-" in text
assert_eq "$(kiln image describe-attribute "$Q" --attribute description --output json |
	json /dev/stdin "j['Description']")" "{}" "the description of Q, which has none"
assert_eq "$(kiln image describe-attribute "$Q" --attribute description | tail -n 1)" "-" \
	"the description of Q in text"
assert_eq "$(kiln image describe-attribute "$P" --attribute bootMode --account $OTHER --output json |
	json /dev/stdin "j['BootMode']")" "{'Value': 'legacy-bios'}" "the boot mode of P, as $OTHER reads it"
# the image types, as OTHER sees them
assert_eq "$(sees $OTHER --image-type mine)" "$(name_of $S)" "--image-type mine for $OTHER"
assert_eq "$(sees $OTHER --image-type shared)" "$(name_of $P)" "--image-type shared for $OTHER"
assert_eq "$(sees $OTHER --image-type community)" "$(name_of $T)" "--image-type community for $OTHER"
assert_eq "$(sees $OTHER --image-type shared community)" "pub [x] web-1" \
	"--image-type shared community for $OTHER"
assert_eq "$(sees $OTHER --image-type mine --image-type shared)" "theirs-1 web-1" \
	"--image-type mine --image-type shared for $OTHER"
assert_eq "$(sees $OWNER --image-type mine)" "$(name_of $P $Q $R)" "--image-type mine for $OWNER"
assert_eq "$(sees $OWNER --image-type shared)" "" "--image-type shared for $OWNER"
refused "invalid --image-type 'public': expected mine, shared or community" kiln image describe --image-type public
# --owners and --executable-users
assert_eq "$(sees $OTHER --owners self)" "$(name_of $S)" "--owners self for $OTHER"
assert_eq "$(sees $OTHER --owners $OWNER)" "$(name_of $P)" "--owners $OWNER for $OTHER (only the shared one)"
assert_eq "$(sees $OTHER --owners $OWNER $THIRD)" "pub [x] web-1" \
	"--owners $OWNER $THIRD for $OTHER"
assert_eq "$(sees $OTHER --owners $FOURTH)" "" "--owners $FOURTH for $OTHER"
assert_eq "$(sees $OWNER --owners self $THIRD)" "$(name_of $P $Q $R $T)" "--owners self $THIRD for $OWNER"
refused "invalid --owners 'bogus': expected self or a 12-digit account" kiln image describe --owners bogus
assert_eq "$(sees $OWNER --executable-users all)" "$(name_of $T)" "--executable-users all"
assert_eq "$(sees $OWNER --executable-users $OTHER)" "$(name_of $P)" "--executable-users $OTHER for $OWNER"
assert_eq "$(sees $OWNER --executable-users $FOURTH)" "" "--executable-users $FOURTH for $OWNER"
assert_eq "$(sees $OWNER --executable-users self)" "$(name_of $T)" "--executable-users self for $OWNER"
assert_eq "$(sees $OTHER --executable-users self)" "pub [x] web-1" \
	"--executable-users self for $OTHER"
assert_eq "$(sees $OTHER --executable-users $OTHER)" "pub [x] web-1" \
	"--executable-users with $OTHER's own id for $OTHER"
assert_eq "$(sees $OWNER --executable-users $OTHER --owners $THIRD)" "" "--executable-users and --owners: ANDed"
refused "invalid --executable-users 'everyone'" kiln image describe --executable-users everyone
echo "ok: shared"

# ---- removed: invisible again; removing twice changes nothing --------------
share "$P" "{\"Remove\":[{\"UserId\":\"$OTHER\"}]}"
assert_eq "$(perms "$P")" "[]" "launch permissions of P after the removal"
private_checks "removed"
share "$P" "{\"Remove\":[{\"UserId\":\"$OTHER\"}]}"
share "$P" "{\"Remove\":[{\"UserId\":\"$FOURTH\"},{\"Group\":\"all\"}]}"
assert_eq "$(perms "$P")" "[]" "launch permissions of P after removing again"
assert_eq "$(image_field "$P" "i['Public']")" False "Public of P after removing all"
echo "ok: removed"

# ---- public: everyone; all is the only group ------------------------------
share "$P" '{"Add":[{"Group":"all"}]}'
share "$P" '{"Add":[{"Group":"all"},{"Group":"all"}]}'
assert_eq "$(perms "$P")" "[{'Group': 'all'}]" "launch permissions of P once public"
assert_eq "$(image_field "$P" "i['Public']")" True "Public of P once public"
for a in $OTHER $THIRD $FOURTH; do
	assert_eq "$(image_field "$P" "i['Name'], i['Public']" --account $a)" "('web-1', True)" "P as $a describes it"
	[[ $(sees $a --image-type community) == *web-1* ]] || fail "P is not community for $a"
	[[ $(sees $a --image-type shared) != *web-1* ]] || fail "P is shared for $a, not only public"
done
inst=$(kiln instance launch "$P" --account $FOURTH)
kiln instance terminate "$inst" --account $FOURTH >/dev/null
refused "only the owner of $P may do that" kiln image modify-attribute "$P" --account $FOURTH --description x
refused "only the owner of $P may do that" kiln image deregister "$P" --account $FOURTH
# accounts and the group together; then reset: private, only the owner
share "$P" "{\"Add\":[{\"UserId\":\"$OTHER\"},{\"UserId\":\"$THIRD\"}],\"Remove\":[{\"UserId\":\"$FOURTH\"}]}"
assert_eq "$(perms "$P")" "[{'Group': 'all'}, {'UserId': '$OTHER'}, {'UserId': '$THIRD'}]" "launch permissions of P, all and two accounts"
share "$P" '{"Remove":[{"Group":"all"}]}'
assert_eq "$(perms "$P")" "[{'UserId': '$OTHER'}, {'UserId': '$THIRD'}]" "launch permissions of P without all"
assert_eq "$(sees $FOURTH)" "$(name_of $T)" "what $FOURTH sees once P is no longer public"
kiln image reset-attribute "$P" --attribute launchPermission
assert_eq "$(perms "$P")" "[]" "launch permissions of P after reset-attribute"
assert_eq "$(image_field "$P" "i['Public']")" False "Public of P after reset-attribute"
private_checks "reset"
for a in $THIRD $FOURTH; do
	refused "image $P does not exist or is not yours to launch" kiln image describe --image-ids "$P" --account $a
done
share "$P" '{"Add":[{"Group":"all"}]}'
kiln image reset-attribute "$P" --attribute launchPermission
kiln image reset-attribute "$P" --attribute launchPermission
assert_eq "$(perms "$P")" "[]" "launch permissions of P after a public one was reset twice"
assert_eq "$(sees $FOURTH)" "$(name_of $T)" "what $FOURTH sees once P is reset"
# the owner can always launch, whatever the permissions say
assert_eq "$(image_field "$P" "i['Name']")" web-1 "P as its owner describes it after reset"
inst=$(kiln instance launch "$P")
kiln instance terminate "$inst" >/dev/null
echo "ok: public and reset"

# ---- bad permission changes: refused, nothing changed ------------------------
share "$P" "{\"Add\":[{\"UserId\":\"$OTHER\"}]}"
images_state "$TMPDIR/before"
lp() { refused "$1" kiln image modify-attribute "$P" --launch-permission "$2"; }
lp "unknown Group \"everyone\" \(the only group is \"all\"\)" '{"Add":[{"Group":"everyone"}]}'
lp "unknown Group \"All\"" '{"Add":[{"Group":"All"}]}'
lp "UserId \"1234\" is not an account" '{"Add":[{"UserId":"1234"}]}'
lp "UserId \"12345678901a\" is not an account" '{"Remove":[{"UserId":"12345678901a"}]}'
lp "account $THIRD is in both Add and Remove" "{\"Add\":[{\"UserId\":\"$THIRD\"}],\"Remove\":[{\"UserId\":\"$THIRD\"}]}"
lp "the group \"all\" is in both Add and Remove" '{"Add":[{"Group":"all"}],"Remove":[{"Group":"all"}]}'
lp "nothing to change" '{}'
lp "nothing to change" '{"Add":[]}'
lp "unknown key \"add\"" '{"add":[{"Group":"all"}]}'
lp "give exactly one of UserId or Group" "{\"Add\":[{\"UserId\":\"$THIRD\",\"Group\":\"all\"}]}"
lp "Add must be an array" '{"Add":{"Group":"all"}}'
lp "invalid JSON" '{"Add":[{"Group":"all"}]'
refused "give one of --launch-permission or --description" kiln image modify-attribute "$P"
refused "invalid --attribute 'productCodes'" kiln image reset-attribute "$P" --attribute productCodes
refused "invalid --attribute 'kernel'" kiln image describe-attribute "$P" --attribute kernel
refused "invalid image id" kiln image modify-attribute ami-xyz --launch-permission '{"Add":[{"Group":"all"}]}'
images_state "$TMPDIR/after"
cmp -s "$TMPDIR/before" "$TMPDIR/after" || fail "a refused change changed something: $(diff "$TMPDIR/before" "$TMPDIR/after")"
assert_eq "$(perms "$P")" "[{'UserId': '$OTHER'}]" "launch permissions of P after the refused changes"
# the description: only the owner, and it shows
kiln image modify-attribute "$P" --description "web server v2"
assert_eq "$(image_field "$P" "i['Description']" --account $OTHER)" "web server v2" "P's new description, seen by $OTHER"
echo "ok: bad changes"

# ---- filters: values ORed, filters ANDed, wildcards -------------------------
# OWNER sees P Q R (own) and T (public); P is shared with OTHER.
V=$(kiln image register --name vol-8 --root-device-name /dev/sda1 --architecture x86_64 \
	--block-device-mappings "[$(ebs /dev/sda1 "$bios" 8),{\"DeviceName\":\"/dev/sdb\",\"VirtualName\":\"ephemeral0\"}]" \
	--tag Name=eight)
f() { sees $OWNER --filters "$@"; }
fe() { # WANT FILTER...: the names (as a sorted set) the filters select
	local want=$1
	shift
	assert_eq "$(f "$@")" "$want" "--filters $*"
}
fe "web-1 web-2" Name=name,Values='web-*'
fe "web-1 web-2" Name=name,Values='web-?'
fe "" Name=name,Values='web-'
fe "" Name=name,Values='web-??'
fe "db-1 web-1 web-2" Name=name,Values='web-?,db-*'                 # ORed
fe "web-1 web-2" Name=name,Values='web-?' Name=name,Values='*-?'  # ANDed
fe "" Name=name,Values='web-?' Name=name,Values='db-?'              # ANDed, none
fe "web-1" Name=name,Values='web-*' Name=tag:env,Values=prod
fe "db-1 web-1" Name=tag:env,Values=prod
fe "db-1 web-1 web-2" Name=tag:env,Values='*'
fe "db-1 web-1 web-2" Name=tag:env,Values='prod,dev'
fe "" Name=tag:env,Values='PROD'
fe "" Name=tag:role,Values=prod
fe "db-1 web-1 web-2" Name=tag-key,Values='ro*'
fe "vol-8" Name=tag-key,Values=Name
fe "vol-8" Name=tag-key,Values=Name Name=architecture,Values=x86_64
fe "pub [x] web-2" Name=architecture,Values=arm64,i386
fe "pub [x]" Name=is-public,Values=true
fe "db-1 vol-8 web-1 web-2" Name=is-public,Values=false
fe "pub [x]" Name=owner-id,Values="$THIRD"
fe "pub [x]" Name=owner-id,Values='3*'
fe "db-1 vol-8 web-1 web-2" Name=owner-id,Values="$OWNER"
fe "web-1" Name=description,Values='web*'
fe "db-1 pub [x]" Name=description,Values='*a*' Name=description,Values='?????*'
fe "pub [x]" 'Name=name,Values=pub \[x\]'
fe "pub [x]" 'Name=name,Values=pub [x]'
fe "pub [x]" 'Name=name,Values=pub ?x?'
fe "" 'Name=name,Values=web\*'
fe "web-1 web-2" 'Name=name,Values=w\eb-*'
fe "db-1 pub [x] web-1 web-2" Name=block-device-mapping.device-name,Values='/dev/xvd?'
fe "vol-8" Name=block-device-mapping.device-name,Values='/dev/sdb'
fe "vol-8" Name=root-device-name,Values='/dev/sd*'
fe "db-1" Name=block-device-mapping.snapshot-id,Values="$uefi"
fe "db-1 pub [x] vol-8 web-1 web-2" Name=block-device-mapping.snapshot-id,Values="$bios,$uefi" Name=state,Values=available
fe "vol-8" Name=block-device-mapping.volume-size,Values=8
fe "db-1 pub [x] web-1 web-2" Name=block-device-mapping.volume-size,Values=1
fe "" Name=block-device-mapping.volume-size,Values=2
fe "db-1 web-1" Name=image-id,Values="$P,$R"
fe "vol-8" Name=image-id,Values="$V"
fe "db-1 pub [x] vol-8 web-1 web-2" Name=image-id,Values='ami-*' Name=image-type,Values=machine Name=root-device-type,Values=ebs
fe "" Name=root-device-type,Values=instance-store
fe "" Name=state,Values=pending,failed
fe "db-1" Name=boot-mode,Values=uefi
fe "db-1 pub [x] vol-8 web-1 web-2" Name=virtualization-type,Values=hvm
fe "" Name=source-image-id,Values='?*'
fe "db-1 pub [x] vol-8 web-1 web-2" Name=source-image-region,Values=''
# JSON filters, one or an array
fe "web-1 web-2" '{"Name":"name","Values":["web-*"]}'
fe "web-1" '[{"Name":"name","Values":["web-*"]},{"Name":"tag:env","Values":["prod"]}]'
# filters with the other options: ANDed; never more than the caller may see
assert_eq "$(sees $OWNER --owners self --filters Name=name,Values='*-1')" "db-1 web-1" "--owners self and a name filter"
assert_eq "$(sees $OTHER --filters Name=name,Values='*')" "pub [x] theirs-1 web-1" "every name, as $OTHER"
assert_eq "$(sees $OTHER --filters Name=owner-id,Values=$OWNER)" "web-1" "owner-id $OWNER, as $OTHER"
assert_eq "$(sees $OWNER --image-ids "$P" "$Q" --filters Name=architecture,Values=x86_64)" "web-1" "--image-ids and a filter"
refused "unknown filter name 'bogus'" kiln image describe --filters Name=bogus,Values=x
refused "filter 'name' has no values" kiln image describe --filters Name=name
refused "'tag:' needs a tag key" kiln image describe --filters Name=tag:,Values=x
refused "expected Name=NAME,Values=VALUE1,VALUE2" kiln image describe --filters Values=x,junk
echo "ok: filters"

# ---- order: creation date, then id ------------------------------------------------
# Register until the clock has moved on a second and an image of the later
# second has an id below one of the earlier second's, and two images share
# a second, so that both orderings are tested (bounded; no sleep: on a
# loaded machine two registers may fall in different seconds).
ordered() { # ACCOUNT: describe's list is sorted by (CreationDate, ImageId)
	kiln image describe --output json --account "$1" >"$TMPDIR/order-all.json"
	sorted_check "$TMPDIR/order-all.json"
}
k=0
while :; do
	k=$((k + 1))
	[ $k -le 400 ] || fail "after 400 registers, no two images of different seconds with their ids in the other order and two of the same second"
	register "order-$k" "$bios" --architecture x86_64 >/dev/null
	kiln image describe --output json --filters Name=name,Values='order-*' >"$TMPDIR/order.json"
	json "$TMPDIR/order.json" "any(a['CreationDate'] < b['CreationDate'] and a['ImageId'] > b['ImageId'] for a in j['Images'] for b in j['Images']) and len(set(i['CreationDate'] for i in j['Images'])) < len(j['Images'])" |
		grep -q True && break
done
echo "registered $k images to see an id order that is not the date order"
assert_eq "$(sorted_check "$TMPDIR/order.json")" True "describe's order of the order-* images: CreationDate, then ImageId"
# ties (the same second) by id; and every listing above, for every account
assert_eq "$(json "$TMPDIR/order.json" "len(set(i['CreationDate'] for i in j['Images'])) < len(j['Images'])")" True \
	"two order-* images of the same second"
for a in $OWNER $OTHER $THIRD $FOURTH; do
	assert_eq "$(ordered $a)" True "describe's order for $a"
done
kiln image describe --output json --filters Name=name,Values='order-*' --image-type mine >"$TMPDIR/order2.json"
assert_eq "$(json "$TMPDIR/order2.json" "[i['ImageId'] for i in j['Images']]")" \
	"$(json "$TMPDIR/order.json" "[i['ImageId'] for i in j['Images']]")" "order with --image-type mine"
echo "ok: order"

finish
