"""merklesync: keep replicas of file trees in sync."""

__version__ = "0.1.0"
