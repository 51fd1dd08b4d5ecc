"""bench/_cluster.py: the core split, the alternating-rounds ratios, and a pinned throwaway Ray node."""
from __future__ import annotations

import os
import re
from pathlib import Path

from bench._cluster import WORKER_PORTS, _ports, local_cluster, node_cores, scaling_ratios


def test_node_cores_split_the_machine_evenly():
    assert node_cores(2, total=4) == [{0, 1}, {2, 3}]
    assert node_cores(2, total=5) == [{0, 1}, {2, 3}]  # the odd core is left out: halves stay equal
    assert node_cores(1, total=3) == [{0, 1, 2}]
    assert node_cores(2, total=1) is None  # nothing to split
    mine = node_cores(1)
    assert mine == [os.sched_getaffinity(0)]


def test_named_ports_stay_out_of_the_worker_range():
    # Ray refuses a node whose named ports fall inside --min/--max-worker-port (seen: the runtime-env agent's)
    for nodes in (1, 2, 3):
        for _ in range(20):
            ports = _ports(nodes)
            low = ports[1]
            named = ports[:1] + ports[2:]
            assert len(ports) == 8 + 8 * nodes and len(set(ports)) == len(ports)
            assert not [p for p in named if low <= p <= low + WORKER_PORTS]


def _run(rnd: int, nodes: int, job: float | None, running: float | None, cluster: str = "fresh") -> dict:
    return {"round": rnd, "nodes": nodes, "images_per_s": job, "running_images_per_s": running, "cluster": cluster}


def test_scaling_ratios_pair_runs_by_round():
    runs = [_run(1, 1, 10.0, 11.0), _run(1, 2, 19.0, 21.0), _run(2, 1, 12.0, 13.0), _run(2, 2, 21.0, 23.4)]
    r = scaling_ratios(runs)
    assert r["ratio_by_round"] == [1.9, 1.75]
    assert r["ratio"] == round(40 / 22, 3)  # summed rates, not the mean of the per-round ratios
    assert r["ratio_running_by_round"] == [round(21 / 11, 3), 1.8]
    assert r["ratio_running"] == round(44.4 / 24, 3)
    # a round without both runs, or without a rate, is left out rather than compared against nothing
    r = scaling_ratios([_run(1, 1, 10.0, None), _run(1, 2, 18.0, None), _run(2, 1, 9.0, 9.0)])
    assert r["ratio_by_round"] == [1.8] and r["ratio"] == 1.8
    assert r["ratio_running_by_round"] == [] and r["ratio_running"] is None
    # nodes 0: the in-process engine on the head's core, against which the 1-node Ray job is compared
    r = scaling_ratios([_run(1, 0, 10.0, None), _run(1, 1, 9.0, None), _run(2, 0, 12.0, None), _run(2, 1, 11.4, None)])
    assert r["one_node_over_local_by_round"] == [0.9, 0.95] and r["one_node_over_local"] == round(20.4 / 22, 3)
    assert r["ratio_by_round"] == []  # no 2-node runs
    # a later job on the same cluster is compared with its like only
    r = scaling_ratios([_run(1, 0, 10.0, None), _run(1, 1, 8.0, None), _run(1, 1, 9.5, None, "warm"),
                        _run(1, 2, 15.0, None), _run(1, 2, 19.0, None, "warm")])
    assert r["one_node_over_local"] == 0.8 and r["one_node_over_local_warm"] == 0.95
    assert r["ratio"] == 1.875 and r["ratio_warm"] == 2.0


def _affinity_of_cluster(port: int) -> dict[int, set[int]]:
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes()
            # the raylet names the GCS as HOST:PORT, the GCS its own port as --gcs_server_port=PORT
            if (b"raylet" in cmd or b"gcs_server" in cmd) and re.search(rb"[:=]%d\b" % port, cmd):
                out[int(d.name)] = os.sched_getaffinity(int(d.name))
        except OSError:
            continue
    return out


def test_a_pinned_node_runs_its_daemons_on_its_cores_only(tmp_path):
    core = max(os.sched_getaffinity(0))
    with local_cluster(1, tmp_path, cores=[{core}]) as (address, env):
        port = int(address.rsplit(":", 1)[1])
        daemons = _affinity_of_cluster(port)
        assert len(daemons) >= 2, daemons  # at least the GCS and the raylet
        assert all(cpus == {core} for cpus in daemons.values()), daemons
        assert env["RAY_AUTH_MODE"] == "disabled"
    assert not _affinity_of_cluster(port)  # torn down with the context
    assert os.sched_getaffinity(0) != set() and core in os.sched_getaffinity(0)  # this process is not pinned
