//! The RPC codec: encoding and decoding frames with and without
//! compression, and LZ4 against zstd on realistic payloads (how the
//! compression of `blackhole-rpc` was chosen).

// Benchmark code: a panic is a failed run.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use blackhole_rpc::wire::{Frame, Kind, read_frame};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use futures::executor::block_on;

/// JSON records as an application would send them.
fn json_records(bytes: usize) -> Vec<u8> {
    let mut out = String::from("[");
    let mut i = 0u64;
    while out.len() < bytes {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&format!(
            r#"{{"id":{i},"peer":"12D3KooW{:016x}","region":"eu-{}","height":{},"ok":{},"tags":["a","b{}"]}}"#,
            i.wrapping_mul(0x9e37_79b9_7f4a_7c15),
            i % 7,
            1_000_000 + i * 13,
            i.is_multiple_of(3),
            i % 11
        ));
        i += 1;
    }
    out.push(']');
    out.into_bytes()
}

/// Log lines.
fn text(bytes: usize) -> Vec<u8> {
    let mut out = String::new();
    let mut i = 0u64;
    while out.len() < bytes {
        out.push_str(&format!(
            "2026-11-24T03:{:02}:{:02}Z INFO node peer=12D3KooW{:08x} connection established after {} ms\n",
            (i / 60) % 60,
            i % 60,
            i.wrapping_mul(2_654_435_761) as u32,
            i % 97
        ));
        i += 1;
    }
    out.into_bytes()
}

/// Incompressible bytes (already compressed or encrypted data).
fn random(bytes: usize) -> Vec<u8> {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    (0..bytes)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn compression(c: &mut Criterion) {
    let mut g = c.benchmark_group("rpc_compression");
    for (name, data) in [
        ("json_64KiB", json_records(64 * 1024)),
        ("text_64KiB", text(64 * 1024)),
        ("random_64KiB", random(64 * 1024)),
    ] {
        let lz4 = lz4_flex::compress_prepend_size(&data);
        let zstd1 = zstd::bulk::compress(&data, 1).unwrap();
        let zstd3 = zstd::bulk::compress(&data, 3).unwrap();
        eprintln!(
            "{name}: {} bytes; lz4 {} ({:.1}%), zstd-1 {} ({:.1}%), zstd-3 {} ({:.1}%)",
            data.len(),
            lz4.len(),
            100.0 * lz4.len() as f64 / data.len() as f64,
            zstd1.len(),
            100.0 * zstd1.len() as f64 / data.len() as f64,
            zstd3.len(),
            100.0 * zstd3.len() as f64 / data.len() as f64,
        );
        g.throughput(Throughput::Bytes(data.len() as u64));
        g.bench_with_input(BenchmarkId::new("lz4_compress", name), &data, |b, d| {
            b.iter(|| lz4_flex::compress_prepend_size(d))
        });
        g.bench_with_input(BenchmarkId::new("zstd1_compress", name), &data, |b, d| {
            b.iter(|| zstd::bulk::compress(d, 1).unwrap())
        });
        g.bench_with_input(BenchmarkId::new("zstd3_compress", name), &data, |b, d| {
            b.iter(|| zstd::bulk::compress(d, 3).unwrap())
        });
        g.bench_with_input(BenchmarkId::new("lz4_decompress", name), &lz4, |b, d| {
            b.iter(|| lz4_flex::decompress_size_prepended(d).unwrap())
        });
        g.bench_with_input(
            BenchmarkId::new("zstd1_decompress", name),
            &zstd1,
            |b, d| b.iter(|| zstd::bulk::decompress(d, 1 << 20).unwrap()),
        );
    }
    g.finish();
}

fn codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("rpc_codec");
    for size in [64usize, 4096, 65536] {
        let payload = json_records(size);
        let frame = Frame::answer(Kind::Response, 42, payload.clone());
        g.throughput(Throughput::Bytes(payload.len() as u64));
        for (label, compress) in [("plain", None), ("zstd", Some(0))] {
            let mut bytes = Vec::new();
            frame.encode(compress, &mut bytes);
            g.bench_with_input(
                BenchmarkId::new(format!("encode_{label}"), size),
                &frame,
                |b, f| {
                    b.iter(|| {
                        let mut out = Vec::with_capacity(size + 32);
                        f.encode(compress, &mut out);
                        out
                    })
                },
            );
            g.bench_with_input(
                BenchmarkId::new(format!("decode_{label}"), size),
                &bytes,
                |b, x| b.iter(|| block_on(read_frame(&mut x.as_slice(), 1 << 24)).unwrap()),
            );
        }
    }
    g.finish();
}

criterion_group!(benches, compression, codec);
criterion_main!(benches);
