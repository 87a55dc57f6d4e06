"""A second workload, driven with pyroute2: veth pairs made and deleted in a network namespace."""

from __future__ import annotations

import os
import subprocess

import pyroute2  # in the guest image: python3-pyroute2 (vagrant/provision.sh)
import pytest

from kuprobe import Kprobe, PtRegs, current, register_kprobe, unregister_kprobe

pytestmark = [pytest.mark.vm, pytest.mark.usefixtures("no_leftovers")]

PAIRS = 4
# drivers/net/veth.c: rtnl_link_ops.newlink of the veth driver, once per pair made.
LINK_CREATION = "veth_newlink"


def test_kprobe_counts_each_veth_pair_made_in_a_netns() -> None:
    # veth is a module: load it first so its functions can be probed.
    subprocess.run(["modprobe", "veth"], check=True)
    ns = f"kuprobe-vm-{os.getpid()}"
    pyroute2.netns.create(ns)
    creators: list[int] = []

    def pre(p: Kprobe, regs: PtRegs) -> int:
        creators.append(current().tgid)
        return 0

    kp = Kprobe(symbol_name=LINK_CREATION, pre_handler=pre)
    try:
        register_kprobe(kp)
        try:
            with pyroute2.NetNS(ns) as ipr:
                for i in range(PAIRS):
                    ipr.link("add", ifname=f"kv{i}a", kind="veth", peer=f"kv{i}b")
                    ipr.link("del", ifname=f"kv{i}a")
                names = [link.get_attr("IFLA_IFNAME") for link in ipr.get_links()]
        finally:
            unregister_kprobe(kp)
    finally:
        pyroute2.netns.remove(ns)
    assert kp.hits == PAIRS
    assert len(creators) == PAIRS
    assert not [n for n in names if n.startswith("kv")]
