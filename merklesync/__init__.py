"""merklesync: keep replicas of file trees and keyed datasets in sync."""

__version__ = "0.1.0"
