"""Writing a run's results: ``<stem>.md`` (tables) and ``<stem>-<scenario>.png`` (plots).

The JSON is the record; this module only presents it. Plots need matplotlib (the bench's
one extra dependency); without it the markdown says so and the run still succeeds.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

DPI = 80
SIZE = (6.4, 3.2)


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and math.isnan(value):
        return "-"
    if isinstance(value, int | float):
        if unit == "s" and abs(value) < 1:
            return f"{value * 1000:.2f} ms"
        if unit == "s":
            return f"{value:.2f} s"
        if unit == "bytes":
            return f"{int(value):,} B"
        if isinstance(value, int):
            return f"{value:,}"
        return f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def _unit(unit: str, value: Any) -> str:
    if unit in ("s", "bytes"):
        return ""
    return unit


def _extra(entry: dict[str, Any]) -> str:
    skip = {"median", "p99", "n", "unit", "min", "max"}
    parts = []
    for key, value in entry.items():
        if key in skip:
            continue
        if isinstance(value, dict):
            value = ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items())
        elif isinstance(value, list):
            value = "; ".join(str(v) for v in value)
        parts.append(f"{key}: {_fmt(value) if not isinstance(value, str) else value}")
    return "; ".join(parts).replace("|", "/").replace("\n", " ")


def _verdict(target: dict[str, Any]) -> str:
    met = target.get("met")
    if met is None:
        return "not run" + (f" ({target['why']})" if target.get("why") else "")
    return "**met**" if met else "**missed**"


def markdown(out: dict[str, Any], images: dict[str, str]) -> str:
    m = out["machine"]
    lines = [
        f"# rlm-jobs benchmark results{' (smoke)' if out.get('smoke') else ''}",
        "",
        f"Run {out['started_at']}, {out['duration_s']} s. Machine: {m['cpu_count']} x "
        f"{m['cpu_model']}, {m['memory_gib']} GiB, {m['platform']}, Python {m['python']}, "
        f"redis-server {m['redis_server']}; "
        + ", ".join(f"{k} {v}" for k, v in m["packages"].items())
        + f". Load average at start {m['load_average_at_start']}, at end "
        f"{m.get('load_average_at_end')}. Commit {m.get('git', {}).get('commit', '?')[:12]}"
        + (
            f" with uncommitted changes in {', '.join(m['git']['modified_files'])}"
            if m.get("git", {}).get("modified_files")
            else ""
        )
        + ".",
        "",
    ]
    ref = out.get("reference")
    if ref:
        lines += [
            f"Reference: {ref['package']} "
            + ("(in bench/.ref-venv)" if ref["available"] else f"not available: {ref['problem']}"),
            "",
        ]
    lines += ["## Targets", "", "| scenario | target | value | verdict |", "|---|---|---|---|"]
    for key, data in out["scenarios"].items():
        for name, target in data.get("targets", {}).items():
            value = target.get("value")
            shown = _fmt(value) if not isinstance(value, str) else value
            lines.append(f"| {key} | {name} | {shown} | {_verdict(target)} |")
        if "crashed" in data:
            lines.append(f"| {key} | - | - | crashed |")
    lines.append("")
    for key, data in out["scenarios"].items():
        lines += [f"## {key}: {data.get('title', '')}", ""]
        if "crashed" in data:
            lines += ["Crashed:", "", "```", data["crashed"].strip()[-3000:], "```", ""]
            continue
        if "skipped" in data:
            lines += [f"Skipped: {data['skipped']}", ""]
            continue
        config = data.get("config", {})
        if config:
            lines += [
                "Config: " + "; ".join(f"{k}={_fmt(v)}" for k, v in config.items()) + ".",
                "",
            ]
        lines += ["| metric | median | p99 | n | unit | details |", "|---|---|---|---|---|---|"]
        for name, entry in data.get("metrics", {}).items():
            unit = entry.get("unit", "")
            lines.append(
                f"| {name} | {_fmt(entry.get('median'), unit)} | {_fmt(entry.get('p99'), unit)} "
                f"| {entry.get('n', '')} | {_unit(unit, entry.get('median'))} | {_extra(entry)} |"
            )
        lines.append("")
        for note in data.get("notes", []):
            lines.append(f"- {note}")
        if data.get("notes"):
            lines.append("")
        for variant, per_workload in (data.get("breakdown") or {}).items():
            lines += _breakdown(variant, per_workload)
        if key in images:
            lines += [f"![{key}]({images[key]})", ""]
        lines += [f"Scenario time: {data.get('duration_s')} s.", ""]
    return "\n".join(lines)


def _breakdown(variant: str, per_workload: dict[str, dict[str, Any]]) -> list[str]:
    """Seconds per job in each phase (phases overlap: a cell contains its sub-calls)."""
    if not per_workload:
        return []
    names = list(per_workload)
    phases = sorted({p for phases in per_workload.values() for p in phases})
    lines = [
        f"Where the time goes, {variant} (seconds per job / calls per job; phases overlap):",
        "",
        "| phase | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for phase in phases:
        cells = []
        for name in names:
            entry = per_workload[name].get(phase)
            cells.append(
                "-"
                if entry is None
                else f"{entry['seconds_per_job']:.3f} s / {entry['calls_per_job']:g}"
            )
        lines.append(f"| {phase} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _plots(out: dict[str, Any], directory: Path, stem: str) -> dict[str, str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return {}
    images: dict[str, str] = {}
    for key, data in out["scenarios"].items():
        plot = data.get("plot") or {}
        kind = plot.get("kind")
        if not kind:
            continue
        fig, ax = plt.subplots(figsize=SIZE, dpi=DPI)
        try:
            drawn = _draw(ax, kind, plot, data)
        except (KeyError, ValueError, TypeError):
            drawn = False
        if drawn:
            ax.set_title(data.get("title", key)[:70], fontsize=9)
            ax.tick_params(labelsize=7)
            fig.tight_layout()
            name = f"{stem}-{key.split('_', 1)[0]}.png"
            fig.savefig(directory / name)
            images[key] = name
        plt.close(fig)
    return images


def _draw(ax: Any, kind: str, plot: dict[str, Any], data: dict[str, Any]) -> bool:
    if kind == "box":
        series = {k: [v * 1000 for v in vals] for k, vals in plot["series"].items() if vals}
        ax.boxplot(list(series.values()), showfliers=False)
        ax.set_xticks(range(1, len(series) + 1), list(series), rotation=15)
        ax.set_ylabel("ms")
        return True
    if kind == "fanout":
        labels = list(plot["series"])
        ours = [_median(plot["series"][k]) for k in labels]
        base = [_median(plot["baseline"].get(k, [])) for k in labels]
        positions = list(range(len(labels)))
        ax.bar([x - 0.2 for x in positions], ours, 0.4, label="rlm-jobs llm_query_batched")
        ax.bar([x + 0.2 for x in positions], base, 0.4, label="naive Celery group (sleep)")
        ax.axhline(plot["target"], color="red", linestyle="--", linewidth=1, label="target")
        ax.set_xticks(positions, labels)
        ax.set_ylabel("wall time / provider latency")
        ax.legend(fontsize=7)
        return True
    if kind == "grouped":
        medians = plot["medians"]
        variants = plot["variants"]
        workloads = list(next(iter(medians.values())))
        width = 0.8 / max(1, len(variants))
        for i, variant in enumerate(variants):
            values = [medians[variant].get(w) or 0 for w in workloads]
            xs = [x + (i - (len(variants) - 1) / 2) * width for x in range(len(workloads))]
            ax.bar(xs, values, width, label=variant)
        ax.set_xticks(range(len(workloads)), workloads)
        ax.set_ylabel("seconds per job (median)")
        ax.legend(fontsize=6)
        return True
    if kind == "makespan":
        bars = plot["bars"]
        ax.bar(list(bars), list(bars.values()), color=["tab:blue", "tab:orange"][: len(bars)])
        ax.axhline(plot["bound"], color="green", linestyle="--", linewidth=1, label="ideal bound")
        ax.axhline(plot["bound"] * 1.25, color="red", linestyle=":", linewidth=1, label="target")
        ax.set_ylabel("makespan (s)")
        ax.legend(fontsize=7)
        return True
    if kind == "scaling":
        counts = [int(k) for k in plot["throughput"]]
        values = [_median(plot["throughput"][str(k)]) for k in counts]
        ax.plot(counts, values, marker="o", label="measured")
        ax.plot(
            counts,
            [c * plot["ideal_per_process"] for c in counts],
            linestyle="--",
            label="ideal (slots / latency)",
        )
        ax.set_xticks(counts)
        ax.set_xlabel("llm worker processes")
        ax.set_ylabel("sub-calls / s")
        ax.legend(fontsize=7)
        return True
    return False


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def write(out: dict[str, Any], directory: Path, stem: str) -> None:
    images = _plots(out, directory, stem)
    (directory / f"{stem}.md").write_text(markdown(out, images))
