#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# Smoke test of the ip_vs_mh backport, run as root INSIDE a throw-away guest
# (see run-vm).  Re-runnable: it unloads what it loads and removes its
# network namespaces.  Usage: vm-smoke.sh [path/to/ip_vs_mh.ko]
#
#  1. reference: the in-tree ip_vs_mh (if this kernel has one) with the
#     mh-port flag, several scenarios, one fresh netns each, recording which
#     real server every client port was scheduled to (/proc/net/ip_vs_conn);
#  2. rmmod it, check the backport's load-time parameter checks, insmod it,
#     check its identification in /sys/module/ip_vs_mh;
#  3. the same scenarios on the backport WITHOUT mh-port: mappings must be
#     identical; weight 0 on the backport must equal removal on in-tree;
#  4. empty tables (no destination / all weight 0) schedule nothing;
#  5. churn: add/edit/remove destinations, weight 0 toggles, 50 services
#     restored and deleted, all under UDP traffic;
#  6. rmmod, then dmesg must show no WARNING/BUG/Oops/... since the start.
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
KO=${1:-$HERE/../ip_vs_mh.ko}
PORTS=${MH_SMOKE_PORTS:-1500}          # client ports per scenario
CHURN_SECONDS=${MH_SMOKE_CHURN:-40}
SEND="python3 $HERE/udpsend.py"
OUT=$(mktemp -d /tmp/mh-smoke.XXXXXX)
FAILS=0
NSLIST=()

log()  { echo "[$(date +%T)] $*"; }
ok()   { echo "  ok:   $*"; }
fail() { echo "  FAIL: $*"; FAILS=$((FAILS + 1)); }

cleanup_ns() {
	local ns
	for ns in "${NSLIST[@]}"; do ip netns del "$ns" 2>/dev/null; done
	NSLIST=()
}
trap cleanup_ns EXIT

# rmmod, retrying while netns teardown (asynchronous) still holds services
unload() {
	local i
	for i in $(seq 1 90); do
		grep -q "^ip_vs_mh " /proc/modules || return 0
		rmmod ip_vs_mh 2>/dev/null && return 0
		sleep 1
	done
	rmmod ip_vs_mh
}

# A namespace with lo up and a dummy device holding the client address and
# routes to the VIPs and real servers (packets after NAT are just dropped).
mkns() {
	local ns=$1
	ip netns add "$ns" || return 1
	NSLIST+=("$ns")
	ip -n "$ns" link set lo up
	ip -n "$ns" link add dum0 type dummy
	ip -n "$ns" link set dum0 up
	ip -n "$ns" addr add 10.0.0.2/24 dev dum0
	ip -n "$ns" addr add 10.0.1.254/24 dev dum0
	ip -n "$ns" -6 addr add fd00::2/64 dev dum0 nodad
	ip -n "$ns" -6 addr add fd00:1::fe/64 dev dum0 nodad
}
delns() { ip netns del "$1"; NSLIST=("${NSLIST[@]/$1}"); }

# client port -> real server (both hex as the kernel prints them), sorted,
# from the namespace's connection table
dump_map() { ip netns exec "$1" cat /proc/net/ip_vs_conn | awk 'NR > 1 { print $3, $6 }' | sort; }

V4=(-u 10.0.0.1:53)
V6=(-u "[fd00::1]:53")
W8=(1 2 3 1 5 2 7 4)
WBIG=(1000 3000 70000 65536 5 1 40000 1000)

# scenario NAME FLAGS...: run in netns mh-NAME, map saved as $OUT/<tag>-NAME
svc_v4() { # $1: flags, $2..: weights
	local f=$1 i=1 w; shift
	ipvsadm -A "${V4[@]}" -s mh $f || return 1
	for w in "$@"; do
		ipvsadm -a "${V4[@]}" -r 10.0.1.$i:53 -m -w "$w" || return 1
		i=$((i + 1))
	done
}
scen_basic()   { svc_v4 "$1" "${W8[@]}"; }
scen_removed() { svc_v4 "$1" "${W8[@]}" && ipvsadm -d "${V4[@]}" -r 10.0.1.3:53; }
scen_zero()    { svc_v4 "$1" "${W8[@]}" && ipvsadm -e "${V4[@]}" -r 10.0.1.3:53 -m -w 0; }
scen_zeroadd() { svc_v4 "$1" 1 2 0 1 5 2 7 4; }   # added with weight 0
scen_big()     { svc_v4 "$1" "${WBIG[@]}"; }
scen_edit()    { svc_v4 "$1" "${W8[@]}" && ipvsadm -e "${V4[@]}" -r 10.0.1.5:53 -m -w 9 &&
		 ipvsadm -d "${V4[@]}" -r 10.0.1.1:53 && ipvsadm -a "${V4[@]}" -r 10.0.1.1:53 -m -w 1; }
scen_v6() {
	local i
	ipvsadm -A "${V6[@]}" -s mh $1 || return 1
	for i in 1 2 3 4 5 6; do
		ipvsadm -a "${V6[@]}" -r "[fd00:1::$i]:53" -m -w $i || return 1
	done
}
SCENARIOS="basic removed zero big edit v6"

run_scenario() { # tag name flags
	local tag=$1 name=$2 flags=$3 ns=mh-$2
	mkns "$ns" || { fail "$tag/$name: netns"; return 1; }
	if ! ip netns exec "$ns" bash -c "$(declare -f svc_v4 scen_$name); $(declare -p V4 V6 W8 WBIG); scen_$name '$flags'"; then
		fail "$tag/$name: ipvsadm setup"
	fi
	ip netns exec "$ns" ipvsadm -Ln > "$OUT/$tag-$name.rules"
	if [ "$name" = v6 ]; then
		ip netns exec "$ns" $SEND fd00::2 fd00::1 53 20000 "$PORTS"
	else
		ip netns exec "$ns" $SEND 10.0.0.2 10.0.0.1 53 20000 "$PORTS"
	fi || fail "$tag/$name: udpsend"
	dump_map "$ns" > "$OUT/$tag-$name"
	delns "$ns"
	echo "  $tag/$name: $(wc -l < "$OUT/$tag-$name") flows, per server:" \
		$(awk '{ print $2 }' "$OUT/$tag-$name" | sort | uniq -c | awk '{ printf "%s=%s ", $2, $1 }')
}

same_map() { # a b what
	if [ ! -s "$OUT/$1" ] || [ ! -s "$OUT/$2" ]; then
		fail "$3: no flows recorded"
	elif cmp -s "$OUT/$1" "$OUT/$2"; then
		ok "$3 ($(wc -l < "$OUT/$1") flows identical)"
	else
		fail "$3: $(diff "$OUT/$1" "$OUT/$2" | grep -c '^<') of $(wc -l < "$OUT/$1") flows differ"
	fi
}

echo "mhd vm-smoke: start" > /dev/kmsg
DMESG_FROM=$(dmesg | wc -l)
log "kernel $(uname -r), module $KO, $PORTS client ports per scenario"
modprobe ip_vs || { fail "modprobe ip_vs"; exit 1; }
unload

# ---- 1. reference: in-tree module ------------------------------------------
INTREE=$(find /lib/modules/"$(uname -r)"/kernel -name 'ip_vs_mh.ko*' | head -1)
if [ -n "$INTREE" ]; then
	log "1. reference scenarios on in-tree $INTREE (mh-port)"
	insmod "$INTREE" || fail "insmod in-tree"
	[ -e /sys/module/ip_vs_mh/version ] && fail "in-tree module unexpectedly has a version"
	for s in $SCENARIOS; do run_scenario intree "$s" "-b mh-port"; done
	log "rmmod in-tree ip_vs_mh"
	unload || fail "rmmod in-tree"
else
	log "1. no in-tree ip_vs_mh.ko in this kernel: no reference comparison"
fi

# ---- 2. load checks and identification --------------------------------------
log "2. loading the backport"
insmod "$KO" variant=other 2>/dev/null && { fail "variant= accepted at load"; unload; } || ok "variant cannot be set at load"
insmod "$KO" tab_index=18 2>/dev/null && { fail "tab_index=18 accepted"; unload; } || ok "tab_index out of range refused"
if insmod "$KO" tab_index=8; then
	[ "$(cat /sys/module/ip_vs_mh/parameters/table_size)" = 251 ] && ok "tab_index=8 -> table_size 251" || fail "tab_index=8 table size"
	unload
else
	fail "insmod tab_index=8"
fi
insmod "$KO" || { fail "insmod $KO"; exit 1; }
VER=$(cat /sys/module/ip_vs_mh/version 2>/dev/null)
VAR=$(cat /sys/module/ip_vs_mh/parameters/variant 2>/dev/null)
TSZ=$(cat /sys/module/ip_vs_mh/parameters/table_size 2>/dev/null)
echo "  version=$VER variant=$VAR table_size=$TSZ"
[[ "$VER" == *-mhd ]] && ok "version ends in -mhd" || fail "version '$VER'"
[ "$VAR" = backport ] && ok "variant=backport" || fail "variant '$VAR'"
[ "$TSZ" = 4093 ] && ok "table_size=4093" || fail "table_size '$TSZ'"
( echo x > /sys/module/ip_vs_mh/parameters/variant ) 2>/dev/null && fail "variant writable" || ok "variant read-only"

# ---- 3. same scenarios on the backport ------------------------------------------
log "3. scenarios on the backport (no scheduler flags)"
for s in $SCENARIOS zeroadd; do run_scenario backport "$s" ""; done
if [ -n "$INTREE" ]; then
	for s in basic removed big edit v6; do
		same_map "intree-$s" "backport-$s" "$s: backport == in-tree with mh-port"
	done
	same_map intree-removed backport-zero "weight 0 on backport == removal on in-tree"
fi
same_map backport-removed backport-zero "backport: weight 0 == removed"
same_map backport-removed backport-zeroadd "backport: added with weight 0 == removed"
grep -q ' 0A000103$' "$OUT/backport-zero" && fail "weight-0 server got flows" || ok "weight-0 server got no flows"
[ "$(wc -l < "$OUT/backport-basic")" = "$PORTS" ] && ok "every client port scheduled" || fail "only $(wc -l < "$OUT/backport-basic") of $PORTS scheduled"
[ "$(awk '{print $2}' "$OUT/backport-basic" | sort -u | wc -l)" = 8 ] && ok "all 8 servers used" || fail "not all servers used"

# ---- 4. empty tables ---------------------------------------------------------------
log "4. empty tables"
mkns mh-empty
ip netns exec mh-empty ipvsadm -A "${V4[@]}" -s mh
ip netns exec mh-empty $SEND 10.0.0.2 10.0.0.1 53 30000 50
[ "$(dump_map mh-empty | wc -l)" = 0 ] && ok "no destination: nothing scheduled" || fail "no destination: flows scheduled"
for i in 1 2 3; do ip netns exec mh-empty ipvsadm -a "${V4[@]}" -r 10.0.1.$i:53 -m -w 0; done
ip netns exec mh-empty $SEND 10.0.0.2 10.0.0.1 53 30100 50
[ "$(dump_map mh-empty | wc -l)" = 0 ] && ok "all weight 0: nothing scheduled" || fail "all weight 0: flows scheduled"
ip netns exec mh-empty ipvsadm -e "${V4[@]}" -r 10.0.1.2:53 -m -w 3
ip netns exec mh-empty $SEND 10.0.0.2 10.0.0.1 53 30200 50
[ "$(dump_map mh-empty | awk '{print $2}' | sort -u)" = 0A000102 ] && ok "one server back: it gets everything" || fail "one server back: $(dump_map mh-empty | awk '{print $2}' | sort | uniq -c)"
delns mh-empty

# ---- 5. churn under traffic ------------------------------------------------------------
log "5. churn under traffic: at least 3 rounds and ${CHURN_SECONDS}s"
mkns mh-churn
C() { ip netns exec mh-churn ipvsadm "$@" || fail "ipvsadm $*"; }
C -A "${V4[@]}" -s mh
for i in 1 2 3 4 5 6 7 8; do C -a "${V4[@]}" -r 10.0.1.$i:53 -m -w $i; done
# the sender runs until the churn loop is done (TERM), 1 h at most
ip netns exec mh-churn $SEND 10.0.0.2 10.0.0.1 53 40000 20000 3600 > "$OUT/churn-send" 2>&1 &
SENDER=$!
# 50 more services x 8 destinations through ipvsadm -R
for s in $(seq 1 50); do
	echo "-A -t 10.0.2.$s:80 -s mh"
	for i in 1 2 3 4 5 6 7 8; do echo "-a -t 10.0.2.$s:80 -r 10.0.1.$i:80 -m -w $((i % 4))"; done
done > "$OUT/restore"
for s in $(seq 1 50); do echo "-D -t 10.0.2.$s:80"; done > "$OUT/delete"
end=$((SECONDS + CHURN_SECONDS)); rounds=0
while [ $rounds -lt 3 ] || [ $SECONDS -lt $end ]; do   # >= 3 rounds, >= CHURN_SECONDS
	rounds=$((rounds + 1))
	for i in 9 10 11 12; do C -a "${V4[@]}" -r 10.0.1.$i:53 -m -w $((i - 8)); done
	C -d "${V4[@]}" -r 10.0.1.1:53
	C -e "${V4[@]}" -r 10.0.1.3:53 -m -w 0
	C -e "${V4[@]}" -r 10.0.1.4:53 -m -w 1000
	# 400 more destinations appear in one round and go in the next
	if [ $((rounds % 2)) = 1 ]; then
		ip netns exec mh-churn ipvsadm -R < "$OUT/restore" || fail "ipvsadm -R"
	else
		ip netns exec mh-churn ipvsadm -R < "$OUT/delete" || fail "ipvsadm -R (delete)"
	fi
	C -e "${V4[@]}" -r 10.0.1.3:53 -m -w 3
	C -e "${V4[@]}" -r 10.0.1.4:53 -m -w 4
	for i in 9 10 11 12; do C -d "${V4[@]}" -r 10.0.1.$i:53; done
	C -a "${V4[@]}" -r 10.0.1.1:53 -m -w 1
	C -D "${V4[@]}"                       # delete the service under traffic ...
	C -A "${V4[@]}" -s mh                 # ... and bring it back
	for i in 1 2 3 4 5 6 7 8; do C -a "${V4[@]}" -r 10.0.1.$i:53 -m -w $i; done
done
kill -TERM $SENDER
wait $SENDER && ok "sender survived: $(cat "$OUT/churn-send")" || fail "sender: $(cat "$OUT/churn-send")"
echo "  $rounds churn rounds, $(ip netns exec mh-churn cat /proc/net/ip_vs_conn | tail -n +2 | wc -l) connection entries"
C -C
delns mh-churn
# a namespace torn down with live services, destinations and connections
mkns mh-teardown
ip netns exec mh-teardown ipvsadm -R < "$OUT/restore"
ip netns exec mh-teardown bash -c "$(declare -f svc_v4 scen_basic); $(declare -p V4 W8); scen_basic ''"
ip netns exec mh-teardown $SEND 10.0.0.2 10.0.0.1 53 50000 200
delns mh-teardown

# ---- 6. unload and dmesg ---------------------------------------------------------
log "6. rmmod and dmesg"
unload && ok "rmmod ip_vs_mh" || fail "rmmod ip_vs_mh"
echo "mhd vm-smoke: end" > /dev/kmsg
dmesg | tail -n +$((DMESG_FROM + 1)) > "$OUT/dmesg"
BAD='WARNING|BUG|Oops|Call Trace|general protection|refcount_t|list_(add|del) corruption|UBSAN|KASAN|rcu.*stall|soft lockup|blocked for more than|kmemleak|Tainted:|not rebuilt'
if grep -E "$BAD" "$OUT/dmesg" > "$OUT/dmesg-bad"; [ -s "$OUT/dmesg-bad" ]; then
	fail "dmesg:"; cat "$OUT/dmesg-bad"
else
	ok "dmesg clean ($(wc -l < "$OUT/dmesg") new lines; $(grep -c 'no destination available' "$OUT/dmesg") expected 'no destination available' errors)"
fi
echo "  dmesg lines from the module:"; grep -i 'mh' "$OUT/dmesg" | sed 's/^/    /' | head -20

if [ "$FAILS" = 0 ]; then echo "VM-SMOKE: PASS ($(uname -r))"; exit 0; fi
echo "VM-SMOKE: FAIL ($FAILS failures, $(uname -r))"; exit 1
