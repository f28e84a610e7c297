//! Workspace-level integration tests, one binary (link time dominates).

mod interop_js;
mod layers;
mod matrix;
mod support;
