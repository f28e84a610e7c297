//! `blackhole_pubsub_*` metrics.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: &'static str,
}

/// The pubsub layer's counters and gauges.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    pub(crate) published: Counter,
    pub(crate) publish_failures: Counter,
    pub(crate) delivered: Counter,
    pub(crate) duplicates: Counter,
    pub(crate) expired: Counter,
    pub(crate) validation_timeouts: Counter,
    rejected: Family<Reason, Counter>,
    ignored: Family<Reason, Counter>,
    pub(crate) announcements_sent: Counter,
    pub(crate) announcements_received: Counter,
    pub(crate) snapshots_received: Counter,
    pub(crate) snapshots_served: Counter,
    pub(crate) subscriptions: Gauge,
    pub(crate) pending_publishes: Gauge,
    pub(crate) pending_validations: Gauge,
    pub(crate) registry_topics: Gauge,
    pub(crate) registry_sources: Gauge,
}

impl Metrics {
    /// Registers under `blackhole_pubsub_`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        let r = blackhole_metrics::layer(registry, "pubsub");
        r.register(
            "published",
            "Messages published by this node",
            m.published.clone(),
        );
        r.register(
            "publish_failures",
            "Publishes that reached no subscriber",
            m.publish_failures.clone(),
        );
        r.register(
            "delivered",
            "Messages delivered to this node's subscriptions (once each)",
            m.delivered.clone(),
        );
        r.register(
            "duplicates",
            "Valid messages that arrived again (another topic or lane)",
            m.duplicates.clone(),
        );
        r.register(
            "expired",
            "Messages dropped because their TTL passed",
            m.expired.clone(),
        );
        r.register(
            "validation_timeouts",
            "Messages whose validators did not answer in time",
            m.validation_timeouts.clone(),
        );
        r.register(
            "rejected",
            "Messages rejected, by reason",
            m.rejected.clone(),
        );
        r.register("ignored", "Messages ignored, by reason", m.ignored.clone());
        r.register(
            "announcements_sent",
            "Topic announcements sent",
            m.announcements_sent.clone(),
        );
        r.register(
            "announcements_received",
            "Topic announcements applied",
            m.announcements_received.clone(),
        );
        r.register(
            "registry_snapshots_received",
            "Topic registries received from neighbours after start",
            m.snapshots_received.clone(),
        );
        r.register(
            "registry_snapshots_served",
            "Topic registries sent to starting neighbours",
            m.snapshots_served.clone(),
        );
        r.register(
            "subscriptions",
            "Local subscriptions",
            m.subscriptions.clone(),
        );
        r.register(
            "pending_publishes",
            "Publishes waiting for a first peer",
            m.pending_publishes.clone(),
        );
        r.register(
            "pending_validations",
            "Messages waiting for application validators",
            m.pending_validations.clone(),
        );
        r.register(
            "registry_topics",
            "Topics known from announcements",
            m.registry_topics.clone(),
        );
        r.register(
            "registry_sources",
            "Nodes known from announcements",
            m.registry_sources.clone(),
        );
        m
    }

    pub(crate) fn rejected(&self, reason: &'static str) {
        self.rejected.get_or_create(&Reason { reason }).inc();
    }

    pub(crate) fn ignored(&self, reason: &'static str) {
        self.ignored.get_or_create(&Reason { reason }).inc();
    }
}
