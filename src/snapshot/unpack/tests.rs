//! Unit tests of the unpack scheduler.
