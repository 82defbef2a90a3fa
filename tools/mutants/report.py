"""Summarise a mutmut 3 run (tools/mutants/run.sh): the score per module and every survivor's diff.

Usage: report.py SCRATCH_DIR REVISION SECONDS. Writes SCRATCH_DIR/report.md and prints the table.
Score = killed / (killed + survived), where a timeout counts as killed (the tests did not pass) and
"no tests" (no unit test reaches the function: its code is tested end to end only) is reported apart.
"""

from __future__ import annotations

import collections
import re
import subprocess
import sys
from pathlib import Path

work, revision, seconds = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
mutmut = str(Path(sys.executable).with_name("mutmut"))
out = subprocess.run([mutmut, "results", "--all", "true"], cwd=work, capture_output=True, text=True).stdout

by_module: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
survivors: list[str] = []
for line in out.splitlines():
    name, sep, status = line.strip().rpartition(": ")
    if not sep or "__mutmut_" not in name:
        continue
    module = re.split(r"\.x[_\u01c1]", name, maxsplit=1)[0]  # module.x_function / module.xǁClassǁmethod
    by_module[module][status] += 1
    if status == "survived":
        survivors.append(name)

rows = ["| module | mutants | killed | timeout | survived | no unit test | score |", "|---|---|---|---|---|---|---|"]
total: collections.Counter = collections.Counter()
for module in sorted(by_module):
    c = by_module[module]
    total.update(c)
    tried = c["killed"] + c["timeout"] + c["survived"]
    score = f"{100 * (c['killed'] + c['timeout']) / tried:.1f} %" if tried else "-"
    rows.append(f"| {module} | {sum(c.values())} | {c['killed']} | {c['timeout']} | {c['survived']} "
                f"| {c['no tests']} | {score} |")
tried = total["killed"] + total["timeout"] + total["survived"]
rows.append(f"| **all** | {sum(total.values())} | {total['killed']} | {total['timeout']} | {total['survived']} "
            f"| {total['no tests']} | {100 * (total['killed'] + total['timeout']) / max(tried, 1):.1f} % |")
other = {k: v for k, v in total.items() if k not in ("killed", "timeout", "survived", "no tests")}

lines = [f"# mutmut run: revision {revision}, {seconds} s", "", *rows, ""]
if other:
    lines += [f"Other outcomes: {dict(other)}", ""]
lines += ["## Survivors", ""]
for name in survivors:
    diff = subprocess.run([mutmut, "show", name], cwd=work, capture_output=True, text=True).stdout
    lines += [f"### {name}", "```diff", diff.strip(), "```", ""]
(work / "report.md").write_text("\n".join(lines))
print("\n".join(rows))
if other:
    print(f"Other outcomes: {dict(other)}")
print(f"{len(survivors)} survivors; their diffs: {work / 'report.md'}")
