//! The Yamux frame splitter (`blackhole_mux::rechunk`) against reading the
//! same bytes with no wrapper: what tolerating js-libp2p's large frames
//! costs on the inbound path.

// Benchmark code: a panic is a failed run.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use blackhole_metrics::prometheus_client::metrics::counter::Counter;
use blackhole_mux::rechunk::Rechunk;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use futures::{AsyncReadExt, executor::block_on, io::Cursor};

/// `total` bytes of DATA frames of `frame` bytes each for stream 1.
fn frames(frame: usize, total: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(total + total / frame * 12 + 12);
    let mut left = total;
    while left > 0 {
        let len = left.min(frame);
        out.extend_from_slice(&[0, 0, 0, 0]);
        out.extend_from_slice(&1u32.to_be_bytes());
        out.extend_from_slice(&(len as u32).to_be_bytes());
        out.resize(out.len() + len, 0xab);
        left -= len;
    }
    out
}

fn read_all(mut r: impl futures::AsyncRead + Unpin, buf: &mut [u8]) -> usize {
    let mut n = 0;
    loop {
        let k = block_on(r.read(buf)).unwrap();
        if k == 0 {
            return n;
        }
        n += k;
    }
}

fn bench(c: &mut Criterion) {
    const TOTAL: usize = 16 << 20;
    let mut g = c.benchmark_group("yamux_inbound");
    g.throughput(Throughput::Bytes(TOTAL as u64));
    let mut buf = vec![0u8; 64 * 1024];
    for frame in [16 << 10, 1 << 20, 8 << 20] {
        let input = frames(frame, TOTAL);
        g.bench_with_input(BenchmarkId::new("plain", frame), &input, |b, input| {
            b.iter(|| read_all(Cursor::new(input.as_slice()), &mut buf))
        });
        g.bench_with_input(
            BenchmarkId::new("rechunk_1MiB", frame),
            &input,
            |b, input| {
                b.iter(|| {
                    read_all(
                        Rechunk::new(Cursor::new(input.as_slice()), 1 << 20, Counter::default()),
                        &mut buf,
                    )
                })
            },
        );
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
