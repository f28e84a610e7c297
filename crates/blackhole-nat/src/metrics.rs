//! `blackhole_nat_*` metrics.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct Result_ {
    pub(crate) result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct Type {
    pub(crate) r#type: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct Kind {
    pub(crate) kind: &'static str,
}

/// The NAT layer's counters and gauges.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    pub(crate) reachability: Gauge,
    pub(crate) nat_type: Family<Type, Gauge>,
    pub(crate) autonat_probes: Family<Result_, Counter>,
    pub(crate) autonat_dial_backs: Family<Result_, Counter>,
    pub(crate) relay_reservations: Gauge,
    pub(crate) relay_server_reservations: Gauge,
    pub(crate) relay_server_circuits: Gauge,
    pub(crate) relay_server_denied: Family<Kind, Counter>,
    pub(crate) hole_punch_attempts: Counter,
    pub(crate) hole_punches: Family<Result_, Counter>,
    pub(crate) upnp_mapped: Gauge,
}

impl Metrics {
    /// Registers under `blackhole_nat_`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        let r = blackhole_metrics::layer(registry, "nat");
        r.register(
            "reachability",
            "0 unknown, 1 private (not dialable), 2 public (a confirmed external address)",
            m.reachability.clone(),
        );
        r.register(
            "type",
            "The NAT type detected (1 for the current type)",
            m.nat_type.clone(),
        );
        r.register(
            "autonat_probes",
            "AutoNAT v2 tests of our addresses, by result (reachable, unreachable)",
            m.autonat_probes.clone(),
        );
        r.register(
            "autonat_dial_backs",
            "AutoNAT v2 tests this node ran for others: ok when the answer reached the \
             client, whether or not the dial-back connected (libp2p-autonat does not tell \
             the server); error when the exchange failed",
            m.autonat_dial_backs.clone(),
        );
        r.register(
            "relay_reservations",
            "Reservations this node holds on relays",
            m.relay_reservations.clone(),
        );
        r.register(
            "relay_server_reservations",
            "Reservations this node holds for others as a relay",
            m.relay_server_reservations.clone(),
        );
        r.register(
            "relay_server_circuits",
            "Circuits this node relays now",
            m.relay_server_circuits.clone(),
        );
        r.register(
            "relay_server_denied",
            "Reservation and circuit requests this relay denied (kind: reservation, circuit)",
            m.relay_server_denied.clone(),
        );
        r.register(
            "hole_punch_attempts",
            "Direct connection attempts made to upgrade relayed connections",
            m.hole_punch_attempts.clone(),
        );
        r.register(
            "hole_punches",
            "Hole punching outcomes (success, failure)",
            m.hole_punches.clone(),
        );
        r.register(
            "upnp_mapped",
            "Ports mapped on a UPnP gateway now",
            m.upnp_mapped.clone(),
        );
        // Every label value exists from the start, at 0, so that rates
        // and dashboards work before the first event.
        for result in ["reachable", "unreachable"] {
            let _ = m.autonat_probes.get_or_create(&Result_ { result });
        }
        for result in ["ok", "error"] {
            let _ = m.autonat_dial_backs.get_or_create(&Result_ { result });
        }
        for result in ["success", "failure"] {
            let _ = m.hole_punches.get_or_create(&Result_ { result });
        }
        for kind in ["reservation", "circuit"] {
            let _ = m.relay_server_denied.get_or_create(&Kind { kind });
        }
        m
    }

    pub(crate) fn result(family: &Family<Result_, Counter>, result: &'static str) {
        family.get_or_create(&Result_ { result }).inc();
    }
}
