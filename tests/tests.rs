//! End-to-end tests: the real coordinator and worker binaries.
