//! The layering rule: a crate never depends on a crate above it, and
//! nothing under `crates/` depends on `blackhole-node`.
//!
//! The order is written down here and in ARCHITECTURE.md. A crate may
//! depend only on crates of a strictly lower rank. A new crate must be
//! added to `ORDER` or this test fails.

use std::process::Command;

/// Every layer crate with its rank, bottom-up.
const ORDER: &[(&str, u32)] = &[
    ("blackhole-metrics", 0),
    ("blackhole-security", 1),
    ("blackhole-mux", 2),
    ("blackhole-transport", 3),
    ("blackhole-discovery", 4),
    ("blackhole-overlay", 5),
    ("blackhole-pubsub", 6),
    ("blackhole-rpc", 6),
    ("blackhole-nat", 6),
    ("blackhole-nat", 6),
    ("blackhole-node", 9),
];

fn rank(name: &str) -> Option<u32> {
    ORDER.iter().find(|(n, _)| *n == name).map(|(_, r)| *r)
}

#[test]
fn crates_only_depend_downwards() {
    let out = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(crate::support::manifest_dir().join(".."))
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut checked = 0;
    let mut violations = Vec::new();
    for package in meta["packages"].as_array().unwrap() {
        let name = package["name"].as_str().unwrap();
        let manifest = package["manifest_path"].as_str().unwrap();
        if !manifest.contains("/crates/") {
            continue; // xtask, tests and benches are users, not layers.
        }
        let Some(own) = rank(name) else {
            violations.push(format!(
                "{name} is not in the layer order (tests/it/layers.rs, ARCHITECTURE.md)"
            ));
            continue;
        };
        assert!(
            manifest.ends_with(&format!("/crates/{name}/Cargo.toml")),
            "{name}: directory must be named as the crate"
        );
        checked += 1;
        for dep in package["dependencies"].as_array().unwrap() {
            let dep_name = dep["name"].as_str().unwrap();
            if !dep_name.starts_with("blackhole-") {
                continue;
            }
            match rank(dep_name) {
                Some(r) if r < own => {}
                Some(r) => violations.push(format!(
                    "{name} (rank {own}) depends on {dep_name} (rank {r}): only lower layers are allowed"
                )),
                None => violations.push(format!("{name} depends on {dep_name}, which is not in the layer order")),
            }
        }
    }
    assert!(
        violations.is_empty(),
        "layering violations:\n{}",
        violations.join("\n")
    );
    assert!(
        checked >= 5,
        "expected the layer crates to be found, checked {checked}"
    );
}

#[test]
fn the_rule_catches_an_upward_dependency() {
    // The check above is only worth something if rank() orders as documented.
    assert!(rank("blackhole-transport").unwrap() > rank("blackhole-security").unwrap());
    assert!(
        rank("blackhole-node").unwrap()
            > ORDER
                .iter()
                .filter(|(n, _)| *n != "blackhole-node")
                .map(|(_, r)| *r)
                .max()
                .unwrap()
    );
    assert_eq!(rank("blackhole-unknown"), None);
}
