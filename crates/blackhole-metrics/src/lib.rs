//! The metrics registry every Blackhole layer reports into.
//!
//! This is the bottom layer of the workspace: it knows nothing of peers,
//! sockets or protocols. Each layer registers its own metric families in a
//! sub-registry named after it (`blackhole_transport_*`, `blackhole_mux_*`,
//! ...) while it is being built; the node then freezes the registry into a
//! [`SharedRegistry`] and serves it in the Prometheus text format.
//!
//! ```
//! use blackhole_metrics::{Registry, SharedRegistry, prometheus_client::metrics::counter::Counter};
//!
//! let mut registry = Registry::default();
//! let frames: Counter = Counter::default();
//! blackhole_metrics::layer(&mut registry, "mux").register("frames", "frames seen", frames.clone());
//! frames.inc();
//! let shared = SharedRegistry::new(registry);
//! let text = shared.encode().unwrap();
//! assert!(text.contains("blackhole_mux_frames_total 1"));
//! ```

use std::sync::{Arc, Mutex};

pub use prometheus_client;
pub use prometheus_client::registry::Registry;

/// The prefix of every metric family Blackhole registers itself.
pub const PREFIX: &str = "blackhole";

/// The sub-registry where the layer `name` registers its metric families:
/// they are exported as `blackhole_<name>_<metric>`.
pub fn layer<'a>(registry: &'a mut Registry, name: &str) -> &'a mut Registry {
    registry
        .sub_registry_with_prefix(PREFIX)
        .sub_registry_with_prefix(name)
}

/// Errors of [`SharedRegistry::encode`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The text encoder failed (it only fails on a formatter error).
    #[error("failed to encode metrics: {0}")]
    Format(#[from] std::fmt::Error),
    /// A thread panicked while holding the registry lock.
    #[error("metrics registry lock is poisoned")]
    Poisoned,
}

/// A registry that is complete (every layer has registered) and can be
/// shared between the node and the servers that export it.
///
/// Metric values live in the metric handles themselves (atomics), so
/// encoding only needs the registry for reading.
#[derive(Debug, Clone)]
pub struct SharedRegistry(Arc<Mutex<Registry>>);

impl SharedRegistry {
    /// Freezes `registry` for sharing.
    pub fn new(registry: Registry) -> Self {
        Self(Arc::new(Mutex::new(registry)))
    }

    /// Encodes every metric in the Prometheus text exposition format
    /// (OpenMetrics flavour, ending with `# EOF`).
    pub fn encode(&self) -> Result<String, EncodeError> {
        let registry = self.0.lock().map_err(|_| EncodeError::Poisoned)?;
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry)?;
        Ok(out)
    }
}

/// The content type of [`SharedRegistry::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::gauge::Gauge;

    #[test]
    fn layers_are_prefixed_and_encoded() {
        let mut registry = Registry::default();
        let g: Gauge = Gauge::default();
        layer(&mut registry, "transport").register("open", "open things", g.clone());
        g.set(7);
        let text = SharedRegistry::new(registry).encode().unwrap();
        assert!(
            text.contains("# HELP blackhole_transport_open open things"),
            "{text}"
        );
        assert!(text.contains("blackhole_transport_open 7"), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }
}
