//! Workspace integration tests: the crates used together, as a researcher would use them.
//! The tests live in `tests/tests/`; this library is empty.
