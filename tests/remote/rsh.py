"""A stand-in for ssh in tests: ``rsh.py [-l USER] [-p PORT] HOST COMMAND``
runs COMMAND here through /bin/sh, as sshd would on HOST (the CLI's
``--rsh``, like rsync's ``-e``)."""

import os
import sys

args = sys.argv[1:]
while args and args[0] in ("-l", "-p"):
    args = args[2:]
if len(args) != 2:
    sys.exit("usage: rsh.py [-l USER] [-p PORT] HOST COMMAND")
os.execv("/bin/sh", ["sh", "-c", "exec " + args[1]])
