"""Scaling check: the aeflow CLI with --address on a local Ray cluster of 1 node vs 2 nodes (1 CPU each)."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from bench._models import BenchModel
from bench._modes import run_cli

NODE_START_TIMEOUT_S = 120


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


WORKER_PORTS = 40  # each node's workers take ports[1] .. ports[1] + WORKER_PORTS


def _ports(nodes: int) -> list[int]:
    """Free ports laid out as local_cluster reads them, none inside the worker range that starts at ports[1]
    (Ray refuses to start a node whose named ports overlap it)."""
    need = 8 + 8 * nodes
    got = _free_ports(need + 16)
    low = got[1]
    rest = [p for p in got[:1] + got[2:] if not low <= p <= low + WORKER_PORTS]
    while len(rest) < need - 1:  # rare: many free ports fell in the range; draw more
        rest += [p for p in _free_ports(8) if not low <= p <= low + WORKER_PORTS and p not in rest]
    return [rest[0], low, *rest[1:need - 1]]


def _node_ports(ports: list[int]) -> list[str]:
    names = ("--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
             "--dashboard-agent-grpc-port", "--metrics-export-port", "--runtime-env-agent-port")
    return [x for name, p in zip(names, ports) for x in (name, str(p))]


def _pids_mentioning(marker: str) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            try:
                if marker.encode() in (d / "cmdline").read_bytes():
                    pids.append(int(d.name))
            except OSError:
                continue
    return pids


def node_cores(nodes: int, total: int | None = None) -> list[set[int]] | None:
    """The machine's usable cores split evenly into `nodes` disjoint sets (node i gets set i); None if too few."""
    cores = sorted(os.sched_getaffinity(0)) if total is None else list(range(total))
    per = len(cores) // nodes
    if per < 1:
        return None
    return [set(cores[i * per:(i + 1) * per]) for i in range(nodes)]


@contextmanager
def local_cluster(nodes: int, log_dir: Path, cores: list[set[int]] | None = None, env: dict | None = None,
                  own_temp_dirs: bool = False):
    """(address, env) of a throwaway cluster of `nodes` nodes x 1 CPU on 127.0.0.1, free ports, own temp dir.

    cores: node i's processes (raylet, its workers, on the head also GCS) run only on cores[i], the machine
    split in two as two 1-CPU machines would be; None lets every process use every core. env: the nodes' and
    the driver's environment (default: this process's). own_temp_dirs: each node its own Ray temp dir (sockets,
    logs, spilled objects), as on separate machines; otherwise they share one.

    Torn down by the pids it started (never `ray stop`, which would stop other people's Ray on this machine).
    """
    ray = str(Path(sys.executable).with_name("ray"))
    temp = tempfile.mkdtemp(prefix="rb", dir="/tmp")  # short: Ray's socket paths have a length limit
    # token auth must be off (or on) alike for head, workers and driver, else Ray Data jobs hang
    env = dict(os.environ if env is None else env, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    ports = _ports(nodes)
    gcs = ports[0]
    common = ["--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--block",
              "--disable-usage-stats", "--min-worker-port", str(ports[1]),
              "--max-worker-port", str(ports[1] + WORKER_PORTS)]
    procs = []
    try:
        for i in range(nodes):
            head = ["--head", "--port", str(gcs), "--include-dashboard", "false"] if i == 0 \
                else ["--address", f"127.0.0.1:{gcs}"]
            own = ports[8 + 8 * i: 14 + 8 * i]
            with open(log_dir / f"ray-node{i}.log", "wb") as log:
                # Ray never sets affinity itself: what `ray start` gets, its daemons and workers inherit
                pin = (lambda c=cores[i]: os.sched_setaffinity(0, c)) if cores else None
                node_temp = f"{temp}/n{i}" if own_temp_dirs else temp
                procs.append(subprocess.Popen([ray, "start", *head, *_node_ports(own), "--temp-dir", node_temp,
                                               *common], env=env,
                                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                              preexec_fn=pin))
            if i == 0:
                _wait_port(gcs, procs[0], log_dir / "ray-node0.log")
        address = f"127.0.0.1:{gcs}"
        wait = ("import ray, time; ray.init(address=%r, log_to_driver=False); t = time.time()\n"
                "while len([n for n in ray.nodes() if n['Alive']]) < %d and time.time() - t < %d: time.sleep(0.5)\n"
                "print(len([n for n in ray.nodes() if n['Alive']]))" % (address, nodes, NODE_START_TIMEOUT_S))
        r = subprocess.run([sys.executable, "-c", wait], env=env, capture_output=True, text=True,
                           timeout=NODE_START_TIMEOUT_S + 60)
        if not r.stdout.strip().endswith(str(nodes)):
            raise RuntimeError(f"only {r.stdout.strip() or '?'} of {nodes} Ray nodes came up; "
                               f"see {log_dir}/ray-node*.log")
        yield address, env
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        for _ in range(3):
            for pid in _pids_mentioning(temp):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.5)
        shutil.rmtree(temp, ignore_errors=True)


def _wait_port(port: int, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.time() + NODE_START_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log.is_file() else ""
            raise RuntimeError(f"`ray start --head` exited {proc.returncode}: {tail}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.time() > deadline:
                raise RuntimeError(f"the Ray head did not open port {port} in {NODE_START_TIMEOUT_S}s; "
                                   f"see {log}") from None
            time.sleep(0.5)


def scaling(bm: BenchModel, photos: Path, size: int, scratch: Path, logs: Path, rounds: int = 2,
            pin: bool = True) -> dict:
    """images/s of the CLI job (default workers: one per cluster CPU) on 1 node vs 2 nodes, 1 CPU each.

    The two clusters alternate (1, 2, 1, 2, ...) for `rounds` rounds, so the host's drift over minutes falls on
    both alike. pin: the machine is split in two (node i runs only on its half of the cores, the driver and this
    harness on the head's half), as two 1-CPU machines would be; unpinned, a "1-CPU" node's daemons, driver and
    the actor's own Ray threads spread onto the idle second core, which a real 1-CPU machine does not have.
    """
    n = sum(1 for _ in photos.rglob("*.jpg"))
    cores = node_cores(2) if pin else None
    out: dict = {"job": bm.job, "n": n, "size": size, "rounds": rounds, "pinned": cores is not None,
                 "cores": [sorted(c) for c in cores] if cores else None, "runs": []}
    mine = os.sched_getaffinity(0)
    try:
        if cores:
            os.sched_setaffinity(0, cores[0])  # the harness (and its /proc sampler) lives on the head's half
        for k in range(rounds):
            for nodes in (0, 1, 2):  # 0: the in-process engine on the head's cores, no Ray
                out["runs"] += [{"round": k + 1, **r} for r in _scaling_run(bm, photos, scratch, logs, nodes, cores)]
    finally:
        os.sched_setaffinity(0, mine)
    out.update(scaling_ratios(out["runs"]))
    return out


def _scaling_run(bm: BenchModel, photos: Path, scratch: Path, logs: Path, nodes: int,
                 cores: list[set[int]] | None) -> list[dict]:
    """nodes 0: one in-process run. Else two jobs on one new cluster: `fresh` (the job starts Ray Data's
    cluster-wide helper actors) and `warm` (a later job on a long-lived cluster finds them running)."""
    dest = scratch / f"out-scale-{nodes}"
    head = cores[0] if cores else None
    if nodes == 0:
        runs = [("local", run_cli(bm, photos, dest, "cpu", extra=("--runner", "local"), label="aeflow-local",
                                  cores=head))]
    else:
        runs = []
        with local_cluster(nodes, logs, cores[:nodes] if cores else None) as (address, env):
            for state in ("fresh", "warm"):
                runs.append((state, run_cli(bm, photos, dest, "cpu", address=address, env=env,
                                            label=f"aeflow-{nodes}node-{state}", cores=head)))
    shutil.rmtree(dest, ignore_errors=True)
    return [{"cluster": state, **_run_facts(nodes, r)} for state, r in runs]


def _run_facts(nodes: int, r: dict) -> dict:
    return {"nodes": nodes, "cpus": max(1, nodes), "engine": r["engine"], "workers": r["workers"],
            "worker_nodes": r["worker_nodes"],
            "images_per_s": r["images_per_s"], "process_images_per_s": r["process_images_per_s"],
            "steady_images_per_s": r["steady_images_per_s"], "rows_by_node": r["rows_by_node"],
            # the job's own rate once its actors answered (summary images_per_s_running): start-up excluded
            "running_images_per_s": r["running_images_per_s"], "ray_startup_s": r["ray_startup_s"]}


def _ratio(runs: list[dict], rate: str, top: int, bottom: int, cluster: str) -> tuple[list[float], float | None]:
    """(per round, over all rounds) rate of the `top`-node runs over the `bottom`-node ones, summed rates;
    Ray runs of the given cluster state only (the in-process runs, nodes 0, have none)."""
    by_round: dict[int, dict[int, float]] = {}
    for r in runs:
        if r.get(rate) and (r["nodes"] == 0 or r.get("cluster", "fresh") == cluster):
            by_round.setdefault(r["round"], {})[r["nodes"]] = r[rate]
    pairs = [v for v in by_round.values() if top in v and bottom in v]
    total = round(sum(v[top] for v in pairs) / sum(v[bottom] for v in pairs), 3) if pairs else None
    return [round(v[top] / v[bottom], 3) for v in pairs], total


def scaling_ratios(runs: list[dict]) -> dict:
    """2-node / 1-node rate, and 1-node / in-process on the same core: per round and over all rounds (sums of
    the rates), for fresh clusters and (suffix _warm) for a later job on the same cluster."""
    out: dict = {}
    for cluster, suffix in (("fresh", ""), ("warm", "_warm")):
        for key, rate, top, bottom in (("ratio", "images_per_s", 2, 1),
                                       ("ratio_running", "running_images_per_s", 2, 1),
                                       ("one_node_over_local", "images_per_s", 1, 0)):
            out[key + suffix + "_by_round"], out[key + suffix] = _ratio(runs, rate, top, bottom, cluster)
    return out
