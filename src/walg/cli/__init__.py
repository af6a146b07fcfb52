"""Command line: parsing, rendering and the mapping of errors to exit codes."""
