"""Pure logic: no I/O, no clock, no environment. Everything here is unit-testable on values."""
