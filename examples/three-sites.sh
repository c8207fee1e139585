#!/usr/bin/env bash
# Three sites, one anti-entropy round: each site changes its copy of the
# notes on its own (two of them the same file), then one `merklesync repair`
# (what a cron job runs) brings all three to the same state, both edits kept.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/merklesync-three-sites.XXXXXX")
trap 'rm -rf "$work"' EXIT

cp -r "$here/notes" "$work/paris"
merklesync init --quiet "$work/paris"
echo "== merklesync repair paris oslo lima   (oslo and lima are created)"
merklesync repair "$work/paris" "$work/oslo" "$work/lima"

echo "- fix the bike" >> "$work/paris/todo.md"
echo "- book the ferry" >> "$work/oslo/todo.md"
echo "rye, 3 cups" > "$work/lima/recipes/rye.txt"
rm "$work/oslo/bread"
echo "== three sites changed their copies; merklesync repair -v paris oslo lima"
merklesync repair -v "$work/paris" "$work/oslo" "$work/lima"

echo "== lima now has everything:"
ls "$work/lima" "$work/lima/recipes"
cat "$work/lima"/todo*.md
echo "== a second round finds nothing to do (crontab: */15 * * * * merklesync repair -q A B C)"
merklesync repair --json "$work/paris" "$work/oslo" "$work/lima" | python3 -c \
    'import json, sys; r = json.load(sys.stdin); print("identical:", r["identical"], "changes:", sum(len(s["events"]) for s in r["syncs"]))'
