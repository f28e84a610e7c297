//! `cargo xtask bench`: benchmarks. So far the criterion micro-benchmarks
//! of our own hot code (benches/); arguments are passed to criterion (for
//! example a filter: `cargo xtask bench yamux_inbound`).

use std::process::Command;

pub(crate) fn run(args: &[String]) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    crate::run(
        Command::new(cargo)
            .args(["bench", "-p", "blackhole-benches", "--"])
            .args(args)
            .current_dir(crate::root()),
    )?;
    eprintln!(
        "reports: {}",
        crate::root()
            .join("target/criterion/report/index.html")
            .display()
    );
    Ok(())
}
