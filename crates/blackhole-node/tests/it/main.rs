//! Integration tests of the `blackhole-node` binary: real processes
//! driven through the CLI and the control API.

mod cli;
