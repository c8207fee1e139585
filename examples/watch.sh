#!/usr/bin/env bash
# Continuous work: `merklesync watch --run` pushes the notes to a backup
# whenever an edit settles, and later runs scan only what changed.
# Runs in a temporary directory and stops by itself.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/merklesync-watch.XXXXXX")
watcher=
cleanup() {
    [ -n "$watcher" ] && kill "$watcher" 2>/dev/null && wait "$watcher" || true
    rm -rf "$work"
}
trap cleanup EXIT

# wait_for CMD...: up to 20 s for CMD to succeed
wait_for() {
    for _ in $(seq 200); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
    echo "gave up waiting for: $*" >&2
    return 1
}

cp -r "$here/notes" "$work/laptop"
merklesync init --quiet "$work/laptop"
echo "== merklesync watch laptop --run 'merklesync push laptop backup'"
merklesync watch "$work/laptop" --settle 0.5 \
    --run "merklesync push --quiet $work/laptop $work/backup" &
watcher=$!
wait_for test -f "$work/backup/todo.md"
echo "== the first push made the backup; now edit a note"
echo "- water the basil" >> "$work/laptop/todo.md"
wait_for grep -q "water the basil" "$work/backup/todo.md"
echo "== the backup has the edit:"
tail -n 1 "$work/backup/todo.md"
echo "== a scan now looks only where something changed:"
merklesync status --json "$work/laptop" | python3 -c \
    'import json, sys; print("files scanned:", json.load(sys.stdin)["scanned"])'
