# Helpers for the image (AMI) tests: source functions.sh first, then this.
#   fixtures                    build or reuse the fixture disks of
#                               tests/fixtures/make-disks.sh in $KILN_FIXTURES
#                               (default: tests/data-cache); sets FIX to it
#   snap_of FILE                import FILE into a new volume and snapshot it;
#                               prints the snapshot id (--region/--account may
#                               follow FILE)
#   ebs DEV SNAP [SIZE]         one Ebs block device mapping, as JSON
#   register NAME SNAP [ARGS]   register SNAP as /dev/xvda of image NAME
#   image_json ID [ARGS]        describe --image-ids ID as JSON into
#                               $TMPDIR/.image.json (exactly one image)
#   image_field ID EXPR [ARGS]  a python expression on that image (as i)
#   image_names [ARGS]          the names describe lists, in its order, one
#                               line, separated by '|'
#   image_ids [ARGS]            the ids describe lists, in its order, spaces
#   images_state FILE           what accounts 123456789012, 222222222222 and
#                               333333333333 see in both regions, to compare
#   refused PATTERN CMD...      CMD fails with one line "kiln: ..." on stderr
#                               matching the extended regex PATTERN (any case),
#                               and prints nothing on stdout
#   not_found_msg ID MSG        MSG with ID replaced by "ID", to compare the
#                               messages of an invisible and a missing image
#   stop_instance_daemons       stop the kiln-nbd that `instance launch`
#                               started for the store (cleanup_fn it)
#   copy_field EXPR             a python expression on the last copy report
#                               ($TMPDIR/.copy.json, as c: j['Copy'])

OWNER=123456789012        # the store's default account
OTHER=222222222222
THIRD=333333333333
ESP_GUID=C12A7328-F81F-11D2-BA4B-00A0C93EC93B
ROOT_X86_64=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709
ROOT_ARM64=B921B045-1DF0-41C3-AF44-4C6F280D3FAE
ROOT_I386=44479540-F297-41B2-9AF7-D131D5F0458A
ROOT_LINUX=0FC63DAF-8483-4772-8E79-3D69D8477DE4      # generic: no architecture

_repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

fixtures() {
	FIX=${KILN_FIXTURES:-$_repo/tests/data-cache}
	if ! "$_repo/tests/fixtures/make-disks.sh" "$FIX" >"$TMPDIR/.make-disks.log" 2>&1; then
		echo "requires the fixture disks: tests/fixtures/make-disks.sh $FIX failed:"
		tail -n 5 "$TMPDIR/.make-disks.log"
		exit 77
	fi
	(cd "$FIX" && sha256sum --quiet -c SHA256SUMS) || fail "fixture disks in $FIX do not match their SHA256SUMS"
}

snap_of() { # FILE [GLOBAL-OPTIONS]
	local f=$1 v
	shift
	v=$(kiln volume import "$f" "$@") || fail "import of $f failed"
	kiln snapshot create "$v" "$@" || fail "snapshot of $v ($f) failed"
}

ebs() { # DEV SNAP [SIZE]
	if [ -n "${3:-}" ]; then
		printf '{"DeviceName":"%s","Ebs":{"SnapshotId":"%s","VolumeSize":%s}}' "$1" "$2" "$3"
	else
		printf '{"DeviceName":"%s","Ebs":{"SnapshotId":"%s"}}' "$1" "$2"
	fi
}

register() { # NAME SNAP [ARGS]
	local name=$1 snap=$2
	shift 2
	kiln image register --name "$name" --root-device-name /dev/xvda \
		--block-device-mappings "[$(ebs /dev/xvda "$snap")]" "$@"
}

image_json() { # ID [ARGS]
	local id=$1
	shift
	kiln image describe --image-ids "$id" --output json "$@" >"$TMPDIR/.image.json" ||
		fail "describe $id $* failed"
	[ "$(json "$TMPDIR/.image.json" "len(j['Images'])")" = 1 ] ||
		fail "describe --image-ids $id $* lists $(json "$TMPDIR/.image.json" "len(j['Images'])") images"
}

image_field() { # ID EXPR [ARGS]
	local id=$1 expr=$2
	shift 2
	image_json "$id" "$@"
	json "$TMPDIR/.image.json" "(lambda i: ($expr))(j['Images'][0])"
}

image_names() { # [ARGS]
	kiln image describe --output json "$@" >"$TMPDIR/.images.json" || fail "describe $* failed"
	json "$TMPDIR/.images.json" "'|'.join(i['Name'] for i in j['Images'])"
}

image_ids() { # [ARGS]
	kiln image describe --output json "$@" >"$TMPDIR/.images.json" || fail "describe $* failed"
	json "$TMPDIR/.images.json" "' '.join(i['ImageId'] for i in j['Images'])"
}

images_state() { # FILE
	local a r
	for r in us-east-1 eu-west-1; do
		for a in $OWNER $OTHER $THIRD; do
			echo "== $r $a"
			kiln image describe --output json --region $r --account $a 2>/dev/null
		done
	done >"$1"
}

refused() { # PATTERN CMD...
	local pattern=$1
	shift
	expect_fail "$@"
	[ "$(printf '%s\n' "$ERR" | wc -l)" -eq 1 ] || fail "more than one line on stderr: $*: $ERR"
	[[ $ERR == kiln:* ]] || fail "message does not start with 'kiln:': $ERR"
	printf '%s\n' "$ERR" | grep -qiE -- "$pattern" || fail "$*: message does not match /$pattern/: $ERR"
	[ ! -s "$TMPDIR/.stdout" ] || fail "$* printed on stdout: $(cat "$TMPDIR/.stdout")"
}

not_found_msg() { # ID MSG
	printf '%s\n' "${2//$1/ID}"
}

stop_instance_daemons() {
	local r pidf pid i
	for r in us-east-1 eu-west-1; do
		pidf=$KILN_STORE/regions/$r/nbd.pid
		[ -s "$pidf" ] || continue
		pid=$(cat "$pidf")
		kill -TERM "$pid" 2>/dev/null || continue
		for ((i = 0; i < 100; i++)); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		kill -0 "$pid" 2>/dev/null && { echo "kiln-nbd $pid ignored SIGTERM" >&2; kill -KILL "$pid"; }
	done
	return 0
}

copy_field() { # EXPR
	json "$TMPDIR/.copy.json" "(lambda c: ($1))(j['Copy'])"
}
