"""Render ``benchmarks/results/*.json`` into the README's results section.

    python benchmarks/update_readme.py

Only the text between ``<!-- results:begin -->`` and ``<!-- results:end -->`` changes; every
number there comes from a result file written by a benchmark script, with its machine and
date.
"""

from __future__ import annotations

import json
import sys

from common import RESULTS, ROOT, machine_line, table

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
ORDER = ["models", "architectures", "kernels", "tuning", "quantize", "prune", "low_rank", "sparse", "conformance"]


def render() -> str:
    files = sorted(RESULTS.glob("*.json"),
                   key=lambda p: (ORDER.index(p.stem) if p.stem in ORDER else 99, p.stem))
    parts = []
    for f in files:
        data = json.loads(f.read_text())
        cols = [tuple(c) for c in data.get("columns", [])]
        if not cols or not data.get("rows"):
            continue
        title = data.get("title", f.stem)
        script = data.get("script", f"benchmarks/{f.stem}.py")
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
