//! The NAT lab (`cargo xtask test-net --lab nat` runs the same code): real
//! node processes in network namespaces behind nftables NAT routers.
//!
//! Needs root, iproute2, nftables and miniupnpd-nftables (`.ci/run`
//! installs them). Without them the test says why and passes, unless
//! BLACKHOLE_REQUIRE_LAB=1 (set by CI).

#[path = "../../../../xtask/src/lab.rs"]
mod lab;

#[test]
fn nat_lab_reachability_nat_type_relay_hole_punching_upnp() {
    let missing = lab::missing();
    if !missing.is_empty() {
        let msg = format!("NAT lab skipped: it needs {}", missing.join(", "));
        if std::env::var("BLACKHOLE_REQUIRE_LAB").as_deref() == Ok("1") {
            panic!("{msg} (BLACKHOLE_REQUIRE_LAB=1)");
        }
        eprintln!("{msg}");
        return;
    }
    // Cargo says where the package is at run time; the compiled-in path is a
    // fallback (a binary built in another checkout may be reused).
    let root = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into())
        .join("../..");
    let dir = tempfile::tempdir().unwrap();
    let out = lab::run(
        &root.join("xtask/lab/nat-lab.sh"),
        std::path::Path::new(env!("CARGO_BIN_EXE_blackhole-node")),
        dir.path(),
    )
    .unwrap();
    let failed: Vec<String> = out
        .checks
        .iter()
        .filter(|c| !c.pass)
        .map(|c| format!("{}: {}", c.name, c.detail))
        .collect();
    assert!(
        out.passed(),
        "NAT lab checks failed:\n{}",
        failed.join("\n")
    );
    // The node logs stay with the temporary directory; keep them on failure
    // by setting BLACKHOLE_KEEP_LAB=1.
    if std::env::var("BLACKHOLE_KEEP_LAB").as_deref() == Ok("1") {
        eprintln!("lab data kept in {}", dir.keep().display());
    }
}
