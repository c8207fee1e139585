"""What the command line does with careless input: one line on stderr,
`merklesync: error: ...`, the documented exit code, never a traceback (and
with --json one object on stdout, errors and Ctrl-C too). Run as a user
runs it: a process of its own."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.treegen import make_tree


def run(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "merklesync", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        check=False,
    )


def one_error_line(r: subprocess.CompletedProcess[str]) -> str:
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("merklesync: error: "), r.stderr
    return lines[0]


@pytest.fixture
def replica(tmp_path: Path) -> Path:
    root = tmp_path / "r"
    root.mkdir()
    (root / "f").write_text("x")
    assert run("init", "-q", root).returncode == 0
    return root


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["push", "--bogus", "a", "b"], "No such option '--bogus'"),
        (["sync", "--on-conflict", "bogus", "a", "b"], "'bogus' is not one of"),
        (["status", "x:/r", "--timeout", "nan"], "--timeout': not a number"),
        (["status", "x:/r", "--timeout", "inf"], "is not in the range"),
        (["gc", "--retention-days", "-1"], "is not in the range"),
    ],
)
def test_a_bad_argument_is_one_line(args: list[str], said: str) -> None:
    r = run(*args)
    assert r.returncode == 2
    line = one_error_line(r)
    assert said in line and "--help" in line
    r = run(*args, "--json")
    assert r.returncode == 2 and json.loads(r.stdout)["exit_code"] == 2


def test_a_bad_exclude_pattern_is_one_line(replica: Path, tmp_path: Path) -> None:
    r = run("push", replica, tmp_path / "b", "--exclude", "[z-a]", "--json")
    assert r.returncode == 2
    assert "bad pattern" in one_error_line(r)
    assert json.loads(r.stdout)["exit_code"] == 2


def test_a_bad_pattern_in_an_ignore_file_holds_no_rules(tmp_path: Path) -> None:
    root = tmp_path / "ig"
    root.mkdir()
    (root / "f").write_text("x")
    (root / ".merklesyncignore").write_text("[z-a]\n")
    r = run("init", root, "--json")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert json.loads(r.stdout)["entries"] == 2


def test_a_symlink_loop_as_a_replica_is_one_line(tmp_path: Path) -> None:
    os.symlink(tmp_path / "L2", tmp_path / "L1")
    os.symlink(tmp_path / "L1", tmp_path / "L2")
    for args in (["status", tmp_path / "L1"], ["init", tmp_path / "L1"]):
        r = run(*args)
        assert r.returncode == 5
        assert "Symlink loop" in one_error_line(r)


def test_a_scan_that_skips_a_file_exits_1(replica: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    assert run("push", "-q", replica, copy).returncode == 0
    os.mkfifo(replica / "fifo")
    for args in (["status", replica], ["init", replica], ["diff", replica, copy]):
        r = run(*args)
        assert r.returncode == 1, r.stderr
        assert "fifo: not a file, directory or link; skipped" in r.stderr


def test_quiet_still_says_why_a_run_exits_1(replica: Path, tmp_path: Path) -> None:
    """Cron mails what is printed: under --quiet, what was skipped or left
    alone is still said; a conflict settled by its policy is not."""
    other = tmp_path / "other"
    assert run("push", "-q", replica, other).returncode == 0
    os.mkfifo(replica / "fifo")
    (replica / "f").write_text("edited here")
    (other / "f").write_text("edited there")
    pushed = run("push", "-q", replica, other)
    assert pushed.returncode == 1
    assert "fifo: not a file, directory or link; skipped" in pushed.stderr
    assert "left alone: f: conflict" in pushed.stderr
    synced = run("sync", "-q", "--exclude", "fifo", replica, other)
    assert synced.returncode == 0 and synced.stderr == ""  # the conflict: kept both


def test_ctrl_c_while_json_is_written_adds_no_second_document(tmp_path: Path) -> None:
    """The reader is slow: the document is being written when Ctrl-C comes.
    It stops there (exit 130); no error object follows the part written."""
    import select

    src = tmp_path / "src"
    make_tree(src, files=3000, dirs=30, min_size=1, max_size=8, seed=1)
    assert run("init", "-q", src).returncode == 0
    proc = subprocess.Popen(
        [sys.executable, "-m", "merklesync", "push", "--dry-run", "--json", src, tmp_path / "d"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        assert select.select([proc.stdout], [], [], 60)[0]  # the document has begun
        time.sleep(0.5)  # and fills the pipe: the writer waits for the reader
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert out.startswith(b'{"changes": [') and b'"error"' not in out


def test_what_would_break_the_line_is_shown_escaped(tmp_path: Path) -> None:
    """A newline in a name typed, click's lists of choices: one line still."""
    r = run("status", tmp_path / "no\nsuch")
    assert one_error_line(r).endswith("no\\nsuch")
    r = run("resolve", "f.txt")
    assert "Choose from: local, remote, both, union" in one_error_line(r)


def test_remote_list_of_a_remote_address_is_a_usage_error() -> None:
    r = run("remote", "list", "--replica", "ssh://127.0.0.1:1/x")
    assert r.returncode == 2
    assert "ssh://127.0.0.1:1/x is a remote replica's address: remote list" in one_error_line(r)


def test_a_lock_file_that_is_no_file_is_one_line(replica: Path) -> None:
    lock = replica / ".merklesync" / "lock"
    lock.unlink()
    os.mkfifo(lock)
    r = run("status", replica)
    assert r.returncode == 5
    assert f"cannot use lock file {lock}" in one_error_line(r)


def test_output_closed_early_is_no_error(replica: Path, tmp_path: Path) -> None:
    for i in range(3000):
        (replica / f"n{i}").write_text("n")
    (tmp_path / "other").mkdir()
    assert run("init", "-q", tmp_path / "other").returncode == 0
    proc = subprocess.Popen(
        [sys.executable, "-m", "merklesync", "diff", replica, tmp_path / "other"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.readline()
    proc.stdout.close()  # as `| head -1` does
    assert proc.wait(60) == 2
    assert "error" not in proc.stderr.read()


def test_ctrl_c_with_json_is_one_object(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src, files=3000, dirs=30, seed=6, max_size=1500)
    assert run("init", "-q", src).returncode == 0
    dst = tmp_path / "dst"
    proc = subprocess.Popen(
        [sys.executable, "-m", "merklesync", "push", "--json", src, dst],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        # At the first file placed (counting them all, each time, let a
        # loaded machine finish the push first).
        if dst.exists() and next(dst.rglob("f*"), None) is not None:
            os.killpg(proc.pid, signal.SIGINT)
            break
        time.sleep(0.01)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert json.loads(out) == {"error": "interrupted", "exit_code": 130}
    assert err.strip() == "merklesync: interrupted"


def test_a_replica_too_deep_for_its_index_is_refused_before_anything_is_made(
    replica: Path, tmp_path: Path
) -> None:
    top = tmp_path / "deep"
    dst = top.joinpath(*["g" * 100] * 5)  # its index's path: over the 507 bytes SQLite takes
    r = run("push", replica, dst)
    assert r.returncode == 5
    assert "too deep for a replica" in one_error_line(r)
    assert not top.exists()


def test_a_name_that_would_break_or_reorder_a_line_is_shown_escaped(tmp_path: Path) -> None:
    """U+2028 (a line break to str.splitlines) and a right-to-left override
    in names: one line each in plain output, shown as escapes; exact in
    --json."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    names = ["line\u2028sep", "fake\u202etxt.exe", "caf\u00e9"]
    for name in names:
        (a / name).write_text(name)
    b.mkdir()
    assert run("init", a).returncode == 0 and run("init", b).returncode == 0
    r = run("diff", a, b)
    assert r.returncode == 1
    lines = r.stdout.splitlines()
    assert sorted(lines) == ["A caf\u00e9", "A fake\\u202etxt.exe", "A line\\u2028sep"], lines
    changes = json.loads(run("diff", a, b, "--json").stdout)["changes"]
    assert sorted(c["path"] for c in changes) == sorted(names)


@pytest.mark.parametrize(
    "args",
    [("watch",), ("gc",), ("conflicts",), ("remote", "list", "--replica"), ("status",)],
)
def test_a_missing_replica_directory_is_exit_5_for_every_command(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    r = run(*args, tmp_path / "nosuch")
    assert r.returncode == 5, r.stderr
    assert "no such directory" in one_error_line(r)


def test_a_mistyped_name_inside_a_replica_is_no_such_directory(replica: Path) -> None:
    """As git's "does not appear to be a git repository": not a complaint
    that one replica would lie inside the other."""
    for command in ("diff", "pull"):
        r = run(command, "orign", cwd=replica)
        assert r.returncode == 5, (command, r.stderr)
        line = one_error_line(r)
        assert "no such directory (nor remote): " in line and line.endswith("/orign"), line


def test_a_mistyped_name_to_push_to_inside_a_replica_says_no_remote(replica: Path) -> None:
    for command in ("push", "sync"):
        r = run(command, "orign", cwd=replica)
        assert r.returncode == 2, (command, r.stderr)
        line = one_error_line(r)
        assert line.endswith(
            "is inside the source " + str(replica) + " (and no remote is named 'orign')"
        ), line


@pytest.mark.parametrize(
    ("a", "b", "said"),
    [
        ("mstest:n1", "mstest:n1/inner", "the destination mstest:n1/inner is inside the source"),
        ("mstest:n1/inner", "mstest:n1", "the source mstest:n1/inner is inside the destination"),
        ("mstest:n1", "mstest:./n1/", "source and destination are the same replica"),
        ("ssh://u@h:2222/srv/a", "ssh://u@h:2222/srv/a/b", "is inside the source"),
        ("mstest:", "mstest:data", "is inside the source"),  # the remote home, and in it
        ("mstest:~/a", "mstest:a/b", "is inside the source"),  # ~/ is the home too
        ("mstest:~", "ssh://mstest/~/a", "is inside the source"),
    ],
)
def test_remote_replicas_on_one_host_must_be_apart(a: str, b: str, said: str) -> None:
    """Checked before anything connects (nothing listens for these hosts)."""
    for command in ("push", "sync", "diff"):
        r = run(command, a, b, "--rsh", "false")
        assert r.returncode == 2, (command, r.stderr)
        assert said in one_error_line(r), r.stderr


def test_repair_names_remote_replicas_on_one_host_once() -> None:
    r = run("repair", "/tmp", "h:x", "h:x/y", "--rsh", "false")
    assert r.returncode == 2
    assert "the replica h:x/y is inside the replica h:x" in one_error_line(r)


def test_remote_replicas_on_other_hosts_or_paths_are_apart() -> None:
    """Distinct by host, user, port or path: they get as far as connecting
    (--rsh false: the connection fails, exit 6)."""
    for b in ("other:n1", "u@mstest:n1", "ssh://mstest:2/~/n1", "mstest:n10", "mstest:/n1"):
        r = run("diff", "mstest:n1", b, "--rsh", "false")
        assert r.returncode == 6, (b, r.stderr)


def test_a_remote_whose_directory_is_missing_is_named_by_its_path(replica: Path) -> None:
    """`pull bk` where the remote bk is a local path that is gone: the path
    is missing, not the remote."""
    assert run("remote", "add", "bk", "../bk", cwd=replica).returncode == 0
    r = run("pull", "bk", cwd=replica)
    assert r.returncode == 5, r.stderr
    line = one_error_line(r)
    assert line.endswith(f"no such directory: {replica.parent / 'bk'}"), line


@pytest.mark.parametrize("command", ["init", "gc", "conflicts", "watch"])
def test_a_command_for_this_machine_refuses_a_remote_address(
    command: str, replica: Path, tmp_path: Path
) -> None:
    """Not taken for a local directory named host:path (init made one)."""
    for spec in ("mstest:newinit", "ssh://mstest/srv/x"):
        r = run(command, spec, cwd=tmp_path)
        assert r.returncode == 2, (command, spec, r.stderr)
        assert f"{spec} is a remote replica's address: {command} works on a replica" in (
            one_error_line(r)
        )
    assert not (tmp_path / "mstest:newinit").exists()
    assert run("remote", "add", "origin", "mstest:x", cwd=replica).returncode == 0
    r = run(command, "origin", cwd=replica)
    assert r.returncode == 2, r.stderr
    assert "origin is the name of a remote" in one_error_line(r)


def test_init_of_a_local_directory_with_a_colon_in_its_name(tmp_path: Path) -> None:
    r = run("init", "./odd:name", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "odd:name" / ".merklesync").is_dir()


def test_a_directory_inside_a_replica_is_named_as_such(tmp_path: Path) -> None:
    """A directory of a replica, named where a replica is meant: the error
    names the replica around it, and does not suggest making another one
    there (it would hold the same files twice)."""
    (tmp_path / "a" / "d").mkdir(parents=True)
    assert run("init", "-q", tmp_path / "a").returncode == 0
    assert run("init", "-q", tmp_path / "b").returncode == 0
    inside = tmp_path / "a" / "d"
    for args in (("status", inside), ("diff", inside, tmp_path / "b"), ("sync", inside, "b")):
        r = run(*args, cwd=tmp_path)
        assert r.returncode == 3, r.stderr
        assert r.stderr == (
            f"merklesync: error: {inside} is inside the replica {tmp_path / 'a'}, "
            f"not one itself: name {tmp_path / 'a'}\n"
        )
    r = run("status", tmp_path, cwd=tmp_path)  # no replica around it: one may be made
    assert r.returncode == 3 and f"(run `merklesync init {tmp_path}`)" in r.stderr, r.stderr


def test_a_destination_is_made_but_not_its_missing_parents(tmp_path: Path) -> None:
    """As rsync: the last directory of a destination is made, a missing
    parent is an error (a backup disk not mounted must not become a tree
    on the root file system)."""
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "f").write_text("x")
    assert run("init", "-q", tmp_path / "a").returncode == 0
    deep = tmp_path / "mnt" / "backup" / "a"
    a = tmp_path / "a"
    for args in (("push", a, deep), ("sync", a, deep), ("push", "-n", a, deep)):
        r = run(*args)
        assert r.returncode == 5, r.stderr
        assert r.stderr == (
            f"merklesync: error: cannot create {deep}: no such directory: "
            f"{deep.parent} (make it first)\n"
        )
        assert not (tmp_path / "mnt").exists()
    (tmp_path / "afile").write_text("a file")
    r = run("push", a, tmp_path / "afile" / "x")
    assert r.returncode == 5, r.stderr
    assert r.stderr == (
        f"merklesync: error: cannot create {tmp_path / 'afile' / 'x'}: "
        f"{tmp_path / 'afile'} is not a directory\n"
    )
    assert run("push", tmp_path / "a", tmp_path / "b").returncode == 0
    assert (tmp_path / "b" / "f").read_text() == "x"
