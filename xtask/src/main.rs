//! `cargo xtask <command>`: project automation (see `cargo xtask help`).

mod bench;
mod http;
mod lab;
mod net;
mod pubsub;
mod report;
mod rng;
mod rpc;
mod setup;
mod stats;
mod test_net;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

const HELP: &str = "\
cargo xtask <command>

commands:
  test-net  run a network of real nodes and its scenarios (cargo xtask test-net --help)
  setup     install what the interop tests need (npm ci in tests/interop/js)
  bench     run the criterion micro-benchmarks (benches/), results under target/criterion
  help      this text
";

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let cmd = args.next().unwrap_or_else(|| "help".into());
    let rest: Vec<String> = args.collect();
    match cmd.as_str() {
        "setup" => setup::run(&rest),
        "bench" => bench::run(&rest),
        "test-net" => test_net::run(&rest),
        "help" | "--help" | "-h" => {
            print!("{HELP}");
            Ok(())
        }
        other => anyhow::bail!("unknown command {other:?}\n\n{HELP}"),
    }
}

/// The workspace root. `cargo run` (and so `cargo xtask`) says where the
/// manifest is at run time; the path compiled in is only a fallback, since
/// cargo reuses a build of the same sources made in another checkout that
/// shares the target directory (CI's clone and a developer's, say).
pub(crate) fn root() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Runs `cmd`, failing with its command line if it fails.
pub(crate) fn run(cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("$ {cmd:?}");
    let status = cmd
        .status()
        .map_err(|e| anyhow::anyhow!("cannot run {cmd:?}: {e}"))?;
    anyhow::ensure!(status.success(), "{cmd:?} failed with {status}");
    Ok(())
}
