#!/usr/bin/env bash
# `make mutants-unit`: mutmut 3 over the pure-logic modules (tools/mutants/setup.cfg) with their unit
# tests, in a scratch copy of a committed revision (default HEAD; MUTANTS_REV=<rev>), so that edits in
# the working tree neither disturb the run nor get mutated. Runs at low priority (nice 10).
# Writes <scratch>/report.md (score per module, every survivor's diff) and prints the summary.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
REV=$(git -C "$REPO" rev-parse "${MUTANTS_REV:-HEAD}")
WORK=${MUTANTS_DIR:-/tmp/mobidem-mutants-${REV:0:12}${MUTANTS_ONLY:+-part}}
CHILDREN=${MUTANTS_CHILDREN:-2}
VENV=$REPO/.venv/bin

rm -rf "$WORK"
mkdir -p "$WORK"
git -C "$REPO" archive "$REV" | tar -x -C "$WORK"
cd "$WORK"
# mutmut imports mutated code from mutants/src: the package moves to src/mobidem in the copy
mkdir src
mv server/mobidem src/mobidem
cp "$REPO/tools/mutants/setup.cfg" setup.cfg
if [ -n "${MUTANTS_ONLY:-}" ]; then  # e.g. MUTANTS_ONLY="streaming.py gallery/index.py": those modules alone
  "$VENV/python" - "$MUTANTS_ONLY" <<'PY'
import re, sys
text = open("setup.cfg").read()
only = "".join(f"    src/mobidem/{m}\n" for m in sys.argv[1].split())
open("setup.cfg", "w").write(re.sub(r"only_mutate =\n(?:    .*\n)+", "only_mutate =\n" + only, text))
PY
fi
echo "$REV" > MUTANTS_REVISION
echo "mutants: revision $REV in $WORK (log: $WORK/mutmut-run.log)"
started=$(date +%s)
status=0
nice -n 10 "$VENV/mutmut" run --max-children "$CHILDREN" > mutmut-run.log 2>&1 || status=$?
echo "mutmut run exited $status after $(( $(date +%s) - started )) s"
"$VENV/python" "$REPO/tools/mutants/report.py" "$WORK" "$REV" "$(( $(date +%s) - started ))"
exit "$status"
