//! Summary statistics for reports.

use serde_json::{Value, json};

/// The `q`-quantile (0..=1) of `xs` by nearest rank; `None` if empty.
pub(crate) fn quantile(xs: &[f64], q: f64) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    Some(v[rank - 1])
}

/// count, min, p50, p90, p99, max and mean of `xs`, as JSON.
pub(crate) fn summary(xs: &[f64]) -> Value {
    if xs.is_empty() {
        return json!({ "count": 0 });
    }
    let mean = xs.iter().sum::<f64>() / xs.len() as f64;
    json!({
        "count": xs.len(),
        "min": quantile(xs, 0.0),
        "p50": quantile(xs, 0.5),
        "p90": quantile(xs, 0.9),
        "p99": quantile(xs, 0.99),
        "max": quantile(xs, 1.0),
        "mean": mean,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_quantiles() {
        let xs: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&xs, 0.5), Some(50.0));
        assert_eq!(quantile(&xs, 0.99), Some(99.0));
        assert_eq!(quantile(&xs, 1.0), Some(100.0));
        assert_eq!(quantile(&xs, 0.0), Some(1.0));
        assert_eq!(quantile(&[], 0.5), None);
        assert_eq!(summary(&[2.0, 4.0])["mean"], 3.0);
    }
}
