"""Markdown for the flows' Prefect artifacts (pure functions: no Prefect, testable on their own)."""
from __future__ import annotations

import re


def artifact_key(text: str) -> str:
    """A Prefect artifact key (lowercase letters, digits and dashes) made from text."""
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-") or "aeflow"


def _fmt(v) -> str:
    return "—" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))


def promotion_markdown(ref, decision, prod_version: int | None, promoted: bool) -> str:
    """The gate's decision, both numbers, every metric of the new version and links to its pictures."""
    verdict = "PROMOTED to production" if promoted else "NOT promoted"
    if decision.promote and not promoted:
        verdict += " (passed the gate; promotion was switched off)"
    prod = f"{ref.name}:{prod_version}" if prod_version is not None else "none"
    lines = [f"# {ref.id}: {verdict}", "",
             f"Reason: {decision.reason}", "",
             f"| | main metric `{decision.metric}` ({'higher' if decision.higher_is_better else 'lower'} is better) |",
             "|---|---|",
             f"| new {ref.id} | {_fmt(decision.new_value)} |",
             f"| production ({prod}), same evaluation data | {_fmt(decision.prod_value)} |", "",
             "## All metrics of the new version", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in sorted((ref.card.get("metrics") or {}).items())
              if not isinstance(v, (dict, list))]
    pictures = ref.card.get("pictures") or []
    if pictures:
        lines += ["", "## Pictures", ""]
        for pic in pictures:
            path = ref.path / pic
            lines.append(f"- [{pic}](file://{path.resolve()}) `{path}`")
    lines += ["", f"Stored at `{ref.path}`"]
    return "\n".join(lines)


def job_markdown(job: str, model: str, in_dir: str, out_dir: str, summary: dict) -> str:
    """Counts, failures and throughput of one batch job."""
    m = summary.get("model")
    used = f"{m.get('name')}:{m.get('version')}" if isinstance(m, dict) else (m or model)
    lines = [f"# {job}: {in_dir} → {out_dir}", "", f"model `{used}` (asked for `{model}`)", "",
             "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in job_counts(summary).items()]
    for key in ("images_per_s", "wall_s", "device", "runner", "exit_code"):
        if key in summary:
            lines.append(f"| {key} | {_fmt(summary[key])} |")
    failures = summary.get("failures") or []
    if failures:
        lines += ["", f"## Failures ({len(failures)})", ""]
        for f in failures[:50]:
            lines.append(f"- `{f.get('path', f)}`: {f.get('error', '')}" if isinstance(f, dict) else f"- {f}")
    return "\n".join(lines)


def search_markdown(query: str, hits: list[dict]) -> str:
    """The nearest neighbours of a query image."""
    lines = [f"# nearest to `{query}`", "", "| rank | score | path |", "|---|---|---|"]
    lines += [f"| {h.get('rank')} | {_fmt(h.get('score'))} | `{h.get('path')}` |" for h in hits]
    return "\n".join(lines)


def dedup_markdown(out_dir: str, summary: dict) -> str:
    """Duplicate groups found in an embed output, with a link to the review page."""
    from pathlib import Path

    page = summary.get("page")
    lines = [f"# duplicates in {out_dir}", "",
             f"{summary['groups']} groups hold {summary['images_in_groups']} of {summary['images']} images "
             f"({summary['exact_duplicates']} exact copies); {summary['bytes_freeable'] / 1e6:.1f} MB could be freed "
             f"keeping one image per group (threshold {summary['threshold']:.3f}, k {summary['k']}).", ""]
    if summary.get("page_local"):  # an s3:// OUT_DIR: the uploaded page, and the copy this machine can open
        lines.append(f"Review them side by side: `{page}` (a local copy: "
                     f"[{summary['page_local']}]({Path(summary['page_local']).resolve().as_uri()}))")
    elif page:
        lines.append(f"Review them side by side: [{page}]({Path(page).resolve().as_uri()})")
    return "\n".join(lines)


def job_counts(summary: dict) -> dict:
    """ok / failed / skipped of a job summary (flat or under "counts")."""
    src = summary.get("counts") if isinstance(summary.get("counts"), dict) else summary
    return {k: int(src.get(k) or 0) for k in ("ok", "failed", "skipped")}
