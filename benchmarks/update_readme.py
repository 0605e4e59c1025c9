"""Render ``benchmarks/results/*.json`` into the README's results section.

    python benchmarks/update_readme.py

Only the text between ``<!-- results:begin -->`` and ``<!-- results:end -->`` changes; every
number there comes from a result file written by a benchmark script, with its machine and
date.

A benchmark run for a target other than the host's writes ``<name>-<slug>.json`` beside
``<name>.json`` (``models-avx2-fma.json``; see ``benchmarks/common.py``). Its table follows the
host-target table of the same benchmark, and its heading ends with ``— target`` and the target
string; when a benchmark has both, the host-target heading ends with ``— host target``. A
benchmark with only ``<name>.json`` renders as one table under its plain title, as before.
Each table's line below the heading gives the machine, date and target (with the target's
and the CPU's features when they differ). The part of a file name before the first ``-`` names
the benchmark.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS, ROOT, machine_line, table

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
ORDER = ["models", "architectures", "kernels", "tuning", "quantize", "prune", "low_rank", "sparse",
         "embedded", "conformance"]


def _key(path: Path) -> tuple[int, str, bool, str]:
    """Benchmarks in :data:`ORDER`; within one, the host target's file, then the others."""
    base, _, slug = path.stem.partition("-")
    return (ORDER.index(base) if base in ORDER else 99, base, bool(slug), slug)


def render(results: Path = RESULTS) -> str:
    """The Markdown of every result file in ``results``."""
    files = sorted(results.glob("*.json"), key=_key)
    per_base: dict[str, int] = {}
    for f in files:
        base = _key(f)[1]
        per_base[base] = per_base.get(base, 0) + 1
    parts = []
    for f in files:
        data = json.loads(f.read_text())
        cols = [tuple(c) for c in data.get("columns", [])]
        if not cols or not data.get("rows"):
            continue
        _, base, other_target, _ = _key(f)
        title = data.get("title", f.stem)
        if other_target:
            title += f" — target `{data['machine'].get('target', '?')}`"
        elif per_base[base] > 1:
            title += " — host target"
        script = data.get("script", f"benchmarks/{base}.py")
        parts.append(f"### {title}\n\n{machine_line(data['machine'])} — `python {script}`\n\n"
                     f"{table(data['rows'], cols)}\n")
        for note in data.get("notes", []):
            parts[-1] += f"\n{note}\n"
    if not parts:
        return "Not measured yet: run the scripts in `benchmarks/`."
    return "\n".join(parts)


def main() -> int:
    readme = ROOT / "README.md"
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        print(f"README.md lacks the {BEGIN} / {END} markers", file=sys.stderr)
        return 1
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{BEGIN}\n{render()}\n{END}{tail}"
    tmp = readme.with_suffix(".md.tmp")
    tmp.write_text(new)
    tmp.replace(readme)
    print(f"updated {readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
