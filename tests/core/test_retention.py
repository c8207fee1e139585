"""Tombstones are collected once every replica has seen them; a replica
away longer than the retention is refused."""

from __future__ import annotations

import time
from pathlib import Path

from merklesync import retention
from merklesync.model import Entry, EntryKind
from merklesync.replica import Replica
from tests.clirun import ms


def _pair(tmp_path: Path) -> tuple[Path, Path]:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    (a / "gone.txt").write_text("x")
    (a / "stays.txt").write_text("y")
    ms("init", a)
    assert ms("sync", a, b).code == 0
    return a, b


def _tombstones(root: Path) -> list[str]:
    with Replica.open(root) as r:
        return [e.path for e, _learned in r.index.tombstones()]


def test_tombstone_collected_once_every_known_replica_has_seen_it(tmp_path: Path) -> None:
    a, b = _pair(tmp_path)
    (a / "gone.txt").unlink()
    ms("status", a)
    assert _tombstones(a) == ["gone.txt"]
    assert ms("sync", a, b).code == 0
    assert not (b / "gone.txt").exists()
    # b has synced with a since the deletion, and b is the only other replica.
    with Replica.open(a) as r:
        assert retention.collect(r) == ["gone.txt"]
    assert _tombstones(a) == []
    # The deleted file does not come back, and the replicas still agree.
    assert ms("sync", a, b).code == 0
    assert not (a / "gone.txt").exists() and not (b / "gone.txt").exists()


def test_tombstone_kept_while_a_known_replica_has_not_seen_it(tmp_path: Path) -> None:
    a, b = _pair(tmp_path)
    c = tmp_path / "c"
    assert ms("sync", a, c).code == 0
    (c / "stays.txt").write_text("c wrote this")  # c is now a writer a knows of
    assert ms("sync", a, c).code == 0
    (a / "gone.txt").unlink()
    assert ms("sync", a, b).code == 0
    with Replica.open(a) as r:
        assert retention.collect(r) == []  # c has not synced since the deletion
    assert ms("sync", a, c).code == 0
    with Replica.open(a) as r:
        assert retention.collect(r) == ["gone.txt"]


def test_tombstone_collected_after_the_retention(tmp_path: Path) -> None:
    a, _b = _pair(tmp_path)
    c = tmp_path / "c"
    ms("sync", a, c)
    (c / "stays.txt").write_text("c")
    ms("sync", a, c)
    (a / "gone.txt").unlink()
    ms("status", a)
    later = time.time_ns() + 91 * retention.DAY_NS
    with Replica.open(a) as r:
        assert retention.collect(r, now=later, dry_run=True) == ["gone.txt"]


def test_replica_away_longer_than_retention_is_refused(tmp_path: Path) -> None:
    a, b = _pair(tmp_path)
    with Replica.open(a) as r:
        [other] = r.index.peers()
        r.index.remember_peer(other, time.time_ns() - 100 * retention.DAY_NS)
    r2 = ms("sync", a, b)
    assert r2.code == 3
    assert "longer than the tombstone retention (90 days)" in r2.err
    assert r2.err.startswith(f"merklesync: error: {b}: replica {other} last ran with {a} 100")
    assert ms("sync", a, b, "--allow-stale").code == 0
    assert ms("sync", a, b).code == 0  # the successful run refreshed the record


def test_gc_command_sets_the_retention_and_collects(tmp_path: Path) -> None:
    a, b = _pair(tmp_path)
    (a / "gone.txt").unlink()
    assert ms("sync", a, b).code == 0
    r = ms("gc", a, "--retention-days", "30", "--dry-run", "--json")
    assert r.code == 0
    assert r.json() == {"collected": ["gone.txt"], "dry_run": True, "retention_days": 30}
    assert _tombstones(a) == ["gone.txt"]  # a dry run changes nothing, the setting neither
    assert ms("gc", a, "-n").lines() == [
        "D gone.txt",
        "would collect 1 tombstone (retention 90 days)",
    ]
    assert ms("gc", a, "--retention-days", "30").lines() == [
        "collected 1 tombstone (retention 30 days)"
    ]
    r = ms("gc", a, "--retention-days", "99999999999999999999")  # no traceback: a usage error
    assert r.code == 2 and "not in the range 1<=x<=36500" in r.err
    assert _tombstones(a) == []
    assert ms("gc", a).lines() == ["collected 0 tombstones (retention 30 days)"]


def test_tombstone_passed_on_is_kept_until_every_peer_had_it(tmp_path: Path) -> None:
    """C deletes; A and B sync; then A learns of the deletion from C: A must
    keep the tombstone until B has synced with A again, or B would bring
    the file back; and until C has too, in a run that began after A learned
    of it (the run that brought it proves nothing new)."""
    a, b = _pair(tmp_path)
    c = tmp_path / "c"
    assert ms("sync", a, c).code == 0
    (c / "gone.txt").unlink()
    ms("status", c)
    assert ms("sync", a, b).code == 0
    assert ms("sync", a, c).code == 0  # a learns of the deletion now
    with Replica.open(a) as r:
        assert retention.collect(r) == []
    assert ms("sync", a, b).code == 0
    assert not (b / "gone.txt").exists() and not (a / "gone.txt").exists()
    with Replica.open(a) as r:
        assert retention.collect(r) == []
    assert ms("sync", a, c).code == 0
    with Replica.open(a) as r:
        assert retention.collect(r) == ["gone.txt"]
    assert ms("sync", a, b).code == 0
    assert not (a / "gone.txt").exists()


def test_a_run_with_exclude_does_not_count_as_a_full_sync(tmp_path: Path) -> None:
    a, b = _pair(tmp_path)
    with Replica.open(a) as r:
        before = r.index.peers()
    assert ms("sync", a, b, "--exclude", "*.txt").code == 0
    with Replica.open(a) as r:
        assert r.index.peers() == before


def test_a_tombstone_passed_on_is_not_sent_back_and_forth(tmp_path: Path) -> None:
    """B deletes what A had from it; B tells C, which never had the file.
    C keeps the tombstone after that run, so A, which holds it too, has
    nothing to send C: after the round, syncs are quiet."""
    a, b, c = (tmp_path / n for n in "abc")
    for root in (a, b, c):
        root.mkdir()
        assert ms("init", root).code == 0
    (b / "b.txt").write_text("hi")
    assert ms("sync", a, b).code == 0
    (b / "b.txt").unlink()
    for x, y in ((a, b), (b, c), (a, b)):
        assert ms("sync", x, y).code == 0
    assert ms("sync", a, c, "--json").json()["events"] == []


def test_a_tombstone_given_a_newer_version_keeps_when_it_was_learned(tmp_path: Path) -> None:
    """The deletion was known since then: a tombstone replaced by one of a
    newer or merged version (the source catching up after a push) does not
    start its retention again; a tombstone over a live entry starts it."""
    a = tmp_path / "a"
    a.mkdir()
    (a / "f").write_text("x")
    ms("init", a)
    (a / "f").unlink()
    ms("status", a)
    with Replica.open(a) as r:
        [(tomb, first)] = r.index.tombstones()
        r.index.learned_at = first + 10**12
        r.index.put(tomb.with_version(tomb.vv.bump("other")), None, tomb)
        r.index.commit()
        [(newer, learned)] = r.index.tombstones()
        assert newer.vv != tomb.vv and learned == first
        live = newer.with_version(newer.vv.bump("other"))
        live = Entry(live.path, EntryKind.FILE, live.vv, stamp=live.stamp)
        r.index.put(live, None, newer)
        r.index.put(live.tombstone(live.vv.bump("other"), live.stamp + 1), None, live)
        r.index.commit()
        [(_again, relearned)] = r.index.tombstones()
        assert relearned == first + 10**12


def test_a_run_recorded_by_a_clock_running_ahead_proves_nothing(tmp_path: Path) -> None:
    # a and b synced while a's clock was two days ahead (then set right):
    # that record says nothing of a deletion learned since.
    a, b = _pair(tmp_path)
    with Replica.open(a) as r:
        [other] = r.index.peers()
        r.index.remember_peer(other, time.time_ns() + 2 * retention.DAY_NS)
    (a / "gone.txt").unlink()
    ms("status", a)
    with Replica.open(a) as r:
        assert retention.collect(r) == []  # b has not seen the deletion
    assert ms("sync", a, b).code == 0
    assert not (a / "gone.txt").exists() and not (b / "gone.txt").exists()
    with Replica.open(a) as r:
        assert retention.collect(r) == ["gone.txt"]  # now it has


def test_away_just_longer_than_the_retention_is_refused(tmp_path: Path) -> None:
    """The limit to the half day: 90 days and a half away is too long, 89
    and a half is not."""
    from merklesync.retention import StaleReplica

    a, _ = _pair(tmp_path)
    with Replica.open(a) as r:
        [other] = r.index.peers()
        last = r.index.peers()[other]
        half = retention.DAY_NS // 2
        days = retention.retention_days(r)
        retention.check_not_stale(r, other, now=last + days * retention.DAY_NS - half)
        try:
            retention.check_not_stale(r, other, now=last + days * retention.DAY_NS + half)
        except StaleReplica as exc:
            assert "90 days ago" in exc.message
        else:
            raise AssertionError("not refused")


def test_a_dry_run_sync_records_nothing(tmp_path: Path) -> None:
    """Nor who has seen what, nor collects a tombstone: only a real run may."""
    a, b = _pair(tmp_path)
    (a / "gone.txt").unlink()
    with Replica.open(a) as r:
        peers_before = r.index.peers()
    assert ms("sync", a, b, "--dry-run").code == 0
    with Replica.open(a) as r:
        assert r.index.peers() == peers_before
    assert _tombstones(a) == ["gone.txt"]


def test_a_writer_known_only_from_the_vectors_must_see_a_deletion_too(tmp_path: Path) -> None:
    """c syncs with b only; a learns of c from a version c wrote, which came
    through b. A deletion on a is kept until c too has had it (by way of b:
    a has no record of c ever syncing, so until the retention)."""
    a, b = _pair(tmp_path)
    c = tmp_path / "c"
    assert ms("sync", b, c).code == 0
    (c / "stays.txt").write_text("c wrote this")
    assert ms("sync", b, c).code == 0
    assert ms("sync", a, b).code == 0  # a now holds c's version
    (a / "gone.txt").unlink()
    assert ms("sync", a, b).code == 0
    with Replica.open(a) as r:
        assert retention.collect(r) == []


def test_a_lone_replica_collects_its_tombstones(tmp_path: Path) -> None:
    """No other replica is known: nobody is left to tell of the deletion."""
    a = tmp_path / "a"
    a.mkdir()
    (a / "gone.txt").write_text("x")
    ms("init", a)
    (a / "gone.txt").unlink()
    ms("status", a)
    with Replica.open(a) as r:
        assert retention.collect(r, dry_run=True) == ["gone.txt"]


def test_gc_retention_days_given_is_the_one_used(tmp_path: Path) -> None:
    a, _b = _pair(tmp_path)
    c = tmp_path / "c"
    assert ms("sync", a, c).code == 0
    (c / "stays.txt").write_text("c")
    assert ms("sync", a, c).code == 0  # c: a writer a knows of, not told of the deletion
    (a / "gone.txt").unlink()
    ms("status", a)
    later = time.time_ns() + 40 * retention.DAY_NS
    with Replica.open(a) as r:
        assert retention.collect(r, now=later, dry_run=True) == []  # 90 days: not yet
        assert retention.collect(r, now=later, dry_run=True, days=30) == ["gone.txt"]


def test_the_configured_retention_decides_who_is_stale(tmp_path: Path) -> None:
    a, b = _pair(tmp_path)
    with Replica.open(a) as r:
        retention.set_retention_days(r, 30)
        [other] = r.index.peers()
        r.index.remember_peer(other, time.time_ns() - 40 * retention.DAY_NS)
        r.index.commit()
    refused = ms("sync", a, b)
    assert refused.code == 3 and "(30 days)" in refused.err, refused.err


def test_a_run_collects_by_itself_once_a_day(tmp_path: Path) -> None:
    """Without `gc`: a run collects the tombstones every known replica has
    seen, at most once a day."""
    a, b = _pair(tmp_path)
    (a / "gone.txt").unlink()
    assert ms("sync", a, b).code == 0  # b learns of the deletion
    with Replica.open(a) as r:
        r.index.set_meta("last_gc", 0)  # a day and more since the last collection
        r.index.commit()
    assert ms("sync", a, b).code == 0
    assert _tombstones(a) == []
    (a / "stays.txt").unlink()
    assert ms("sync", a, b).code == 0 and ms("sync", a, b).code == 0
    assert "stays.txt" in _tombstones(a)  # collected today already: kept for now


def test_gc_says_one_day_not_one_days(tmp_path: Path) -> None:
    a, _b = _pair(tmp_path)
    assert ms("gc", a, "--retention-days", "1", "--dry-run").lines() == [
        "would collect 0 tombstones (retention 1 day)"
    ]


def test_runs_that_leave_paths_out_keep_a_replica_from_being_away(tmp_path: Path) -> None:
    """Replicas whose every run leaves something out (here --exclude; an
    ignore rule of one side's, a file a scan skips) are in contact all the
    same: months of such runs do not get them refused as away, on either
    side; each run is recorded as a contact, not as a complete one."""
    a, b = _pair(tmp_path)
    for root in (a, b):
        with Replica.open(root) as r:
            [other] = r.index.peers()
            r.index.remember_peer(other, time.time_ns() - 80 * retention.DAY_NS)
            r.index.commit()
    before = {root: _peers(root) for root in (a, b)}
    assert ms("sync", a, b, "--exclude", "*.log").code == 0
    assert ms("push", a, b, "--exclude", "*.log").code == 0
    later = time.time_ns() + 20 * retention.DAY_NS  # 100 days after the last complete run
    for root in (a, b):
        assert _peers(root) == before[root]  # no proof of a complete run
        with Replica.open(root) as r:
            [other] = r.index.contacts()
            retention.check_not_stale(r, other, now=later)


def test_a_tombstone_a_replica_in_contact_has_not_seen_outlives_the_retention(
    tmp_path: Path,
) -> None:
    """A deletion the runs left out (excluded) never reached b, which still
    holds the file: while b is in contact, the retention alone does not
    collect it (b's file would come back once the runs take it in); once b
    is away longer than the retention, it is collected, and b refused."""
    a, b = _pair(tmp_path)
    (a / "gone.txt").unlink()
    assert ms("sync", a, b, "--exclude", "gone.txt").code == 0
    assert (b / "gone.txt").exists()
    later = time.time_ns() + 91 * retention.DAY_NS
    with Replica.open(a) as r:
        [other] = r.index.peers()
        r.index.remember_contact(other, later - retention.DAY_NS)  # runs went on since
        assert retention.collect(r, now=later, dry_run=True) == []
        r.index.remember_contact(other, later - 91 * retention.DAY_NS)  # away since
        assert retention.collect(r, now=later, dry_run=True) == ["gone.txt"]
    assert ms("sync", a, b).code == 0  # complete now: the deletion reached b
    assert not (b / "gone.txt").exists()


def _peers(root: Path) -> dict[str, int]:
    with Replica.open(root) as r:
        return r.index.peers()


def test_a_contact_holds_a_tombstone_back_for_one_more_retention_at_most(
    tmp_path: Path,
) -> None:
    """Runs that always leave something out never prove anything: their
    contact keeps a tombstone past the retention, not for ever."""
    a, b = _pair(tmp_path)
    (a / "gone.txt").unlink()
    assert ms("sync", a, b, "--exclude", "gone.txt").code == 0
    with Replica.open(a) as r:
        [other] = r.index.peers()
        for days in (91, 179, 181):
            later = time.time_ns() + days * retention.DAY_NS
            r.index.remember_contact(other, later - retention.DAY_NS)
            expected = ["gone.txt"] if days > 180 else []
            assert retention.collect(r, now=later, dry_run=True) == expected, days


def test_a_complete_run_stamped_ahead_does_not_hold_tombstones_back(tmp_path: Path) -> None:
    """A record of a complete run from a clock since set back proves nothing,
    and is no contact either: the retention collects as it did."""
    a, _b = _pair(tmp_path)
    (a / "gone.txt").unlink()
    ms("status", a)
    with Replica.open(a) as r:
        [other] = r.index.peers()
        r.index.remember_peer(other, time.time_ns() + 400 * retention.DAY_NS)
        later = time.time_ns() + 100 * retention.DAY_NS
        assert retention.collect(r, now=later, dry_run=True) == ["gone.txt"]


def test_runs_that_leave_paths_out_collect_what_is_due_by_themselves(tmp_path: Path) -> None:
    """Replicas whose runs always leave something out still collect, once a
    day, the tombstones older than twice the retention: no gc needed."""
    a, b = _pair(tmp_path)
    (a / "gone.txt").unlink()
    assert ms("sync", a, b, "--exclude", "*.log").code == 0
    with Replica.open(a) as r:
        old = time.time_ns() - 200 * retention.DAY_NS
        r.index.conn.execute("UPDATE entries SET learned_ns = ? WHERE path = 'gone.txt'", (old,))
        r.index.set_meta("last_gc", 0)
        r.index.commit()
    assert _tombstones(a) == ["gone.txt"]
    assert ms("sync", a, b, "--exclude", "*.log").code == 0
    assert _tombstones(a) == []
