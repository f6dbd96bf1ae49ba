"""What the bench scripts share: print their rows as a table and append them to bench/results/<name>.jsonl."""

from __future__ import annotations

import json
from pathlib import Path


def record(name: str, rows: list[dict], hidden: tuple[str, ...] = ("when", "overrides")) -> None:
    """One line per row on stdout (`key value` pairs, floats to 4 significant digits, less `hidden`), and every row,
    whole, appended to bench/results/<name>.jsonl."""
    for row in rows:
        print("  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()
                        if k not in hidden))
    out = Path(__file__).with_name("results")
    out.mkdir(exist_ok=True)
    with open(out / f"{name}.jsonl", "a") as fh:
        fh.writelines(json.dumps(row) + "\n" for row in rows)
