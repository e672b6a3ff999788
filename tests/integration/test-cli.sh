#!/bin/bash
# The command line: --help at every level (stdout, exit 0, no store
# needed); global options before, between and after the command words
# give the same result; --output json parses and has the AWS-like keys;
# ids have their documented form; region list; KILN_STORE, KILN_REGION,
# KILN_ACCOUNT and the ./.kiln default; when not on a terminal, import
# prints the id and nothing else (and on one, a progress bar on stderr).
source "$(dirname "$0")/functions.sh"
requires openssl script

vol_re='^vol-[0-9a-f]{17}$'
snap_re='^snap-[0-9a-f]{17}$'

# ---- help -------------------------------------------------------------------
# help must not need a store
export KILN_STORE=$TMPDIR/no-store
help_ok() { # WANT ARGS...: `kiln ARGS` prints help that mentions WANT
	local want=$1 rc=0
	shift
	kiln "$@" >"$TMPDIR/help.out" 2>"$TMPDIR/help.err" || rc=$?
	[ $rc -eq 0 ] || fail "kiln $*: exit $rc: $(cat "$TMPDIR/help.err")"
	[ ! -s "$TMPDIR/help.err" ] || fail "kiln $*: help on stderr: $(cat "$TMPDIR/help.err")"
	head -n 1 "$TMPDIR/help.out" | grep -q "^Usage: kiln" || fail "kiln $*: no usage line: $(head -n 3 "$TMPDIR/help.out")"
	grep -qF -- "$want" "$TMPDIR/help.out" || fail "kiln $*: help does not mention '$want'"
}
help_ok "Commands:" --help
help_ok "Commands:" -h
help_ok "--store" --help
# the commands the top-level help lists: its first column
kiln --help | sed -n '/^Commands:/,/^$/p' | sed '1d;/^$/d' | awk -F'  +' '{ print $2 }' >"$TMPDIR/commands"
for c in "init" "region list" "volume create" "volume import" "volume export" "volume describe" \
	"volume delete" "snapshot create" "snapshot describe" "snapshot delete" "snapshot export" \
	"snapshot diff" "store stats" "store verify" "store gc"; do
	grep -qxF "$c" "$TMPDIR/commands" || fail "kiln --help does not list '$c': $(cat "$TMPDIR/commands")"
done
while read -r noun verb; do
	if [ -n "$verb" ]; then
		help_ok "$verb" "$noun" --help
		help_ok "$verb" --help "$noun"
		help_ok "kiln $noun $verb" "$noun" "$verb" --help
		help_ok "kiln $noun $verb" "$noun" "$verb" -h
		help_ok "kiln $noun $verb" --help "$noun" "$verb"
		help_ok "kiln $noun $verb" "$noun" --help "$verb"
		help_ok "--region" "$noun" "$verb" --help          # the global options too
	else
		help_ok "kiln $noun" "$noun" --help
	fi
done <"$TMPDIR/commands"
# help wins over what is wrong before or after it
help_ok "kiln volume create" volume create --bogus --help
help_ok "kiln volume create" volume create --help --size
help_ok "kiln snapshot export" snapshot export a b c --help
help_ok "Commands:" --help --output yaml
[ ! -e "$KILN_STORE" ] || fail "help created the store"
kiln --version >"$TMPDIR/version" || fail "kiln --version failed"
grep -qE '^kiln [0-9]' "$TMPDIR/version" || fail "kiln --version: $(cat "$TMPDIR/version")"

# ---- a store with something in it -----------------------------------------
export KILN_STORE=$TMPDIR/store
kiln init 2>/dev/null
img=$TMPDIR/img
make_random "$img" $((3 * 1024 * 1024 + 5)) cli
img2=$TMPDIR/img2
cp "$img" "$img2"
overwrite "$img2" 70000 100 cli2

vol=$(kiln volume import "$img")
[[ $vol =~ $vol_re ]] || fail "volume import printed '$vol'"
snap=$(kiln snapshot create "$vol" --description "first")
[[ $snap =~ $snap_re ]] || fail "snapshot create printed '$snap'"
kiln volume import "$img2" --volume-id "$vol" >"$TMPDIR/out"
assert_eq "$(cat "$TMPDIR/out")" "$vol" "output of volume import --volume-id"
kiln snapshot create "$vol" --output json >"$TMPDIR/snap.json"
snap2=$(json "$TMPDIR/snap.json" "j['SnapshotId']")
[[ $snap2 =~ $snap_re ]] || fail "snapshot create --output json gave '$snap2'"
assert_eq "$(json "$TMPDIR/snap.json" "j['State']")" completed "State of snapshot create --output json"
kiln volume create --snapshot-id "$snap" --size 2G --output json >"$TMPDIR/vol.json"
cow=$(json "$TMPDIR/vol.json" "j['VolumeId']")
[[ $cow =~ $vol_re ]] || fail "volume create --output json gave '$cow'"
blank=$(kiln volume create --size 1)
[[ $blank =~ $vol_re ]] || fail "volume create printed '$blank'"
kiln volume import "$img" --output json >"$TMPDIR/vol.json"
v3=$(json "$TMPDIR/vol.json" "j['VolumeId']")
[[ $v3 =~ $vol_re ]] || fail "volume import --output json gave '$v3'"
# ids are unique
assert_eq "$(printf '%s\n' "$vol" "$cow" "$blank" "$v3" "$snap" "$snap2" | sort -u | wc -l)" 6 "distinct ids"

# ---- global options anywhere ------------------------------------------------
same() { # ARGS... -- ARGS... -- ...: every form prints the same, exit 0
	local first="" forms=() cur=() f out
	for f in "$@" --; do
		if [ "$f" = -- ]; then
			forms+=("$(printf '%q ' "${cur[@]}")")
			cur=()
		else
			cur+=("$f")
		fi
	done
	for f in "${forms[@]}"; do
		out=$(eval "kiln $f" 2>"$TMPDIR/same.err") || fail "kiln $f: exit $?: $(cat "$TMPDIR/same.err")"
		[ -n "$out" ] || fail "kiln $f printed nothing"
		if [ -z "$first" ]; then
			first=$out
		else
			[ "$out" = "$first" ] || fail "kiln $f prints differently from kiln ${forms[0]}"
		fi
	done
}
S=$KILN_STORE
same --store "$S" --region us-east-1 --output json volume describe -- \
	volume describe --store "$S" --region us-east-1 --output json -- \
	volume --output json --store "$S" describe --region us-east-1 -- \
	--output=json volume describe --store="$S" --region=us-east-1
same --output json snapshot describe "$snap" -- snapshot describe "$snap" --output json -- \
	snapshot --output json describe "$snap" -- snapshot describe --output=json "$snap"
same --store "$S" --output json store stats -- store stats --output json --store "$S" -- \
	store --store "$S" stats --output json
same --region eu-west-1 region list -- region list --region eu-west-1 -- region --region eu-west-1 list
same --output json snapshot diff "$snap" "$snap2" -- snapshot diff "$snap" "$snap2" --output json -- \
	snapshot diff "$snap" --output json "$snap2"
same --debug volume describe "$vol" -- volume describe "$vol" --debug
for f in "--debug volume describe $vol" "volume describe $vol --debug" "volume --debug describe $vol"; do
	kiln $f 2>"$TMPDIR/debug.err" >/dev/null
	grep -q "debug" "$TMPDIR/debug.err" || fail "kiln $f printed no debug messages"
done
# and it acts the same: a volume made with options after the words is in that region
evol=$(kiln volume create --size 1M --region eu-west-1)
ev2=$(kiln --region eu-west-1 volume create --size 1M)
kiln volume describe --region eu-west-1 --output json >"$TMPDIR/vols.json"
assert_eq "$(json "$TMPDIR/vols.json" "sorted(v['VolumeId'] for v in j['Volumes'])")" \
	"$(/usr/bin/python3 -c "print(sorted(['$evol', '$ev2']))")" "volumes of eu-west-1"

# ---- JSON -------------------------------------------------------------------
kiln volume describe --output json >"$TMPDIR/vols.json"
/usr/bin/python3 - "$TMPDIR/vols.json" "$vol" "$cow" "$blank" "$v3" "$snap" "$snap2" "$img" <<'EOF'
import json, os, re, sys
j = json.load(open(sys.argv[1]))
vol, cow, blank, v3, snap, snap2, img = sys.argv[2:]
vols = {v["VolumeId"]: v for v in j["Volumes"]}
assert set(vols) == {vol, cow, blank, v3}, vols.keys()
for v in j["Volumes"]:
    assert re.fullmatch(r"vol-[0-9a-f]{17}", v["VolumeId"]), v
    for k in ("VolumeId", "Size", "SnapshotId", "State", "AvailabilityZone", "CreateTime"):
        assert k in v, (k, v)
    assert isinstance(v["Size"], int), v
    assert v["State"] == "available", v
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", v["CreateTime"]), v
gib = 1024 ** 3
assert vols[vol]["Size"] == 1, vols[vol]                      # 3 MiB rounds up to 1 GiB
assert vols[cow]["Size"] == 2 and vols[cow]["SnapshotId"] == snap, vols[cow]
assert vols[blank]["Size"] == 1 and vols[blank]["SnapshotId"] == "", vols[blank]
assert vols[vol]["SnapshotId"] == "", vols[vol]
assert vols[vol]["AvailabilityZone"].startswith("us-east-1"), vols[vol]
EOF
kiln volume describe "$cow" --output json >"$TMPDIR/vol.json"
assert_eq "$(json "$TMPDIR/vol.json" "[v['VolumeId'] for v in j['Volumes']]")" "['$cow']" "volume describe $cow"

kiln snapshot describe --output json >"$TMPDIR/snaps.json"
/usr/bin/python3 - "$TMPDIR/snaps.json" "$vol" "$snap" "$snap2" "$(stat -c %s "$img")" <<'EOF'
import datetime, json, re, sys
j = json.load(open(sys.argv[1]))
vol, snap, snap2, size = sys.argv[2:]
snaps = {s["SnapshotId"]: s for s in j["Snapshots"]}
assert set(snaps) == {snap, snap2}, snaps.keys()
now = datetime.datetime.now(datetime.timezone.utc)
for s in j["Snapshots"]:
    assert re.fullmatch(r"snap-[0-9a-f]{17}", s["SnapshotId"]), s
    for k in ("SnapshotId", "VolumeId", "State", "VolumeSize", "StartTime", "Description", "OwnerId"):
        assert k in s, (k, s)
    assert s["VolumeId"] == vol and s["State"] == "completed" and s["VolumeSize"] == 1, s
    t = datetime.datetime.strptime(re.sub(r"\.\d+Z$", "Z", s["StartTime"]), "%Y-%m-%dT%H:%M:%SZ")
    t = t.replace(tzinfo=datetime.timezone.utc)
    assert abs((now - t).total_seconds()) < 600, (s["StartTime"], now)
    assert re.fullmatch(r"\d{12}", s["OwnerId"]), s
assert snaps[snap]["Description"] == "first", snaps[snap]
assert snaps[snap2]["Description"] == "", snaps[snap2]
assert snaps[snap2]["ParentSnapshotId"] == snap, snaps[snap2]
assert snaps[snap]["SizeBytes"] == int(size), snaps[snap]
EOF
kiln snapshot describe "$snap" --output json >"$TMPDIR/snap.json"
assert_eq "$(json "$TMPDIR/snap.json" "[s['SnapshotId'] for s in j['Snapshots']]")" "['$snap']" "snapshot describe $snap"
# several ids, in the order given; one unknown id fails the describe
kiln snapshot describe "$snap2" "$snap" --output json >"$TMPDIR/snaps2.json"
assert_eq "$(json "$TMPDIR/snaps2.json" "[s['SnapshotId'] for s in j['Snapshots']]")" "['$snap2', '$snap']" \
	"snapshot describe $snap2 $snap"
expect_fail kiln snapshot describe "$snap" snap-0123456789abcdef0
[[ $ERR == *"snapshot snap-0123456789abcdef0 does not exist"* ]] || fail "describe of an unknown snapshot among others: $ERR"
vol2=$(kiln volume create --size 1M)
kiln volume describe "$vol2" "$vol" --output json >"$TMPDIR/vols2.json"
assert_eq "$(json "$TMPDIR/vols2.json" "[v['VolumeId'] for v in j['Volumes']]")" "['$vol2', '$vol']" \
	"volume describe $vol2 $vol"
kiln volume delete "$vol2"
# an empty region is an empty list, not nothing
kiln snapshot describe --output json --region eu-west-1 >"$TMPDIR/empty.json"
assert_eq "$(json "$TMPDIR/empty.json" "j['Snapshots']")" "[]" "snapshots of an empty region"

kiln store stats --output json >"$TMPDIR/stats.json"
/usr/bin/python3 - "$TMPDIR/stats.json" <<'EOF'
import json, sys
j = json.load(open(sys.argv[1]))
regions = {r["Region"]: r for r in j["Regions"]}
assert set(regions) == {"us-east-1", "eu-west-1"}, regions.keys()
for r in j["Regions"]:
    for k in ("Volumes", "Snapshots", "LogicalBytes", "DataBytes", "UniqueChunks", "UniqueBytes",
              "StoredBytes", "PackBytes", "OverlayBytes", "DedupRatio", "CompressionRatio"):
        assert k in r, (k, r)
u = regions["us-east-1"]
assert u["Volumes"] == 4 and u["Snapshots"] == 2 and u["UniqueChunks"] > 0, u
assert regions["eu-west-1"]["Volumes"] == 2 and regions["eu-west-1"]["UniqueChunks"] == 0, regions
# no snapshot in eu-west-1: no dedup ratio to speak of
assert regions["eu-west-1"]["Snapshots"] == 0 and regions["eu-west-1"]["DedupRatio"] is None, regions
assert u["DedupRatio"] >= 1.0, u
EOF
kiln store stats --output json --region eu-west-1 >"$TMPDIR/stats.json"
assert_eq "$(json "$TMPDIR/stats.json" "[r['Region'] for r in j['Regions']]")" "['eu-west-1']" "stats --region"

kiln store verify --output json >"$TMPDIR/verify.json"
/usr/bin/python3 - "$TMPDIR/verify.json" <<'EOF'
import json, sys
j = json.load(open(sys.argv[1]))
for k in ("ChunksChecked", "BytesChecked", "CorruptChunks", "ManifestsChecked", "BadManifests", "Problems"):
    assert k in j, (k, j)
assert j["ChunksChecked"] > 0 and j["CorruptChunks"] == 0 and j["Problems"] == [], j
EOF
kiln store gc --output json >"$TMPDIR/gc.json"
/usr/bin/python3 - "$TMPDIR/gc.json" <<'EOF'
import json, sys
j = json.load(open(sys.argv[1]))
for k in ("ChunksRemoved", "BytesFreed", "PacksRemoved", "PacksWritten", "ChunksKept"):
    assert isinstance(j[k], int), (k, j)
assert j["ChunksRemoved"] == 0 and j["ChunksKept"] > 0, j
EOF
kiln snapshot diff "$snap" "$snap2" --output json >"$TMPDIR/diff.json"
/usr/bin/python3 - "$TMPDIR/diff.json" "$(stat -c %s "$img")" <<'EOF'
import json, sys
j = json.load(open(sys.argv[1]))
assert j["ChangedBlocks"] == [{"Offset": 65536, "Length": 65536}], j
assert j["BlockSize"] == 65536 and j["VolumeSize"] == int(sys.argv[2]), j
EOF
kiln snapshot diff "$snap" "$snap" --output json >"$TMPDIR/diff.json"
assert_eq "$(json "$TMPDIR/diff.json" "j['ChangedBlocks']")" "[]" "JSON diff of a snapshot with itself"
kiln region list --output json >"$TMPDIR/regions.json"
assert_eq "$(json "$TMPDIR/regions.json" "sorted(r['RegionName'] for r in j['Regions'])")" \
	"['eu-west-1', 'us-east-1']" "region list --output json"

# ---- region list, environment --------------------------------------------
assert_eq "$(kiln region list | sort | tr '\n' ' ')" "eu-west-1 us-east-1 " "region list"

KILN_REGION=eu-west-1 kiln volume describe --output json >"$TMPDIR/vols.json"
assert_eq "$(json "$TMPDIR/vols.json" "len(j['Volumes'])")" 2 "volumes with KILN_REGION=eu-west-1"
kiln volume describe --output json >"$TMPDIR/vols.json"
assert_eq "$(json "$TMPDIR/vols.json" "len(j['Volumes'])")" 4 "volumes without KILN_REGION"
KILN_REGION=eu-west-1 kiln volume describe --region us-east-1 --output json >"$TMPDIR/vols.json"
assert_eq "$(json "$TMPDIR/vols.json" "len(j['Volumes'])")" 4 "volumes with KILN_REGION and --region"
ev3=$(KILN_REGION=eu-west-1 kiln volume create --size 1M)
assert_eq "$(kiln volume describe "$ev3" --region eu-west-1 --output json | /usr/bin/python3 -c \
	'import json, sys; print(json.load(sys.stdin)["Volumes"][0]["VolumeId"])')" "$ev3" "a volume made with KILN_REGION"

other=$TMPDIR/other-store
KILN_STORE=$other kiln init 2>/dev/null
ov=$(KILN_STORE=$other kiln volume create --size 1M)
assert_eq "$(KILN_STORE=$other kiln volume describe --output json | /usr/bin/python3 -c \
	'import json, sys; print([v["VolumeId"] for v in json.load(sys.stdin)["Volumes"]])')" "['$ov']" "volumes in KILN_STORE"
assert_eq "$(KILN_STORE=$other kiln volume describe --store "$KILN_STORE" --output json | /usr/bin/python3 -c \
	'import json, sys; print(len(json.load(sys.stdin)["Volumes"]))')" 4 "--store over KILN_STORE"
mkdir "$TMPDIR/cwd"
(
	cd "$TMPDIR/cwd"
	unset KILN_STORE
	kiln init 2>/dev/null
	[ -f .kiln/config ] || fail "kiln init without a store did not make ./.kiln"
	v=$(kiln volume create --size 1M)
	[[ $v =~ $vol_re ]] || fail "volume create in ./.kiln printed '$v'"
)

kiln init --store "$TMPDIR/acct" --account 111111111111 2>/dev/null
av=$(kiln volume create --size 1M --store "$TMPDIR/acct")
assert_eq "$(kiln volume describe "$av" --store "$TMPDIR/acct" --output json | /usr/bin/python3 -c \
	'import json, sys; print(json.load(sys.stdin)["Volumes"][0]["OwnerId"])')" 111111111111 "owner from init --account"
av=$(KILN_ACCOUNT=222222222222 kiln volume create --size 1M --store "$TMPDIR/acct")
expect_fail kiln volume describe "$av" --store "$TMPDIR/acct"
[[ $ERR == *"volume $av does not exist"* ]] || fail "another account's volume, described: $ERR"
assert_eq "$(KILN_ACCOUNT=222222222222 kiln volume describe "$av" --store "$TMPDIR/acct" --output json | /usr/bin/python3 -c \
	'import json, sys; print(json.load(sys.stdin)["Volumes"][0]["OwnerId"])')" 222222222222 "owner from KILN_ACCOUNT"
av=$(KILN_ACCOUNT=222222222222 kiln volume create --size 1M --store "$TMPDIR/acct" --account 333333333333)
expect_fail kiln volume export "$av" "$TMPDIR/av.raw" --store "$TMPDIR/acct"
[[ $ERR == *"volume $av does not exist"* ]] || fail "another account's volume, exported: $ERR"
assert_eq "$(kiln volume describe "$av" --store "$TMPDIR/acct" --account 333333333333 --output json | /usr/bin/python3 -c \
	'import json, sys; print(json.load(sys.stdin)["Volumes"][0]["OwnerId"])')" 333333333333 "owner from --account"

# ---- no terminal: the id and nothing else --------------------------------
bigimg=$TMPDIR/big.img
make_random "$bigimg" 70M big      # more than the 64 MiB a progress bar needs
kiln volume import "$bigimg" >"$TMPDIR/out" 2>"$TMPDIR/err"
[[ $(cat "$TMPDIR/out") =~ $vol_re ]] || fail "import printed more than an id: $(od -c "$TMPDIR/out" | head)"
assert_eq "$(wc -c <"$TMPDIR/out")" 22 "bytes import printed on stdout"
assert_eq "$(wc -c <"$TMPDIR/err")" 0 "bytes import printed on stderr"
bvol=$(cat "$TMPDIR/out")
for cmd in "snapshot create $bvol" "volume export $bvol $TMPDIR/x.img" "store verify" "store gc"; do
	kiln $cmd >"$TMPDIR/out" 2>"$TMPDIR/err"
	assert_eq "$(wc -c <"$TMPDIR/err")" 0 "bytes 'kiln $cmd' printed on stderr"
	! grep -q $'[\r\033]' "$TMPDIR/out" || fail "kiln $cmd printed terminal control bytes on stdout"
done
# on a terminal the bar is there (so the check above can see one), on stderr only
script -qec "$KILN volume import $bigimg >$TMPDIR/out" /dev/null >"$TMPDIR/tty" </dev/null
grep -q '%' "$TMPDIR/tty" || fail "no progress bar on a terminal: $(od -c "$TMPDIR/tty" | head -n 5)"
[[ $(cat "$TMPDIR/out") =~ $vol_re ]] || fail "import on a terminal put more than an id on stdout"
echo PASS
