//! A fixed-rate (open-loop) HTTP load generator for `benches/e2e.sh`: wrk cannot hold a rate
//! and wrk2 is not packaged.
//!
//! ```text
//! fixed_rate <url> <rate_per_s> <seconds> <body_file> [warmup_s]
//! ```
//!
//! POSTs the body (`Content-Type: application/json`) `rate` times a second for `seconds`, each
//! request started on its own schedule whatever the earlier ones are doing (so a slow answer
//! does not hide the requests that would have queued behind it: latency is measured from the
//! request's scheduled start). Requests of the first `warmup_s` seconds (default 1) are sent
//! but not counted. Prints one line:
//! `sent=<n> ok=<n> errors=<n> achieved_per_s=<r> p50_ms=<x> p90_ms=<x> p99_ms=<x> max_ms=<x>`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior};

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 4 {
        eprintln!("usage: fixed_rate <url> <rate_per_s> <seconds> <body_file> [warmup_s]");
        std::process::exit(2);
    }
    let url = args[0].clone();
    let rate: u64 = args[1].parse().unwrap();
    let seconds: u64 = args[2].parse().unwrap();
    let body = bytes::Bytes::from(std::fs::read(&args[3]).unwrap());
    let warmup: u64 = args.get(4).map_or(1, |w| w.parse().unwrap());
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let latencies = Arc::new(Mutex::new(Vec::<f64>::with_capacity(
        (rate * seconds) as usize,
    )));
    let errors = Arc::new(Mutex::new(0u64));
    let mut interval = tokio::time::interval(Duration::from_nanos(1_000_000_000 / rate));
    interval.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let start = Instant::now();
    let (total, counted_from) = (rate * (warmup + seconds), rate * warmup);
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let scheduled = interval.tick().await;
        let (client, url, body) = (client.clone(), url.clone(), body.clone());
        let (latencies, errors) = (latencies.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let result = client
                .post(&url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await;
            let ok = matches!(&result, Ok(r) if r.status().is_success());
            if let Ok(r) = result {
                let _ = r.bytes().await;
            }
            let elapsed = scheduled.elapsed().as_secs_f64() * 1000.0;
            if i >= counted_from {
                if ok {
                    latencies.lock().unwrap().push(elapsed);
                } else {
                    *errors.lock().unwrap() += 1;
                }
            }
        }));
    }
    let sending = start.elapsed().as_secs_f64();
    for t in tasks {
        let _ = t.await;
    }
    let mut l = latencies.lock().unwrap().clone();
    l.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let q = |p: f64| {
        if l.is_empty() {
            f64::NAN
        } else {
            l[((l.len() as f64 * p).ceil() as usize).clamp(1, l.len()) - 1]
        }
    };
    println!(
        "sent={} ok={} errors={} achieved_per_s={:.0} p50_ms={:.2} p90_ms={:.2} p99_ms={:.2} max_ms={:.2}",
        total - counted_from,
        l.len(),
        errors.lock().unwrap(),
        total as f64 / sending,
        q(0.50),
        q(0.90),
        q(0.99),
        l.last().copied().unwrap_or(f64::NAN)
    );
}
