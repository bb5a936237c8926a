//! Image signature verification against the local registry: cold (every call asks the registry)
//! versus cached (the verifier's (digest, key set) cache), with the registry requests each made,
//! counted from the registry's own access log. Run by `make bench` (e2e/bench.sh prepares a
//! cosign-signed image and passes it in the environment).

use std::time::{Duration, Instant};

use airlock_crds::trust_policy::TrustLevel;
use airlock_operator::trust::{ImageKey, ImageSigner, Signature};
use airlock_operator::verify::ImageVerifier;

const ROUNDS: usize = 20;

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        eprintln!("{name} is not set: run this through `make bench`");
        std::process::exit(2)
    })
}

fn registry_requests(log: &str, repository: &str) -> usize {
    let needle = format!("/v2/{repository}/");
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(&needle))
        .count()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let pinned = env("AIRLOCK_BENCH_IMAGE"); // registry/repo@sha256:…
    let pem = std::fs::read_to_string(env("AIRLOCK_BENCH_COSIGN_PUB")).unwrap_or_default();
    let log = env("AIRLOCK_BENCH_REGISTRY_LOG");
    let registry = pinned.split('/').next().unwrap_or_default().to_string();
    let repository = pinned
        .split_once('/')
        .map(|(_, r)| r.split('@').next().unwrap_or_default().to_string())
        .unwrap_or_default();
    let digest = pinned.split('@').nth(1).unwrap_or_default().to_string();
    let keys = vec![ImageKey {
        name: "bench/key".into(),
        level: TrustLevel::Trusted,
        revoked: false,
        signer: ImageSigner::Key(pem),
    }];

    let anonymous = airlock_operator::fetch::Access::anonymous(vec![registry.clone()])
        .unwrap_or_else(|e| {
            eprintln!("the registry client could not start: {e}");
            std::process::exit(2)
        });
    let run = async |cold: bool| {
        let shared = ImageVerifier::new(Duration::from_secs(3600));
        let before = registry_requests(&log, &repository);
        let mut times = Vec::new();
        for _ in 0..ROUNDS {
            let fresh;
            let verifier = if cold {
                fresh = ImageVerifier::new(Duration::from_secs(3600));
                &fresh
            } else {
                &shared
            };
            let t = Instant::now();
            let sig = verifier.verify(&pinned, &digest, &keys, &anonymous).await;
            times.push(t.elapsed());
            match sig {
                Ok(Signature::SignedBy { .. }) => {}
                other => {
                    eprintln!("the bench image did not verify: {other:?}");
                    std::process::exit(1)
                }
            }
        }
        // The access log is written asynchronously.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let requests = registry_requests(&log, &repository) - before;
        times.sort();
        (times, requests)
    };
    let (cold, cold_requests) = run(true).await;
    let (cached, cached_requests) = run(false).await;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("== image signature verification ({ROUNDS} rounds, {pinned}) ==");
    println!(
        "cold (no cache):   p50 {:.2} ms  p99 {:.2} ms  registry requests/verification {:.1}",
        ms(percentile(&cold, 0.5)),
        ms(percentile(&cold, 0.99)),
        cold_requests as f64 / ROUNDS as f64
    );
    println!(
        "cached:            p50 {:.4} ms  p99 {:.4} ms  registry requests/verification {:.1} (the first call fills the cache)",
        ms(percentile(&cached, 0.5)),
        ms(percentile(&cached, 0.99)),
        cached_requests as f64 / ROUNDS as f64
    );
    println!(
        "cold / cached p50: {:.0}x",
        ms(percentile(&cold, 0.5)) / ms(percentile(&cached, 0.5)).max(1e-6)
    );
}
