"""The comparison: per row ours, the reported number, its source, the split and the difference, as
Markdown, CSV and a PNG chart (ours against reported).

A server-scored split shows the submission file to upload instead of a number; a row whose cell failed
shows the error (the missing file); a row with no checkpoint (the paper's giant model) says so. Nothing is
printed as comparable that is not: the contaminated VQA val scores live in their own table, without a
reported number beside them.
"""
from __future__ import annotations

import csv
import dataclasses
import io
from pathlib import Path
from typing import Any, Dict, List, Optional

from beit3_plugins.checkpoint import atomic_write

from .benchmarks import BENCHMARKS
from .runner import Plan

__all__ = ["Row", "compare", "render_markdown", "write_outputs", "COLUMNS"]

COLUMNS = ("table", "model", "evaluated", "benchmark", "split", "metric", "reported", "ours", "difference",
           "source", "note")


@dataclasses.dataclass
class Row:
    table: str
    model: str
    evaluated: str
    benchmark: str
    split: str
    metric: str
    reported: Optional[float]
    ours: Optional[float]
    status: str          # "" when ours is a number; else why not (submission, error, not evaluated)
    source: str
    note: str

    @property
    def difference(self) -> Optional[float]:
        if self.ours is None or self.reported is None:
            return None
        return self.ours - self.reported

    def cells(self) -> List[str]:
        def num(v: Optional[float], signed: bool = False) -> str:
            return "" if v is None else (f"{v:+.2f}" if signed else f"{v:.2f}")

        ours = num(self.ours) if self.ours is not None else self.status
        return [self.table, self.model, self.evaluated, self.benchmark, self.split, self.metric, num(self.reported),
                ours, num(self.difference, True), self.source, self.note]


def compare(plan: Plan, results: Dict[str, Dict[str, Any]], errors: Optional[Dict[str, str]] = None) -> List[Row]:
    errors = errors or {}
    rows = []
    for table, r, cell in plan.rows:
        bench = BENCHMARKS[r.benchmark]
        ours, status, evaluated = None, "", cell.model if cell else ""
        if cell is None:
            status = "no checkpoint (pass --model FILE=" + r.model + ")"
        elif cell.id in errors:
            status = "error: " + errors[cell.id].splitlines()[0]
        elif cell.id not in results:
            status = "not evaluated"
        else:
            result = results[cell.id]
            if result.get("submission"):
                status = f"submit {result['submission']} to {result['server']}"
            elif r.metric in result.get("metrics", {}):
                ours = float(result["metrics"][r.metric])
            elif r.metric in result.get("not_computed", {}):
                status = result["not_computed"][r.metric]
            else:
                status = f"no {r.metric} in the result (have: {', '.join(sorted(result.get('metrics', {})))})"
        rows.append(Row(table, r.model, evaluated, r.benchmark, bench.split, r.metric, r.value, ours, status,
                        r.source, r.note))
    return rows


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(plan: Plan, rows: List[Row]) -> str:
    lines = [f"# Reproduction: {plan.target}", "",
             "ours = this project's evaluation of the file in `evaluated` with the official protocol; "
             "difference = ours - reported.", ""]
    for table in plan.tables:
        mine = [r for r in rows if r.table == table.name]
        if not mine:
            continue
        lines += [f"## {table.title}", ""]
        if table.note:
            lines += [f"> {table.note}", ""]
        lines += ["| " + " | ".join(COLUMNS[1:]) + " |", "|" + "---|" * (len(COLUMNS) - 1)]
        lines += ["| " + " | ".join(_md_escape(c) for c in r.cells()[1:]) + " |" for r in mine]
        lines.append("")
    return "\n".join(lines)


def render_csv(rows: List[Row]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(COLUMNS)
    writer.writerows(r.cells() for r in rows)
    return buffer.getvalue()


def plot(rows: List[Row], path: Path) -> Optional[Path]:
    """Ours against reported, one point per row with both numbers, the diagonal = reproduced exactly."""
    pairs = [r for r in rows if r.ours is not None and r.reported is not None]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 6))
    tables = list(dict.fromkeys(r.table for r in pairs))
    for table in tables:
        pts = [r for r in pairs if r.table == table]
        ax.scatter([r.reported for r in pts], [r.ours for r in pts], label=table, s=22, alpha=0.8)
    ax.plot([0, 150], [0, 150], color="grey", lw=0.8, ls="--", label="ours = reported")
    ax.set_xlabel("reported")
    ax.set_ylabel("ours")
    ax.set_title(f"ours vs reported ({len(pairs)} numbers)" if pairs else "no row has both numbers yet")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    data = buffer.getvalue()
    atomic_write(str(path), lambda f: f.write(data))
    return path


def write_outputs(plan: Plan, rows: List[Row], out: Path) -> Dict[str, Path]:
    """``<out>/<target>.md``, ``.csv`` and ``.png``; returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    md = render_markdown(plan, rows).encode()
    table_csv = render_csv(rows).encode()
    paths = {"markdown": out / f"{plan.target}.md", "csv": out / f"{plan.target}.csv",
             "chart": out / f"{plan.target}.png"}
    atomic_write(str(paths["markdown"]), lambda f: f.write(md))
    atomic_write(str(paths["csv"]), lambda f: f.write(table_csv))
    plot(rows, paths["chart"])
    return paths
