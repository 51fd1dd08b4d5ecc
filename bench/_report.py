"""The benchmark report as markdown tables (the JSON report holds the same numbers and more)."""
from __future__ import annotations

STAGE_COLS = ("list", "read", "decode", "infer", "encode", "write", "manifest", "other")


def _f(v, digits: int = 1) -> str:
    if v is None:
        return "–"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _table(head: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(_f(c) if not isinstance(c, str) else c for c in r) + " |" for r in rows]
    return out


def _mark(value, ok: bool) -> str:
    return "–" if value is None else f"{value:.2f} {'✅' if ok else '❌'}"


def markdown(r: dict) -> str:
    """Tables: throughput and ratios, per-stage ms per image, the CLI's facts, memory at N and 10N, extras."""
    t, m = r["targets"], r["machine"]
    lines = [f"Date {r['date']}; {m.get('nproc')} CPUs ({m.get('cpu')}); load average at start "
             f"{', '.join(f'{x:.1f}' for x in m.get('loadavg_start', ()))}, at end "
             f"{', '.join(f'{x:.1f}' for x in m.get('loadavg_end', ()))}; device {r['device']}."]
    if r.get("device_note"):
        lines.append(f"\n**{r['device_note']}**")
    lines += ["", "Throughput (images/s; (c) job = summary.json `images_per_s` (its wall_s includes Ray start-up), "
              "(c) process = files / wall time of the whole `aeflow` command including Python start-up, "
              "(c) steady = files / time from the moment a Ray actor first runs a batch to the end):", ""]
    rows = []
    for row in r["results"]:
        md = row["modes"]
        g = lambda k, f="images_per_s", md=md: md.get(k, {}).get(f)  # noqa: E731
        rows.append([row["job"], f"{row['size']}²", row["n"], g("naive"), g("floor"), g("aeflow-local"),
                     g("aeflow"), g("aeflow", "process_images_per_s"), g("aeflow", "steady_images_per_s"),
                     _mark(row.get("c_over_a"), (row.get("c_over_a") or 0) >= t["c_over_a_min"]),
                     _mark(row.get("c_over_b"), (row.get("c_over_b") or 0) >= t["c_over_b_min"]),
                     _f(row.get("c_over_b_process"), 2), _f(row.get("c_over_b_steady"), 2),
                     _f(row.get("local_over_b"), 2),
                     row.get("decode_only_images_per_s")])
    lines += _table(["job", "size", "N", "(a) naive torch", "(b) ORT floor", "(c-local) aeflow in-process",
                     "(c) aeflow job", "(c) process", "(c) steady", f"c/a (≥{t['c_over_a_min']})",
                     f"c/b (≥{t['c_over_b_min']})", "c/b process", "c/b steady", "c-local/b", "read+decode only"],
                    rows)

    lines += ["", "Where the time goes (ms per image, one process's wall clock; (a), (b) timed inline, (c-local) by "
              "timers wrapped around aeflow's own functions; 'other' = wall − the stages):", ""]
    rows = []
    for row in r["results"]:
        for mode, res in row["modes"].items():
            st = res.get("stages_s")
            if not st or not res["images"]:
                continue
            k = 1000.0 / res["images"]
            rows.append([row["job"], f"{row['size']}²", mode, *[st[c] * k for c in STAGE_COLS], res["wall_s"] * k])
    lines += _table(["job", "size", "mode", *STAGE_COLS, "total"], rows)

    lines += ["", "The aeflow CLI run ((c)): the job exposes no per-stage times; each manifest row has `seconds` = "
              "read + decode + its share of the batch's inference + encode + write. Busy = Σ seconds / (workers × "
              "job wall).", ""]
    rows = []
    for row in r["results"]:
        c = row["modes"].get("aeflow")
        if c:
            busy = c["manifest_seconds_sum"] / ((c["workers"] or 1) * c["wall_s"]) if c["wall_s"] else None
            rows.append([row["job"], f"{row['size']}²", c.get("engine"), c["workers"],
                         c["threads_per_worker"], c["wall_s"], c["process_wall_s"], c["first_task_s"],
                         1000.0 * c["manifest_seconds_sum"] / max(1, c["images"]),
                         _f(busy, 2), c["peak_rss_mib"], c["peak_processes"]])
    lines += _table(["job", "size", "engine (auto)", "workers", "threads each", "job wall s",
                     "process wall s", "first batch starts s", "manifest ms/img", "busy", "peak RSS MiB",
                     "processes"], rows)

    mem = r.get("memory")
    if mem:
        lines += ["", f"Memory of the aeflow CLI's process tree, `{mem['job']}` on {mem['size']}² images "
                      f"({mem['how']}):", ""]
        rows = [[key.upper(), mem[key]["images"], mem[key]["peak_rss_mib"], mem[key]["peak_anon_mib"],
                 mem[key]["peak_processes"], mem[key]["images_per_s"]] for key in ("n", "10n")]
        lines += _table(["run", "files", "peak RSS MiB", "peak anon MiB", "processes", "img/s"], rows)
        ok = mem["rss_ratio"] <= t["rss_10n_over_n_max"]
        lines += ["", f"10N/N peak RSS: {_mark(mem['rss_ratio'], ok)} (target ≤ {t['rss_10n_over_n_max']}); "
                  f"anon: {mem['anon_ratio']:.2f}"]

    if r.get("model_only"):
        lines += ["", "Model only (in-memory uint8 batch, no files), images/s:", ""]
        keys = sorted({k for x in r["model_only"] for k in x if k.startswith(("ort_", "torch_"))})
        rows = [[x["job"], f"{x['size']}²", x["batch"], x["device"], *[x.get(k) for k in keys]]
                for x in r["model_only"]]
        lines += _table(["job", "size", "batch", "device", *keys], rows)

    sc = r.get("scaling")
    if sc:
        split = f"cores {sc['cores']} per node" if sc.get("pinned") else "cores not pinned"
        lines += ["", f"Scaling ({sc['job']}, {sc['n']} images {sc['size']}², `--address` to a local cluster, "
                      f"{split}, {sc.get('rounds', 1)} alternating rounds):", ""]
        rows = [[v.get("round", 1), v["nodes"] or "0 (in-process)", v.get("cluster", "–"), v["cpus"], v["workers"],
                 v["worker_nodes"],
                 v["images_per_s"], v["process_images_per_s"], v.get("running_images_per_s"), v.get("ray_startup_s")]
                for v in sc["runs"]]
        lines += _table(["round", "nodes", "cluster", "CPUs", "workers", "nodes used", "img/s (job)", "img/s (process)",
                         "img/s (job, once the actors answer)", "start-up s"], rows)
        lines += ["", f"2 nodes / 1 node: {_f(sc.get('ratio'), 2)} (job; by round {sc.get('ratio_by_round')}), "
                      f"{_f(sc.get('ratio_running'), 2)} (once the actors answer; by round "
                      f"{sc.get('ratio_running_by_round')}); 1 node / in-process on the same core: "
                      f"{_f(sc.get('one_node_over_local'), 2)} (by round {sc.get('one_node_over_local_by_round')}). "
                      f"A later job on the same cluster: 2/1 {_f(sc.get('ratio_warm'), 2)}, 1 node / in-process "
                      f"{_f(sc.get('one_node_over_local_warm'), 2)} (by round "
                      f"{sc.get('one_node_over_local_warm_by_round')})"]
    if r.get("scaling_error"):
        lines += ["", f"Scaling: not measured ({r['scaling_error'].splitlines()[0]})"]
    lines += ["", f"Bench wall time {r.get('bench_seconds')} s."]
    return "\n".join(lines)
