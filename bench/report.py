"""Bench output: a rich table per comparison, a markdown report and a PNG, all from the bench document."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table

from bench.figures import BY_KEY


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 0.01 or value == 0:
        return f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"
    return f"{value:.2e}"


def _side(fig: dict[str, Any], side: str) -> str:
    return f"{_num(fig[f'{side}_median'])} [{_num(fig[f'{side}_min'])}-{_num(fig[f'{side}_max'])}]"


def _ratio(fig: dict[str, Any]) -> str:
    if fig["ratio"] is None:
        return "-"
    if fig["ci_low"] is None:
        return f"{fig['ratio']:.3f}"
    return f"{fig['ratio']:.3f} [{fig['ci_low']:.3f}-{fig['ci_high']:.3f}]"


def rows(figures: dict[str, dict[str, Any]]) -> list[list[str]]:
    out = []
    for key, fig in figures.items():
        unit = BY_KEY[key].unit if key in BY_KEY else fig.get("unit", "")
        out.append(
            [
                f"{fig['label']} ({unit})",
                _side(fig, "a"),
                _side(fig, "b"),
                _ratio(fig),
                f"{fig['p_value']:.3f}",
                fig["verdict"],
                "; ".join(fig["warnings"]),
            ]
        )
    return out


HEADER = ["figure", "A median [min-max]", "B median [min-max]", "B/A [95% CI]", "p", "verdict", "warnings"]


def rich_table(figures: dict[str, dict[str, Any]], a: str, b: str, title: str) -> Table:
    table = Table(title=title, caption=f"A = {a}   B = {b}", show_lines=False)
    for i, col in enumerate(HEADER):
        table.add_column(col, justify="left" if i in (0, 5, 6) else "right", overflow="fold")
    for row in rows(figures):
        style = ""
        if row[5].endswith(("faster", "less", "fewer", "higher")):
            style = "green"
        elif row[5].endswith(("slower", "more", "lower")):
            style = "red"
        row[5] = f"[{style}]{row[5]}[/]" if style else row[5]
        table.add_row(*row)
    return table


def markdown_table(figures: dict[str, dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in rows(figures)]
    return "\n".join(lines)


def runs_table_md(doc: dict[str, Any]) -> str:
    head = ["side", "round", "attempt", "tasks/s", "e2e p50 ms", "cmds/task", "worker CPU ms/task", "other CPU %"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in sorted(doc["runs"], key=lambda r: (r["round"], r["side"])):
        f = r["figures"]
        cells = [r["side"], str(r["round"]), str(r["attempt"]), _num(f["throughput"]), _num(f["e2e_p50_ms"])]
        cells += [_num(f["redis_commands_per_task"]), _num(f["worker_cpu_ms_per_task"])]
        cells.append(_num(f["disturbance_pct"]) + (" (disturbed)" if r.get("disturbed") else ""))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(doc: dict[str, Any]) -> str:
    m, v = doc["machine"], doc["versions"]
    load = doc.get("load_average")  # absent from bench files written before it was recorded
    parts = [
        f"# lab bench: {doc['workload']['name']}",
        "",
        f"- command: `{doc.get('command') or '-'}`",
        f"- date: {doc['created']}, duration {doc['duration_s']} s",
        f"- machine: {m['cpus']} CPUs ({m['cpu_model']}), {m['memory_gb']} GB, kernel {m['kernel']}"
        + (f"; load average {load['start']} at the start, {load['end']} at the end" if load else ""),
        "- versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
        f"- workload: {doc['workload']['name']} ({doc['workload']['description']}); backlog {doc['tasks']} tasks, "
        f"latency phase {doc['latency_rate']:.0f} tasks/s for {doc['latency_s']} s; {doc['repeat']} repetitions "
        f"per side, interleaved; alpha {doc['alpha']}",
        "- sides: " + "; ".join(f"{s['label']} = `{s['spec']}`" for s in doc["sides"]),
        f"- discarded (disturbed, re-run): {len(doc.get('discarded_runs', []))}",
        "",
    ]
    for c in doc["comparisons"]:
        parts += [f"## {c['b']} vs {c['a']}", "", markdown_table(c["figures"]), ""]
    parts += ["## Runs", "", runs_table_md(doc), ""]
    return "\n".join(parts)


def plot(doc: dict[str, Any], path: Path) -> Path:
    """Per-repetition throughput of each side, and each side's pooled end-to-end latency distribution."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [s["label"] for s in doc["sides"]]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for label in labels:
        runs = sorted((r for r in doc["runs"] if r["side"] == label), key=lambda r: r["round"])
        ax1.plot([r["round"] for r in runs], [r["figures"]["throughput"] for r in runs], marker="o", label=label)
    ax1.set_xticks(range(1, doc["repeat"] + 1))
    ax1.set_xlabel("round")
    ax1.set_ylabel("tasks/s (backlog drain)")
    ax1.set_title(f"throughput per repetition ({doc['workload']['name']})")
    ax1.set_ylim(bottom=0)
    ax1.legend(fontsize=8)
    data = [
        [x for r in doc["runs"] if r["side"] == label for x in r.get("latency_samples_ms", {}).get("e2e", [])]
        for label in labels
    ]
    if any(data):
        ax2.boxplot([d or [0.0] for d in data], showfliers=False)
        ax2.set_xticks(range(1, len(labels) + 1), labels, rotation=15, fontsize=8)
    ax2.set_ylabel("ms")
    ax2.set_title(f"end-to-end latency at {doc['latency_rate']:.0f} tasks/s (all runs)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_outputs(doc: dict[str, Any], run_dir: Path) -> dict[str, Path]:
    md = run_dir / "report.md"
    md.write_text(markdown(doc))
    png = plot(doc, run_dir / "bench.png")
    return {"json": run_dir / "bench.json", "markdown": md, "png": png}
