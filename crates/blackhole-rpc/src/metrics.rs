//! `blackhole_rpc_*` metrics.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct Outcome {
    pub(crate) outcome: &'static str,
}

/// The RPC layer's metrics.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub(crate) calls: Family<Outcome, Counter>,
    pub(crate) served: Family<Outcome, Counter>,
    pub(crate) retries: Counter,
    pub(crate) cache_hits: Counter,
    pub(crate) breakers_open: Gauge,
    pub(crate) inbound_in_flight: Gauge,
    pub(crate) call_seconds: Histogram,
    pub(crate) warm_streams_used: Counter,
    pub(crate) warm_streams: Gauge,
}

impl Metrics {
    /// Registers under `blackhole_rpc_`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            calls: Family::default(),
            served: Family::default(),
            retries: Counter::default(),
            cache_hits: Counter::default(),
            breakers_open: Gauge::default(),
            inbound_in_flight: Gauge::default(),
            warm_streams_used: Counter::default(),
            warm_streams: Gauge::default(),
            call_seconds: Histogram::new([
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ]),
        };
        let r = blackhole_metrics::layer(registry, "rpc");
        r.register("calls", "Outgoing calls by outcome", m.calls.clone());
        r.register("served", "Incoming calls by outcome", m.served.clone());
        r.register(
            "retries",
            "Retried attempts of idempotent calls",
            m.retries.clone(),
        );
        r.register(
            "cache_hits",
            "Calls answered from the response cache",
            m.cache_hits.clone(),
        );
        r.register(
            "breakers_open",
            "Peers whose circuit breaker is open",
            m.breakers_open.clone(),
        );
        r.register(
            "inbound_in_flight",
            "Incoming calls being served",
            m.inbound_in_flight.clone(),
        );
        r.register(
            "warm_streams_used",
            "Calls sent on a stream opened ahead (see rpc.warm_stream_ttl)",
            m.warm_streams_used.clone(),
        );
        r.register(
            "warm_streams",
            "Streams opened ahead, waiting for the next call to their peer",
            m.warm_streams.clone(),
        );
        r.register(
            "call_seconds",
            "Duration of successful outgoing calls",
            m.call_seconds.clone(),
        );
        m
    }

    pub(crate) fn call(&self, outcome: &'static str) {
        self.calls.get_or_create(&Outcome { outcome }).inc();
    }

    pub(crate) fn served(&self, outcome: &'static str) {
        self.served.get_or_create(&Outcome { outcome }).inc();
    }
}
