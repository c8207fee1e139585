"""What each command's ``--json`` object holds, key by key: the man pages
print it (JSON OUTPUT), and a test checks every command's object against it,
so the two cannot drift apart. A run that fails (exit status 2 or more)
prints ERROR_OBJECT instead."""

from __future__ import annotations

from typing import NamedTuple

ERROR_OBJECT = (
    "A run that fails (exit status 2 or more) prints {error, exit_code} instead: the message "
    "it writes on standard error, and the exit status. One cut short by a signal while it "
    "writes a long object leaves that object unfinished (its exit status says so)."
)


class Field(NamedTuple):
    key: str
    text: str
    always: bool = True  # False: present only in the case the text names


_STATS = Field(
    "stats",
    "The counters --stats prints (files_copied counts the files made from one the destination "
    "held at another path, a move or a rename, with nothing sent): round_trips, nodes_compared, "
    "entries_compared, bytes_sent, bytes_received, files_transferred, bytes_transferred, "
    "files_copied, files_scanned, files_hashed.",
)
_WARNINGS = Field("warnings", "Files a scan skipped or could not read, one line each.")
_DRY_RUN = Field("dry_run", "Whether this was a dry run (nothing written).")
_KIND = (
    "change is A (only in the first replica), D (only in the second, or deleted in the first), "
    "M (in both, different) or T (type changed)"
)
_CHANGE = (
    f"{{path, change, action, ok, reason, discarded}}: {_KIND}, or = (the same content, only "
    "the versions differ); action is copy, merge-version, dest-newer, conflict, or force "
    "under --force; after a run, ok says whether it was carried out; reason is given where it "
    "is not (or, in a dry run, would not be); discarded, for a force, whose version it "
    "overwrote, in words"
)
_DIFF_CHANGE = (
    f"{{path, change, action}}: {_KIND}; action is what a push from the first to the second "
    "would do: copy, dest-newer or conflict"
)
_NAMED = "(a local one by its absolute path, a remote one by its address)"
_TRANSFER = [
    Field("source", f"The source replica {_NAMED}."),
    Field("destination", f"The destination replica {_NAMED}."),
    _DRY_RUN,
    Field("changes", f"One object per difference, as {_CHANGE}."),
    Field("left_alone", "What the run left alone, each as {path, reason}: the exit status is 1."),
    Field(
        "ignored",
        "The paths a remote destination's ignore rules left out (its refusal, by design: no "
        "failure); those of a local replica are left out of the run itself.",
    ),
    _WARNINGS,
    _STATS,
]
_SYNC = [
    Field(
        "events",
        "What the sync did, each as {path, what, detail, ok}: what is a->b or b->a (copied "
        "that way; detail says what it does there, as diff's change), merge-version (the same "
        "content, the versions merged; detail empty), conflict or modify-delete (settled as "
        "detail says, in words); ok (not in a dry run): whether it was carried out (when not, "
        "its path is in left_alone or unresolved).",
    ),
    Field("left_alone", "Writes that did not go, each as {path, reason}."),
    Field(
        "ignored",
        "Writes a remote side refused because its ignore rules leave the path out (by design, "
        "no failure), each as {path, on}: on is a or b, the side written to.",
    ),
    Field(
        "unresolved",
        "Conflicts no policy could settle, each as {path, reason}: each replica keeps its "
        "own version.",
    ),
    Field(
        "merges_failed",
        "Conflicts a union or merge-cmd merge could not settle, each as {path, reason}: both "
        "versions are kept, as keep-both keeps them.",
    ),
    Field(
        "warnings",
        "In words, one line each: what a scan skipped or could not read, and what the sync "
        "could not do as asked (the lists above say it for scripts); a path past the cap of "
        "conflict copies is named only here.",
    ),
]

FIELDS: dict[str, list[Field]] = {
    "init": [
        Field("root", "The replica's directory."),
        Field("replica_id", "Its id (null in a dry run that would make a new one)."),
        Field("previous_replica_id", "The id it had, after --new-id.", always=False),
        Field("tree_rebuilt", "true when --rebuild made the tree again in place.", always=False),
        Field("index_set_aside", "Where --rebuild moved an unreadable index.", always=False),
        _DRY_RUN,
        Field("entries", "Entries in the index (tombstones included)."),
        Field(
            "fingerprint",
            "The root fingerprint of its tree, in hex (in a dry run that would give the "
            "replica an id, made with a stand-in id: not the one the run gives).",
        ),
        _WARNINGS,
        _STATS,
    ],
    "status": [
        Field("replica", f"The replica {_NAMED}."),
        Field("replica_id", "Its id."),
        Field("fingerprint", "The root fingerprint of its tree, in hex."),
        Field("entries", "Entries in the index (tombstones included)."),
        Field("added", "Paths this scan found new."),
        Field("modified", "Paths this scan found changed."),
        Field("deleted", "Paths this scan found deleted."),
        Field("scanned", "Entries the scan looked at."),
        Field("hashed", "Files the scan read and hashed."),
        _WARNINGS,
        _STATS,
    ],
    "diff": [
        Field("a", f"The first replica {_NAMED}."),
        Field("b", f"The second replica {_NAMED}."),
        Field("identical", "Whether they hold the same content (and nothing went unread)."),
        Field("changes", f"One object per difference, as {_DIFF_CHANGE}."),
        _WARNINGS,
        _STATS,
    ],
    "push": _TRANSFER,
    "pull": _TRANSFER,
    "sync": [
        Field("a", f"The first replica {_NAMED}."),
        Field("b", f"The second replica {_NAMED}."),
        _DRY_RUN,
        *_SYNC,
        _STATS,
    ],
    "repair": [
        Field("replicas", f"The replicas that took part {_NAMED}."),
        _DRY_RUN,
        Field(
            "syncs",
            "Each sync of a pair, as {a, b, second (a second round), events, left_alone, "
            "ignored, unresolved, merges_failed, warnings} (as sync's), or {a, b, second, error, "
            "exit_code} when it failed.",
        ),
        Field(
            "left_out",
            "Replicas that could not take part, each as {replica (named as in replicas), "
            "error, exit_code}.",
        ),
        Field(
            "identical",
            "true when every replica named took part and ended with the same root; null when "
            "that is not known (a dry run, --exclude).",
        ),
        Field(
            "roots",
            "Each replica's root fingerprint, in hex, by name: at the end (in a dry run: now; "
            "zeros for one not made yet).",
        ),
        _WARNINGS,
        _STATS,
    ],
    "conflicts": [
        Field(
            "conflicts",
            "Each conflict copy, as {path (the original), copy, writer (the replica id that "
            "wrote that version), this_replica, written (its time, UTC, as YYYYMMDDTHHMMSS), "
            "stamp_ns, size}.",
        ),
        _WARNINGS,
        _STATS,
    ],
    "resolve": [
        _DRY_RUN,
        Field(
            "done",
            "Each step, as {action (keep, merge, take or remove), path (the conflict copy, or "
            "the original kept as it is), target (the name the copy is kept as, merged into or "
            "taken for; null for the others), deletion (true: what is kept is the deletion of "
            "path, which holds no file here)}.",
        ),
        Field("failed", "The originals left as they were, each as {path, reason}."),
        _WARNINGS,
        _STATS,
    ],
    "gc": [
        Field("collected", "The tombstones collected (in a dry run: that would be), by path."),
        _DRY_RUN,
        Field("retention_days", "The retention period applied, in days."),
    ],
    "remote add": [
        Field("name", "The remote's name."),
        Field("url", "Its address."),
        Field("remote_cmd", "The command that starts merklesync there (null: the default)."),
    ],
    "remote list": [Field("remotes", "Each remote, as {name, url, remote_cmd}.")],
    "remote remove": [Field("removed", "The name of the remote removed.")],
}
