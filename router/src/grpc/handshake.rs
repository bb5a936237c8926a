//! Whether a pod runs what the operator verified, asked once per connection before the first call
//! on it: the router calls the pod's shim's `airlock.plugin.v1.Plugin/Handshake` and calls the pod
//! only if a revision that may serve (`Route::verified`) was verified with exactly the bundle
//! digest and plugin API version the shim names.
//!
//! What it catches: a pod with the plugin's labels and TLS identity that the operator did not make
//! for a serving revision — made by whoever may create such pods (a cluster admin, the cluster's
//! controllers, a tenant where the chart's admission policies are off; the plugin's TLS Secret is
//! readable in its namespace, so the mTLS identity check passes) — running another bundle, or a
//! shim serving another API version. What it cannot catch: a pod that lies about what it runs (its
//! server is not Airlock's shim then); the admission policies keep those out (SECURITY.md).

use std::sync::atomic::{AtomicBool, Ordering};

use airlock_proto::plugin::v1::HandshakeResponse;
use tokio::sync::OnceCell;
use tonic::{Code, Status};

use crate::table::{Route, VerifiedRevision};

/// What a pod's shim said when asked, kept for the connection's life (a pod's bundle never
/// changes; which revisions may serve does, so each call checks it against its route again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Said {
    /// It runs this bundle, for this plugin API version.
    Runs {
        bundle_digest: String,
        plugin_api_version: u32,
    },
    /// It refused the handshake itself (FAILED_PRECONDITION: it serves another plugin API version
    /// than the one asked), or answered with an error a shim never gives: its message.
    Refused { code: Code, message: String },
}

impl Said {
    /// What a shim's answer to a handshake says; `Err` when it says nothing about the pod (it
    /// could not be reached or ran out of time): asked again on the next call.
    pub fn from_answer(answer: Result<HandshakeResponse, Status>) -> Result<Self, Status> {
        match answer {
            Ok(r) => Ok(Said::Runs {
                bundle_digest: printable(&r.bundle_digest, 80),
                plugin_api_version: r.plugin_api_version,
            }),
            Err(s)
                if matches!(
                    s.code(),
                    Code::Unavailable
                        | Code::DeadlineExceeded
                        | Code::Cancelled
                        | Code::Unknown
                        | Code::ResourceExhausted
                ) =>
            {
                Err(s)
            }
            Err(s) => Ok(Said::Refused {
                code: s.code(),
                message: printable(s.message(), 256),
            }),
        }
    }
}

/// At most `max` characters of what a pod sent, control characters dropped: it reaches the
/// caller, the log, an Event and an audit record, and the pod may be anyone's.
fn printable(text: &str, max: usize) -> String {
    text.chars().filter(|c| !c.is_control()).take(max).collect()
}

/// Why a pod is not called.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: Reason,
    /// For the caller, the log and the Event: the pod, what it runs, what was verified, what to do.
    pub message: String,
}

/// The kind of mismatch: the `reason` label of `airlock_router_handshake_refusals_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// It runs a bundle no revision that may serve was verified with.
    BundleDigest,
    /// It runs a verified bundle but serves another plugin API version, or refused the version
    /// the router asked for.
    ApiVersion,
    /// It answered the handshake with an error a shim never gives.
    HandshakeFailed,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::BundleDigest => "bundle_digest",
            Reason::ApiVersion => "api_version",
            Reason::HandshakeFailed => "handshake_failed",
        }
    }
}

/// The plugin API version the router asks a pod of `verified` for: the one every revision that
/// may serve targets, or 0 ("do not check": the answer is compared here) while two revisions
/// that target different versions roll out.
pub fn host_api_version(verified: &[VerifiedRevision]) -> u32 {
    match verified.split_first() {
        Some((first, rest))
            if rest
                .iter()
                .all(|v| v.plugin_api_version == first.plugin_api_version) =>
        {
            first.plugin_api_version
        }
        _ => 0,
    }
}

/// Whether the pod at `endpoint` of `route`, which said `said`, may be called.
pub fn check(route: &Route, endpoint: &str, said: &Said) -> Result<(), Refusal> {
    if route.verified.is_empty() {
        return Ok(());
    }
    let verified = route
        .verified
        .iter()
        .map(|v| {
            format!(
                "{} (bundle {}, plugin API version {})",
                v.revision, v.bundle_digest, v.plugin_api_version
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    let key = &route.plugin;
    let what_to_do = format!(
        "the router does not call it. If the operator did not make it (`kubectl get pod -n {} \
         -o wide` shows the pod at that address; the operator's pods are controlled by the \
         ReplicaSets of Deployment {}), delete it and find who can create pods with the \
         plugin's labels",
        key.namespace,
        airlock_core::names::child_name(&key.name)
    );
    let (reason, runs) = match said {
        Said::Runs {
            bundle_digest,
            plugin_api_version,
        } => {
            let digest_ok = route
                .verified
                .iter()
                .any(|v| &v.bundle_digest == bundle_digest);
            let both_ok = route.verified.iter().any(|v| {
                &v.bundle_digest == bundle_digest && v.plugin_api_version == *plugin_api_version
            });
            if both_ok {
                return Ok(());
            }
            (
                if digest_ok {
                    Reason::ApiVersion
                } else {
                    Reason::BundleDigest
                },
                format!("runs bundle {bundle_digest} for plugin API version {plugin_api_version}"),
            )
        }
        Said::Refused { code, message } => (
            if *code == Code::FailedPrecondition {
                Reason::ApiVersion
            } else {
                Reason::HandshakeFailed
            },
            format!("refused the handshake ({code:?}: {message})"),
        ),
    };
    Err(Refusal {
        reason,
        message: format!(
            "pod {endpoint} of Plugin {key} {runs}, which is not what the operator verified for \
             a revision that may serve ({verified}): {what_to_do}"
        ),
    })
}

/// The handshake of one connection: asked once (concurrent first calls wait for the same
/// answer), reported once.
#[derive(Debug, Default)]
pub struct Checked {
    said: OnceCell<Said>,
    reported: AtomicBool,
}

impl Checked {
    /// What the pod said, if it was asked already.
    pub fn said(&self) -> Option<&Said> {
        self.said.get()
    }

    /// What the pod says, asking it with `ask` unless it was asked already.
    pub async fn said_or_ask<F>(&self, ask: impl FnOnce() -> F) -> Result<&Said, Status>
    where
        F: std::future::Future<Output = Result<Said, Status>>,
    {
        self.said.get_or_try_init(ask).await
    }

    /// True the first time only: the refusal of this connection is logged and reported once,
    /// not on every call that skips the pod.
    pub fn first_report(&self) -> bool {
        !self.reported.swap(true, Ordering::Relaxed)
    }
}

/// Told when a pod is refused after its handshake (the router's Kubernetes side: a Warning Event
/// on the Plugin and the metric).
pub trait RefusalObserver: Send + Sync + std::fmt::Debug + 'static {
    fn refused(&self, route: &Route, endpoint: &str, refusal: &Refusal);
}

#[cfg(test)]
mod tests {
    use super::*;
    use airlock_core::PluginKey;

    fn digest(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    fn route(verified: &[(&str, char, u32)]) -> Route {
        Route {
            plugin: PluginKey::new("team", "fmt"),
            uid: "u".into(),
            version: "1.0.0".into(),
            endpoints: vec!["198.19.0.1:50051".into()],
            hooks: Default::default(),
            auto_disable: None,
            verified: verified
                .iter()
                .map(|(rev, d, v)| VerifiedRevision {
                    revision: rev.to_string(),
                    bundle_digest: digest(*d),
                    plugin_api_version: *v,
                })
                .collect(),
        }
    }

    fn runs(d: char, v: u32) -> Said {
        Said::Runs {
            bundle_digest: digest(d),
            plugin_api_version: v,
        }
    }

    #[test]
    fn a_pod_is_called_only_if_it_runs_a_verified_bundle_at_its_api_version() {
        let r = route(&[("r1", 'a', 1), ("r2", 'b', 1)]);
        assert_eq!(check(&r, "e", &runs('a', 1)), Ok(()));
        assert_eq!(check(&r, "e", &runs('b', 1)), Ok(()), "either revision");

        let other = check(&r, "198.19.0.9:50051", &runs('c', 1)).expect_err("other bundle");
        assert_eq!(other.reason, Reason::BundleDigest);
        for part in [
            "pod 198.19.0.9:50051 of Plugin team/fmt",
            &format!("runs bundle {}", digest('c')),
            &format!("r1 (bundle {}, plugin API version 1)", digest('a')),
            "kubectl get pod -n team -o wide",
            "the router does not call it",
        ] {
            assert!(
                other.message.contains(part),
                "{part:?} in {}",
                other.message
            );
        }

        let version = check(&r, "e", &runs('a', 2)).expect_err("other version");
        assert_eq!(version.reason, Reason::ApiVersion);
    }

    #[test]
    fn what_a_pod_says_reaches_messages_bounded_and_without_control_characters() {
        let said = Said::from_answer(Ok(HandshakeResponse {
            bundle_digest: format!("sha256:\n{}", "x".repeat(10_000)),
            plugin_api_version: 1,
            ..Default::default()
        }))
        .expect("an answer");
        let refusal = check(&route(&[("r1", 'a', 1)]), "e", &said).expect_err("refused");
        assert!(!refusal.message.contains('\n'), "{}", refusal.message);
        assert!(refusal.message.len() < 1_000, "{}", refusal.message.len());
    }

    #[test]
    fn a_route_without_records_checks_nothing() {
        assert_eq!(check(&route(&[]), "e", &runs('z', 9)), Ok(()));
    }

    #[test]
    fn a_shim_that_refuses_the_version_asked_is_refused_and_silence_is_asked_again() {
        let r = route(&[("r1", 'a', 1)]);
        let said = Said::from_answer(Err(Status::failed_precondition(
            "the host speaks plugin API version 1, this plugin targets version 2",
        )))
        .expect("a definite answer");
        let refusal = check(&r, "e", &said).expect_err("refused");
        assert_eq!(refusal.reason, Reason::ApiVersion);
        assert!(
            refusal.message.contains("targets version 2"),
            "{}",
            refusal.message
        );

        let odd = Said::from_answer(Err(Status::unimplemented("no"))).expect("definite");
        assert_eq!(
            check(&r, "e", &odd).expect_err("refused").reason,
            Reason::HandshakeFailed
        );
        for silent in [
            Status::unavailable("tcp connect error"),
            Status::deadline_exceeded("late"),
            Status::cancelled("timeout expired"),
        ] {
            assert!(Said::from_answer(Err(silent)).is_err(), "asked again later");
        }
    }

    #[test]
    fn the_version_asked_is_the_one_every_serving_revision_targets() {
        assert_eq!(host_api_version(&route(&[("r1", 'a', 1)]).verified), 1);
        assert_eq!(
            host_api_version(&route(&[("r1", 'a', 1), ("r2", 'b', 2)]).verified),
            0,
            "two versions rolling out: compared here"
        );
        assert_eq!(host_api_version(&[]), 0);
    }

    #[test]
    fn a_refusal_is_reported_once_per_connection() {
        let c = Checked::default();
        assert!(c.first_report());
        assert!(!c.first_report());
    }
}
