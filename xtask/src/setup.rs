//! `cargo xtask setup`: install the js-libp2p interop peer's dependencies.

use std::process::Command;

pub(crate) fn run(args: &[String]) -> anyhow::Result<()> {
    anyhow::ensure!(args.is_empty(), "setup takes no arguments");
    let dir = crate::root().join("tests/interop/js");
    crate::run(
        Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir),
    )?;
    let node = dir.join("node_modules/.bin/node");
    anyhow::ensure!(
        node.exists(),
        "npm ci did not install Node 22 at {}",
        node.display()
    );
    eprintln!("interop peer ready: {}", node.display());
    Ok(())
}
