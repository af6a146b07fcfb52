"""Tar members in WAL-G's shape: writing partitions, and reading them back safely."""
