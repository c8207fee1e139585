#!/usr/bin/env bash
# Amazon's shopping cart (Dynamo), with files: two devices change the same
# cart.json while offline; `sync --on-conflict union` keeps every item, while
# the default policy (keep-both) keeps the other version as a conflict copy.
# Runs in a temporary directory; exits non-zero if an item is lost.
set -euo pipefail
python=${PYTHON:-python3}
work=$(mktemp -d "${TMPDIR:-/tmp}/merklesync-cart.XXXXXX")
trap 'rm -rf "$work"' EXIT

# add_item FILE ITEM: append ITEM to the "items" array of the cart in FILE.
add_item() {
    "$python" - "$1" "$2" <<'PY'
import json, sys
path, item = sys.argv[1], sys.argv[2]
with open(path, encoding="utf-8") as f:
    cart = json.load(f)
cart["items"].append(item)
with open(path, "w", encoding="utf-8") as f:
    f.write(json.dumps(cart) + "\n")
PY
}

# check_cart FILE ITEM...: FILE is a cart holding every ITEM.
check_cart() {
    "$python" - "$@" <<'PY'
import json, sys
path, wanted = sys.argv[1], sys.argv[2:]
with open(path, encoding="utf-8") as f:
    items = json.load(f)["items"]
missing = [item for item in wanted if item not in items]
if missing:
    sys.exit(f"FAIL: {path}: lost {', '.join(missing)} (cart holds {items})")
PY
}

# offline_edits DIR: two replicas of one cart, synced, then changed apart.
offline_edits() {
    mkdir -p "$1/phone" "$1/laptop"
    printf '%s\n' '{"items": ["coffee"]}' > "$1/phone/cart.json"
    merklesync init -q "$1/phone"
    merklesync init -q "$1/laptop"
    merklesync sync -q "$1/phone" "$1/laptop"
    check_cart "$1/laptop/cart.json" coffee
    # Offline (airplane mode): each device adds an item to its own copy.
    add_item "$1/phone/cart.json" MacBook
    add_item "$1/laptop/cart.json" iPhone
    echo "phone:  $(cat "$1/phone/cart.json")"
    echo "laptop: $(cat "$1/laptop/cart.json")"
}

echo "== 1. sync --on-conflict union: the carts are merged, nothing is lost"
offline_edits "$work/union"
merklesync sync "$work/union/phone" "$work/union/laptop" --on-conflict union
echo "phone:  $(cat "$work/union/phone/cart.json")"
echo "laptop: $(cat "$work/union/laptop/cart.json")"
for side in phone laptop; do
    check_cart "$work/union/$side/cart.json" coffee MacBook iPhone
done
if ! cmp -s "$work/union/phone/cart.json" "$work/union/laptop/cart.json"; then
    echo "FAIL: the two carts differ after sync" >&2
    exit 1
fi
echo "ok: both carts hold coffee, MacBook and iPhone"

echo "== 2. sync --on-conflict keep-both (the default): a conflict copy instead"
offline_edits "$work/keep"
rc=0
merklesync sync "$work/keep/phone" "$work/keep/laptop" --on-conflict keep-both || rc=$?
if [ "$rc" -gt 1 ]; then
    echo "FAIL: merklesync sync exited with $rc" >&2
    exit 1
fi
copies=()
for side in phone laptop; do
    echo "$side: $(cd "$work/keep/$side" && ls cart*.json | tr '\n' ' ')"
    for copy in "$work/keep/$side"/cart.conflict-*.json; do
        [ -e "$copy" ] && copies+=("$copy")
    done
done
if [ "${#copies[@]}" -eq 0 ]; then
    echo "FAIL: no cart.conflict-*.json after a keep-both sync" >&2
    exit 1
fi
echo "ok: conflict copy ${copies[0]##*/}: $(cat "${copies[0]}")"
echo "    (one cart per version: the items are in two files, for you to merge)"
