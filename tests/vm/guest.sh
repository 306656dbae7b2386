#!/usr/bin/env bash
# Guest side of tests/vm/run: runs inside the virtme-ng VM (or directly on a host with IPVS).
#
#   guest.sh WORKDIR
#
# WORKDIR (read-write, shared with the host) holds the inputs written by tests/vm/run:
#   pytest-args   NUL-separated arguments for pytest
#   shell-cmd     if present: run this shell command instead of pytest
# and receives `status`, the exit status, which is how it reaches the host (vng's own exit
# status is not relied upon).
set -u

work=${1:?usage: guest.sh WORKDIR}
script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
repo=$(cd "$script_dir/../.." && pwd -P)
venv=${MHD_VENV:-$repo/.venv}
py=$venv/bin/python

report() {
    echo "$1" >"$work/status.tmp" && mv -f "$work/status.tmp" "$work/status"
    sync
}
# Whatever happens below, the host gets a status (125 = the guest script itself failed).
report 125

echo "guest: kernel $(uname -r), $(nproc) CPUs, $(awk '/MemTotal/ {print $2 " kB"}' /proc/meminfo)"

ip link set lo up 2>/dev/null
modprobe ip_vs || { echo "guest: modprobe ip_vs failed" >&2; report 3; exit 3; }
# Schedulers (one modprobe process for all: each process costs under TCG), then dummy and
# veth, modules on Debian kernels, which the tests create.
mods=(ip_vs_mh ip_vs_rr ip_vs_wrr ip_vs_lc ip_vs_wlc ip_vs_sh ip_vs_dh ip_vs_fo ip_vs_ovf
      ip_vs_lblc ip_vs_lblcr ip_vs_sed ip_vs_nq veth)
modprobe -q -a "${mods[@]}" 2>/dev/null
modprobe -q dummy numdummies=0 2>/dev/null
loaded=()
for m in ip_vs "${mods[@]}" dummy; do
    if [[ -d /sys/module/$m ]] || modprobe -q "$m" 2>/dev/null; then loaded+=("$m"); fi
done
echo "guest: loaded ${loaded[*]}"

export MHD_REPO=$repo MHD_VENV=$venv MHD_PYTHON=$py
if [[ -z ${MHD_HOST_DIRECT:-} ]]; then
    export MHD_IN_VM=1
    # Under TCG on a busy host, softirq work is often deferred to ksoftirqd, and the
    # default input backlog of 1000 packets per CPU overflowed now and then while 20,000
    # datagrams went through a veth.  (Global setting: only in the throw-away VM.)
    sysctl -qw net.core.netdev_max_backlog=100000
fi
export PYTHONPATH=$repo${PYTHONPATH:+:$PYTHONPATH}
# The shared root (and the checkout) is read-only in the guest: no bytecode, no pytest cache.
export PYTHONDONTWRITEBYTECODE=1
export PYTHONUNBUFFERED=1
export TMPDIR=${TMPDIR:-/tmp}
# hypothesis' example database would go to <repo>/.hypothesis, read-only here.
if [[ -n ${MHD_IN_VM:-} && -z ${HYPOTHESIS_STORAGE_DIRECTORY:-} ]]; then
    export HYPOTHESIS_STORAGE_DIRECTORY=$TMPDIR/hypothesis
fi
cd "$repo" || { report 3; exit 3; }
echo "guest: ready after $(cut -d' ' -f1 /proc/uptime) s of uptime"

if [[ -f $work/shell-cmd ]]; then
    cmd=$(<"$work/shell-cmd")
    bash -c "$cmd"
    rc=$?
else
    args=()
    if [[ -s $work/pytest-args ]]; then
        mapfile -d '' -t args <"$work/pytest-args"
    fi
    # Default target tests/vm, unless the arguments name test files/dirs themselves.
    target=(tests/vm)
    for a in ${args[@]+"${args[@]}"}; do
        if [[ $a != -* && -e ${a%%::*} ]]; then target=(); break; fi
    done
    # Plugin autoloading would import every pytest plugin in the venv (hypothesis,
    # schemathesis, ...): minutes under TCG.  Load only pytest-asyncio, if installed;
    # MHD_VM_PYTEST_AUTOLOAD=1 restores autoloading.
    plugins=()
    if [[ -z ${MHD_VM_PYTEST_AUTOLOAD:-} && -n ${MHD_IN_VM:-} ]]; then
        export PYTEST_DISABLE_PLUGIN_AUTOLOAD=1
        if "$py" -c 'import importlib.util as u, sys; sys.exit(not u.find_spec("pytest_asyncio"))'
        then plugins=(-p pytest_asyncio.plugin); fi
    fi
    "$py" -m pytest -p no:cacheprovider ${plugins[@]+"${plugins[@]}"} \
        ${target[@]+"${target[@]}"} ${args[@]+"${args[@]}"}
    rc=$?
fi
report "$rc"
echo "guest: exit status $rc"
exit "$rc"
