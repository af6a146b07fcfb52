"""Object storage: the contract every backend keeps, the backends, and wrappers around them."""
