//! Integration tests of the `blackhole-node` binary: real processes
//! driven through the CLI and the control API.

// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cli;
mod mdns;
mod nat_lab;
