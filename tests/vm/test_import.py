"""Migration round trips on a real kernel: what keepalived 2.2 (Debian's) or an `ipvsadm -R` script
put in IPVS, imported with mhd.importers, gives an empty `mhctl plan`: the same rules.

mh services list their servers in descending address order: keepalived and `ipvsadm -R` add them in
file order and the kernel inserts each at the head of its list, so the kernel list is then ascending,
mhd's canonical order (otherwise the plan would re-send servers to reorder them, and the importers
say so in a note).
"""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

import netns as nsh
import pytest
from daemon_proc import wait_for

from mhd.config.validate import loads
from mhd.importers import ipvsadm, keepalived

KEEPALIVED = textwrap.dedent("""\
    ! keepalived 2.2 configuration, checker process only (keepalived -C)
    global_defs {
        router_id mhd_import_test
        script_user root
        enable_script_security
    }
    virtual_server 10.0.100.1 80 {
        lvs_sched mh
        mh-port
        lvs_method NAT
        protocol TCP
        delay_loop 2
        real_server 10.1.0.3 80 {
            weight 2
            MISC_CHECK {
                misc_path /bin/true
            }
        }
        real_server 10.1.0.2 80 {
            MISC_CHECK {
                misc_path /bin/true
            }
        }
        real_server 10.1.0.1 8080 {
            MISC_CHECK {
                misc_path /bin/true
            }
        }
    }
    virtual_server 10.0.100.1 53 {
        protocol UDP
        lvs_sched mh
        flag-1
        flag-2
        lb_kind DR
        real_server 10.1.0.2 53 {
        }
        real_server 10.1.0.1 53 {
            weight 3
        }
    }
    virtual_server fd00:100::1 443 {
        protocol TCP
        lvs_sched mh
        mh-fallback
        lvs_method DR
        real_server fd01::2 443 {
        }
        real_server fd01::1 443 {
        }
    }
    virtual_server_group pool {
        10.0.100.2-3 8080
    }
    virtual_server group pool {
        protocol TCP
        lvs_sched wrr
        lvs_method NAT
        real_server 10.1.0.4 8080 {
            weight 5
        }
        real_server 10.1.0.5 8080 {
        }
    }
    include conf.d/*.conf
    """)

MARKED = textwrap.dedent("""\
    virtual_server fwmark 7 {
        lvs_sched mh
        mh-port
        lvs_method DR
        real_server 10.1.0.7 0 {
        }
        real_server 10.1.0.6 0 {
        }
    }
    """)

# 4 services from keepalived.conf (the group makes 2) + 1 included: 6 services, 13 servers
KEEPALIVED_SERVICES, KEEPALIVED_SERVERS = 6, 13

IPVSADM_SCRIPT = textwrap.dedent("""\
    -A -t 10.0.100.1:80 -s mh -b mh-port,mh-fallback
    -a -t 10.0.100.1:80 -r 10.1.0.3:80 -m -w 1
    -a -t 10.0.100.1:80 -r 10.1.0.2:8080 -m -w 4
    -a -t 10.0.100.1:80 -r 10.1.0.1:80 -m -w 1
    -A -u [fd00:100::1]:53 -s mh -b flag-2
    -a -u [fd00:100::1]:53 -r [fd01::2]:53 -g -w 1
    -a -u [fd00:100::1]:53 -r [fd01::1]:53 -g -w 2
    -A -f 9 -s mh -b mh-port
    -a -f 9 -r 10.1.0.9:0 -i -w 1
    -a -f 9 -r 10.1.0.8:0 -i -w 1
    -A -f 10 -6 -s rr
    -a -f 10 -6 -r [fd01::a]:0 -g -w 1
    -A --sctp-service 10.0.100.4:3868 -s wlc
    -a --sctp-service 10.0.100.4:3868 -r 10.1.0.1:3868 -m -w 2
    """)


def dest_lines(ns: str) -> list[str]:
    return [line for line in nsh.ipvsadm(ns, "-Sn").splitlines() if line.startswith("-a ")]


def plan_is_empty(mhd_cmd, ns: str, config: Path, state: Path) -> None:
    out = mhd_cmd(ns, "plan", str(config), "--json", "--state-dir", str(state), timeout=600)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


@pytest.mark.skipif(
    subprocess.run(["sh", "-c", "command -v keepalived"], capture_output=True).returncode != 0,
    reason="keepalived is not installed (apt-get install keepalived)",
)
def test_keepalived_rules_import_to_an_empty_plan(netns, mhd_cmd, tmp_path: Path, report) -> None:
    ns = netns("ka")
    conf = tmp_path / "keepalived.conf"
    conf.write_text(KEEPALIVED)
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "marked.conf").write_text(MARKED)
    log = (tmp_path / "keepalived.log").open("w")
    tag = ns.replace("/", "_")
    cmd = ["ip", "netns", "exec", ns, "keepalived", "-C", "-n", "-l", "-D", "-f", str(conf),
           "-p", f"/run/mhd-test-{tag}.pid", "-c", f"/run/mhd-test-{tag}-checkers.pid"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(
            lambda: len(dest_lines(ns)) >= KEEPALIVED_SERVERS or proc.poll() is not None,
            300,
            "keepalived's rules",
        )
        assert proc.poll() is None, (tmp_path / "keepalived.log").read_text()[-3000:]
        saved = nsh.ipvsadm_save(ns)
        report("keepalived put in IPVS:\n" + saved)
        assert sum(line.startswith("-A ") for line in saved.splitlines()) == KEEPALIVED_SERVICES

        result = keepalived.convert_file(str(conf))
        imported = tmp_path / "mhd.yaml"
        imported.write_text(result.yaml)
        config = loads(result.yaml, str(imported))
        assert len(config.services) == KEEPALIVED_SERVICES
        assert sum(len(s.servers) for s in config.services) == KEEPALIVED_SERVERS
        assert not [n for n in result.notes if "canonical order" in n.message]
        plan_is_empty(mhd_cmd, ns, imported, tmp_path / "state")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_ipvsadm_script_and_its_saved_rules_import_to_an_empty_plan(netns, mhd_cmd, tmp_path: Path) -> None:
    ns = netns("ipvsadm")
    nsh.ipvsadm(ns, "-R", input=IPVSADM_SCRIPT)
    saved = nsh.ipvsadm(ns, "-Sn")  # what `mhctl import ipvsadm` reads from the live kernel
    from_script, from_kernel = (
        ipvsadm.convert_text(IPVSADM_SCRIPT, "script"),
        ipvsadm.convert_text(saved, "-Sn"),
    )
    desired = [  # the servers of each service as a set: -Sn sorts them, the script need not
        {s.key: (s.service().settings(), set(s.service().dests)) for s in loads(r.yaml).services}
        for r in (from_script, from_kernel)
    ]
    assert len(desired[0]) == 5 and desired[0] == desired[1]
    imported = tmp_path / "mhd.yaml"
    imported.write_text(from_kernel.yaml)
    plan_is_empty(mhd_cmd, ns, imported, tmp_path / "state")
