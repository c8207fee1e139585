"""Raw throughput of the SSH transport vs the OpenSSH client, side by side.

Starts a throw-away server on 127.0.0.1 (see tests/sshd.py), then moves
``--mib`` MiB up (into ``cat > /dev/null``) and down (out of ``head -c N
/dev/zero``) with merklesync's `open_ssh` and with ``ssh`` piping, and prints
MB/s.  ``--sweep`` also tries other cipher / packet-size settings.

    python tests/bench/bench_ssh_channel.py [--mib 256] [--kind openssh|paramiko] [--sweep]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sshd import SSHServer, start_daemon

from merklesync.transport import ssh as ssh_mod

CHUNK = 1 << 20


def upload(server: SSHServer, total: int) -> float:
    t0 = time.perf_counter()
    with ssh_mod.open_ssh(server.host, None, None, "cat > /dev/null") as t:
        block = b"\0" * CHUNK
        left = total
        while left > 0:
            t.send(block if left >= CHUNK else block[:left])
            left -= CHUNK
        t.close_write()
        while t.exit_status() is None:
            time.sleep(0.001)
        assert t.exit_status() == 0
    return time.perf_counter() - t0


def download(server: SSHServer, total: int) -> float:
    t0 = time.perf_counter()
    with ssh_mod.open_ssh(server.host, None, None, f"head -c {total} /dev/zero") as t:
        got = 0
        while data := t.recv(1 << 20):
            got += len(data)
    assert got == total, got
    return time.perf_counter() - t0


def ssh_cli(server: SSHServer, total: int, up: bool, opts: tuple[str, ...] = ()) -> float:
    def argv(command: str) -> list[str]:
        base = server.ssh_argv(command)
        return [*base[:-2], *opts, *base[-2:]]

    t0 = time.perf_counter()
    if up:
        producer = subprocess.Popen(["head", "-c", str(total), "/dev/zero"], stdout=subprocess.PIPE)
        subprocess.run(argv("cat > /dev/null"), stdin=producer.stdout, check=True, env=server.env)
        producer.wait()
    else:
        subprocess.run(
            argv(f"head -c {total} /dev/zero"),
            stdout=subprocess.DEVNULL,
            check=True,
            env=server.env,
        )
    return time.perf_counter() - t0


def best(runs: int, run: Callable[[], float]) -> float:
    """Median of ``runs`` timings."""
    return statistics.median(run() for _ in range(max(1, runs)))


def mbps(total: int, seconds: float) -> str:
    return f"{total / seconds / 1e6:8.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--kind", default="openssh", choices=["openssh", "paramiko"])
    ap.add_argument("--sweep", action="store_true", help="also try other settings")
    ap.add_argument("--runs", type=int, default=3, help="repeats; the median is shown")
    args = ap.parse_args()
    total = args.mib << 20
    work = Path(tempfile.mkdtemp(prefix="ms-bench-"))
    daemon = start_daemon(args.kind, work / "sshd")
    server = SSHServer(daemon=daemon, home=work / "home")
    try:
        with server.activated():
            settings = [
                (ssh_mod.PREFERRED_CIPHERS[0], ssh_mod.WINDOW_SIZE, ssh_mod.MAX_PACKET_SIZE)
            ]
            if args.sweep:
                settings += [
                    ("aes128-ctr", 16 << 20, 128 << 10),
                    ("aes128-gcm@openssh.com", 2 << 20, 32 << 10),  # paramiko's defaults
                    ("aes128-gcm@openssh.com", 64 << 20, 128 << 10),
                    ("aes128-gcm@openssh.com", 16 << 20, 256 << 10),
                ]
            print(
                f"server: {daemon.kind}; {args.mib} MiB each way; median of {args.runs} runs;"
                " MB/s (1 MB = 10^6 bytes)"
            )
            print(f"{'client':<48} {'up':>8} {'down':>8}")
            defaults = (ssh_mod.PREFERRED_CIPHERS, ssh_mod.WINDOW_SIZE, ssh_mod.MAX_PACKET_SIZE)
            for cipher, window, packet in settings:
                ssh_mod.PREFERRED_CIPHERS = (cipher,)
                ssh_mod.WINDOW_SIZE, ssh_mod.MAX_PACKET_SIZE = window, packet
                up = best(args.runs, lambda: upload(server, total))
                down = best(args.runs, lambda: download(server, total))
                label = f"merklesync {cipher} win={window >> 20}M pkt={packet >> 10}K"
                print(f"{label:<48} {mbps(total, up)} {mbps(total, down)}")
            ssh_mod.PREFERRED_CIPHERS, ssh_mod.WINDOW_SIZE, ssh_mod.MAX_PACKET_SIZE = defaults
            if shutil.which("ssh"):
                up = best(args.runs, lambda: ssh_cli(server, total, True))
                down = best(args.runs, lambda: ssh_cli(server, total, False))
                print(f"{'OpenSSH ssh (default cipher)':<48} {mbps(total, up)} {mbps(total, down)}")
                gcm = ("-c", "aes128-gcm@openssh.com")
                up = best(args.runs, lambda: ssh_cli(server, total, True, gcm))
                down = best(args.runs, lambda: ssh_cli(server, total, False, gcm))
                print(f"{'OpenSSH ssh -c aes128-gcm':<48} {mbps(total, up)} {mbps(total, down)}")
    finally:
        daemon.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
