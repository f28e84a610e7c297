//! Retry backoff, circuit breakers, rate limits and the response cache:
//! plain data, no clock of their own (time is passed in), no I/O.

use std::{
    collections::{HashMap, VecDeque},
    hash::Hash,
    time::{Duration, Instant},
};

/// Exponential backoff with full jitter.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Backoff {
    /// Attempts in all (1 = no retry).
    pub max_attempts: u32,
    /// The first delay's upper bound.
    #[serde(with = "humantime_serde")]
    pub base: Duration,
    /// No delay is longer.
    #[serde(with = "humantime_serde")]
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            base: Duration::from_millis(50),
            max: Duration::from_secs(2),
        }
    }
}

impl Backoff {
    /// The delay before attempt `attempt` (1 = the first retry), given a
    /// random number: uniform in `[0, min(max, base * 2^(attempt-1))]`.
    pub fn delay(&self, attempt: u32, random: u64) -> Duration {
        let cap = self
            .base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
            .min(self.max);
        let nanos = cap.as_nanos().min(u128::from(u64::MAX)) as u64;
        Duration::from_nanos(if nanos == 0 { 0 } else { random % (nanos + 1) })
    }
}

/// Circuit breaker settings.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker.
    pub failures_to_open: u32,
    /// How long it stays open before letting one probe through.
    #[serde(with = "humantime_serde")]
    pub open_for: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failures_to_open: 5,
            open_for: Duration::from_secs(10),
        }
    }
}

/// A breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls fail at once.
    Open,
    /// One probe is allowed; its outcome closes or reopens.
    HalfOpen,
}

/// One peer's circuit breaker.
#[derive(Debug, Clone)]
pub struct Breaker {
    config: BreakerConfig,
    failures: u32,
    opened_at: Option<Instant>,
    probing: bool,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            failures: 0,
            opened_at: None,
            probing: false,
        }
    }

    /// The state at `now`.
    pub fn state(&self, now: Instant) -> BreakerState {
        match self.opened_at {
            None => BreakerState::Closed,
            Some(at) if now.saturating_duration_since(at) < self.config.open_for => {
                BreakerState::Open
            }
            Some(_) => BreakerState::HalfOpen,
        }
    }

    /// Whether a call may go now (`Ok(true)`: it is the half-open probe,
    /// and its outcome, or [`Breaker::end_probe`], must follow); `Err`
    /// carries how long until a probe may.
    pub fn allow(&mut self, now: Instant) -> Result<bool, Duration> {
        match (self.state(now), self.opened_at) {
            (BreakerState::Closed, _) => Ok(false),
            (BreakerState::HalfOpen, _) if !self.probing => {
                self.probing = true;
                Ok(true)
            }
            (BreakerState::HalfOpen, _) => Err(Duration::ZERO),
            (BreakerState::Open, Some(at)) => Err(self
                .config
                .open_for
                .saturating_sub(now.saturating_duration_since(at))),
            (BreakerState::Open, None) => Ok(false),
        }
    }

    /// The probe ended without an outcome that says anything about the
    /// peer (it was cancelled, or failed locally): another call may probe.
    pub fn end_probe(&mut self) {
        self.probing = false;
    }

    /// A call succeeded: closed again.
    pub fn on_success(&mut self) {
        self.failures = 0;
        self.opened_at = None;
        self.probing = false;
    }

    /// A call failed (in a way that says something about the peer).
    pub fn on_failure(&mut self, now: Instant) {
        self.failures = self.failures.saturating_add(1);
        if self.probing || self.failures >= self.config.failures_to_open {
            self.opened_at = Some(now);
        }
        self.probing = false;
    }
}

/// Per-key token buckets, at most `max_keys` of them (the least recently
/// used is forgotten first, which only ever makes the limit more lenient
/// for a key that was idle).
#[derive(Debug)]
pub struct RateLimiter<K> {
    per_second: f64,
    burst: f64,
    max_keys: usize,
    buckets: HashMap<K, (f64, Instant)>,
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    /// `per_second` sustained, `burst` at once.
    pub fn new(per_second: f64, burst: u32, max_keys: usize) -> Self {
        Self {
            per_second,
            burst: f64::from(burst.max(1)),
            max_keys: max_keys.max(1),
            buckets: HashMap::new(),
        }
    }

    /// Takes a token for `key` if there is one.
    pub fn allow(&mut self, key: &K, now: Instant) -> bool {
        if !self.buckets.contains_key(key)
            && self.buckets.len() >= self.max_keys
            && let Some(oldest) = self
                .buckets
                .iter()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(k, _)| k.clone())
        {
            self.buckets.remove(&oldest);
        }
        let (tokens, at) = self.buckets.entry(key.clone()).or_insert((self.burst, now));
        let refill = now.saturating_duration_since(*at).as_secs_f64() * self.per_second;
        *tokens = (*tokens + refill).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A bounded response cache: entries expire after their TTL; beyond
/// `max_entries` or `max_bytes` the oldest go first.
#[derive(Debug)]
pub struct Cache<K> {
    max_entries: usize,
    max_bytes: usize,
    bytes: usize,
    map: HashMap<K, (Vec<u8>, Instant)>,
    order: VecDeque<K>,
}

impl<K: Hash + Eq + Clone> Cache<K> {
    /// An empty cache.
    pub fn new(max_entries: usize, max_bytes: usize) -> Self {
        Self {
            max_entries,
            max_bytes,
            bytes: 0,
            map: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// The cached value, if fresh.
    pub fn get(&mut self, key: &K, now: Instant) -> Option<&[u8]> {
        let fresh = self.map.get(key).is_some_and(|(_, until)| now < *until);
        if !fresh {
            if let Some((v, _)) = self.map.remove(key) {
                self.bytes -= v.len();
            }
            return None;
        }
        self.map.get(key).map(|(v, _)| v.as_slice())
    }

    /// Stores `value` until `now + ttl`; values larger than the byte
    /// budget are not stored.
    pub fn put(&mut self, key: K, value: Vec<u8>, ttl: Duration, now: Instant) {
        if value.len() > self.max_bytes || self.max_entries == 0 {
            return;
        }
        if let Some((old, _)) = self.map.remove(&key) {
            self.bytes -= old.len();
            self.order.retain(|k| k != &key);
        }
        while self.map.len() >= self.max_entries || self.bytes + value.len() > self.max_bytes {
            let Some(k) = self.order.pop_front() else {
                break;
            };
            if let Some((v, _)) = self.map.remove(&k) {
                self.bytes -= v.len();
            }
        }
        self.bytes += value.len();
        self.order.push_back(key.clone());
        self.map.insert(key, (value, now + ttl));
        // Keys that expired (removed by `get`) leave stale entries in
        // `order`; keep it from growing past twice the map.
        if self.order.len() > 2 * self.max_entries.max(1) {
            let map = &self.map;
            self.order.retain(|k| map.contains_key(k));
        }
    }

    /// Entries stored.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Bytes stored.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_jitters() {
        let b = Backoff {
            max_attempts: 5,
            base: Duration::from_millis(100),
            max: Duration::from_millis(350),
        };
        assert!(b.delay(1, u64::MAX) <= Duration::from_millis(100));
        assert!(b.delay(2, u64::MAX) <= Duration::from_millis(200));
        assert!(b.delay(9, u64::MAX) <= Duration::from_millis(350));
        assert_eq!(b.delay(3, 0), Duration::ZERO);
        let distinct: std::collections::HashSet<_> =
            (0..50u64).map(|r| b.delay(3, r * 7_919_000)).collect();
        assert!(distinct.len() > 10, "jitter spreads delays");
    }

    #[test]
    fn breaker_opens_half_opens_and_closes() {
        let t0 = Instant::now();
        let mut b = Breaker::new(BreakerConfig {
            failures_to_open: 3,
            open_for: Duration::from_secs(10),
        });
        for _ in 0..2 {
            assert!(b.allow(t0).is_ok());
            b.on_failure(t0);
        }
        assert_eq!(b.state(t0), BreakerState::Closed);
        b.on_failure(t0);
        assert_eq!(b.state(t0), BreakerState::Open);
        assert_eq!(
            b.allow(t0 + Duration::from_secs(4)),
            Err(Duration::from_secs(6))
        );
        // One probe after the open period; a second waits for its outcome.
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(b.state(t1), BreakerState::HalfOpen);
        assert_eq!(b.allow(t1), Ok(true));
        assert!(b.allow(t1).is_err());
        // A probe that ends with no outcome (cancelled) lets the next call
        // probe instead of leaving the breaker half-open for good.
        b.end_probe();
        assert_eq!(b.allow(t1), Ok(true));
        // The probe fails: open again for a full period.
        b.on_failure(t1);
        assert_eq!(b.state(t1 + Duration::from_secs(9)), BreakerState::Open);
        let t2 = t1 + Duration::from_secs(10);
        assert_eq!(b.allow(t2), Ok(true));
        b.on_success();
        assert_eq!(b.state(t2), BreakerState::Closed);
        assert_eq!(b.allow(t2), Ok(false));
    }

    #[test]
    fn rate_limiter_refills_and_bounds_keys() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(10.0, 3, 2);
        assert!((0..3).all(|_| r.allow(&1, t0)));
        assert!(!r.allow(&1, t0));
        assert!(r.allow(&1, t0 + Duration::from_millis(100)));
        assert!(r.allow(&2, t0));
        assert!(r.allow(&3, t0));
        assert!(r.buckets.len() <= 2);
    }

    #[test]
    fn cache_expires_and_bounds() {
        let t0 = Instant::now();
        let mut c = Cache::new(2, 10);
        c.put("a", vec![0; 4], Duration::from_secs(1), t0);
        assert_eq!(c.get(&"a", t0), Some(&[0u8; 4][..]));
        assert_eq!(c.get(&"a", t0 + Duration::from_secs(1)), None);
        c.put("a", vec![0; 4], Duration::from_secs(9), t0);
        c.put("b", vec![0; 4], Duration::from_secs(9), t0);
        c.put("c", vec![0; 4], Duration::from_secs(9), t0);
        assert_eq!(c.len(), 2);
        assert_eq!(c.get(&"a", t0), None, "oldest evicted");
        c.put("d", vec![0; 11], Duration::from_secs(9), t0);
        assert_eq!(c.get(&"d", t0), None, "larger than the budget");
        assert!(c.bytes() <= 10);
        for i in 0..100 {
            c.put(
                "x",
                vec![0; 1],
                Duration::from_secs(9),
                t0 + Duration::from_millis(i),
            );
        }
        assert!(c.order.len() <= 4);
    }
}
