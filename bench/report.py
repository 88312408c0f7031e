"""The benchmark's output: one table, a JSON file and a PNG bar chart.

Every row compares one figure of mailstead with the same figure of an anchor (Postfix,
Dovecot, bare aiosmtpd, the disk) measured in the same run. ``ratio`` is always mailstead
divided by the anchor; the target bounds it from below for rates (more is better) and from
above for times and memory (less is better).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass
class Row:
    group: str  # smtp, submission, imap, pop3
    operation: str
    unit: str  # msg/s, ms, s, MiB
    mailstead: float
    anchor: str
    anchor_value: float
    higher_is_better: bool
    target: float | None = None  # bound on the ratio; None = shown for information

    @property
    def ratio(self) -> float:
        if not self.anchor_value:
            return math.inf if self.mailstead else 1.0
        return self.mailstead / self.anchor_value

    @property
    def target_text(self) -> str:
        if self.target is None:
            return ""
        return f"{'>=' if self.higher_is_better else '<='} {self.target:.2f}x"

    @property
    def met(self) -> bool | None:
        if self.target is None:
            return None
        if self.higher_is_better:
            return self.ratio >= self.target
        return self.ratio <= self.target

    def as_dict(self) -> dict:
        out = asdict(self)
        out.update(ratio=round(self.ratio, 3), target_text=self.target_text, met=self.met)
        return out


def _figure(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def table(rows: list[Row]) -> str:
    head = ("operation", "unit", "mailstead", "anchor", "anchor figure", "ratio", "target",
            "met?")
    cells = [head]
    for r in rows:
        met = {None: "", True: "yes", False: "NO"}[r.met]
        cells.append((r.operation, r.unit, _figure(r.mailstead), r.anchor,
                      _figure(r.anchor_value), f"{r.ratio:.2f}x", r.target_text, met))
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    right = {2, 4, 5}
    lines = []
    for n, c in enumerate(cells):
        lines.append("  ".join(v.rjust(w) if i in right else v.ljust(w)
                               for i, (v, w) in enumerate(zip(c, widths, strict=True))).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_json(path: Path, rows: list[Row], environment: dict, extra: dict) -> None:
    path.write_text(json.dumps({"environment": environment,
                                "rows": [r.as_dict() for r in rows], "details": extra},
                               indent=2, default=str) + "\n")


def write_png(path: Path, rows: list[Row], title: str) -> None:
    """One horizontal bar per row: the ratio, with the target drawn as a tick."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r.operation} ({r.anchor}) {'more' if r.higher_is_better else 'less'} is better"
              for r in rows]
    ratios = [min(max(r.ratio, 1e-3), 1e3) if math.isfinite(r.ratio) else 1e3 for r in rows]
    colors = ["#999999" if r.met is None else "#2e7d32" if r.met else "#c62828" for r in rows]
    fig, ax = plt.subplots(figsize=(11, 0.32 * len(rows) + 1.6))
    y = range(len(rows))
    ax.barh(list(y), ratios, color=colors)
    for i, r in enumerate(rows):
        if r.target is not None:
            ax.plot([r.target, r.target], [i - 0.4, i + 0.4], color="black", linewidth=1.5)
    ax.axvline(1.0, color="#555555", linewidth=0.8, linestyle="--")
    ax.set_yticks(list(y))
    ax.set_yticklabels(labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("mailstead / anchor (log scale; black tick = target; green met, red not, "
                  "grey no target)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
