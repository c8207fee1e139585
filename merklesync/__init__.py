"""merklesync: keep replicas of file trees in sync."""

__version__ = "0.3.0"
