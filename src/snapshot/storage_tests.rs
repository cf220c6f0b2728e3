//! Unit tests of the snapshot storage.
