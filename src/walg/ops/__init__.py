"""One use case per command. Operations return results; they never print or exit."""
