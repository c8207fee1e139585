#!/usr/bin/env bash
# A first tour: make a replica, push it to a second one, change a file,
# see the difference, push again. Runs in a temporary directory.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/merklesync-quickstart.XXXXXX")
trap 'rm -rf "$work"' EXIT

cp -r "$here/notes" "$work/laptop"
echo "== merklesync init laptop"
merklesync init "$work/laptop"
echo "== merklesync push laptop backup   (backup is created and initialised)"
merklesync push --stats "$work/laptop" "$work/backup"
echo "== edit a file, add one, delete one"
echo "- sync the notes" >> "$work/laptop/todo.md"
echo "oats 80 g" > "$work/laptop/recipes/porridge.txt"
rm "$work/laptop/recipes/rice.txt"
echo "== merklesync diff laptop backup"
merklesync diff "$work/laptop" "$work/backup" || true
echo "== merklesync push -v laptop backup"
merklesync push -v "$work/laptop" "$work/backup"
echo "== merklesync diff laptop backup   (exit 0: same content)"
merklesync diff --stats "$work/laptop" "$work/backup"
echo "== an edit on the backup is never overwritten by an older push"
echo "edited on the backup" >> "$work/backup/todo.md"
echo "edited on the laptop" >> "$work/laptop/todo.md"
merklesync push "$work/laptop" "$work/backup" || echo "(exit $?: conflict left alone, both edits kept)"
