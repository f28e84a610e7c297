//! Workspace-level integration tests, one binary (link time dominates).

// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod dashboard;
mod dht;
mod dns;
mod idle;
mod interop_js;
mod layers;
mod matrix;
mod nat;
mod ping;
mod pubsub;
mod rendezvous;
mod rpc;
mod support;
