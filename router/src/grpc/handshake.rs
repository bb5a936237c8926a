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

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use airlock_proto::plugin::v1::HandshakeResponse;
use tonic::{Code, Status};

use crate::table::{Route, VerifiedRevision};

/// Longest a pod may take to answer the handshake (within the call's deadline): a pod that takes
/// the connection but does not answer costs a call this, not its whole deadline, before the call
/// goes to another pod.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(1);

/// What a pod's shim said when asked, kept for the connection's life (a pod's bundle never
/// changes; which revisions may serve does, so each call checks it against its route again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Said {
    /// It runs this bundle, for this plugin API version.
    Runs {
        bundle_digest: String,
        plugin_api_version: u32,
    },
    /// Asked for plugin API version `asked`, it refused (FAILED_PRECONDITION: it serves
    /// another one), with this message. Holds only while the router would ask the same.
    RefusedVersion { asked: u32, message: String },
}

impl Said {
    /// What a shim's answer to a handshake that asked for `asked` says; `Err` when it says
    /// nothing definite about the pod (unreachable, late, or an error a shim never gives, which
    /// a proxy or a pod still starting may): not kept, asked again on the next call.
    pub fn from_answer(
        answer: Result<HandshakeResponse, Status>,
        asked: u32,
    ) -> Result<Self, Status> {
        match answer {
            Ok(r) => Ok(Said::Runs {
                bundle_digest: printable(&r.bundle_digest, 80),
                plugin_api_version: r.plugin_api_version,
            }),
            Err(s) if s.code() == Code::FailedPrecondition => Ok(Said::RefusedVersion {
                asked,
                message: printable(s.message(), 256),
            }),
            Err(s) => Err(s),
        }
    }

    /// Whether this answer still holds for a route that asks for `asked`.
    fn holds_for(&self, asked: u32) -> bool {
        match self {
            Said::Runs { .. } => true,
            Said::RefusedVersion { asked: then, .. } => *then == asked,
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
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::BundleDigest => "bundle_digest",
            Reason::ApiVersion => "api_version",
        }
    }
}

/// The plugin API version the router asks a pod of `verified` for: the one every revision that
/// may serve targets, or 0 ("do not check": the answer is compared here) while revisions that
/// target different versions roll out.
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

/// Whether the pod at `endpoint` of `route`, which said `said`, may be called. Compares first;
/// the message is written only for a refusal.
pub fn check(route: &Route, endpoint: &str, said: &Said) -> Result<(), Refusal> {
    if route.verified.is_empty() {
        return Ok(());
    }
    let (reason, runs) = match said {
        Said::Runs {
            bundle_digest,
            plugin_api_version,
        } => {
            let mut digest_ok = false;
            for v in &route.verified {
                if &v.bundle_digest == bundle_digest {
                    if v.plugin_api_version == *plugin_api_version {
                        return Ok(());
                    }
                    digest_ok = true;
                }
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
        Said::RefusedVersion { asked, message } => (
            Reason::ApiVersion,
            format!("refused plugin API version {asked} ({message})"),
        ),
    };
    let verified = route
        .verified
        .iter()
        .map(|v| {
            format!(
                "{} = {} v{}",
                v.revision, v.bundle_digest, v.plugin_api_version
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    let key = &route.plugin;
    Err(Refusal {
        reason,
        message: format!(
            "pod {endpoint} of Plugin {key} {runs}, not what the operator verified for a revision \
             that may serve ({verified}); the router does not call it. If the operator did not \
             make it (`kubectl get pod -n {} -o wide` shows it; the operator's are controlled by \
             ReplicaSets of Deployment {}), delete it and find who can create pods with the \
             plugin's labels",
            key.namespace,
            airlock_core::names::child_name(&key.name)
        ),
    })
}

/// The handshake of one connection: asked at most once at a time (concurrent first calls wait
/// for the same answer), a definite answer kept, a refusal reported once.
#[derive(Debug, Default)]
pub struct Checked {
    said: Mutex<Option<Said>>,
    asking: tokio::sync::Mutex<()>,
    reported: AtomicBool,
}

impl Checked {
    /// The verdict on this pod for `route` from what it said, if it said something that still
    /// holds (`None`: to be asked).
    pub fn verdict(&self, route: &Route, endpoint: &str) -> Option<Result<(), Refusal>> {
        let said = self.said.lock().unwrap_or_else(|e| e.into_inner());
        said.as_ref()
            .filter(|s| s.holds_for(host_api_version(&route.verified)))
            .map(|s| check(route, endpoint, s))
    }

    /// The verdict on this pod for `route`, asking it with `ask(version)` unless what it said
    /// still holds. `Err`: it could not be asked (kept nothing).
    pub async fn verdict_or_ask<F>(
        &self,
        route: &Route,
        endpoint: &str,
        ask: impl FnOnce(u32) -> F,
    ) -> Result<Result<(), Refusal>, Status>
    where
        F: std::future::Future<Output = Result<Said, Status>>,
    {
        if let Some(v) = self.verdict(route, endpoint) {
            return Ok(v);
        }
        let _one_at_a_time = self.asking.lock().await;
        if let Some(v) = self.verdict(route, endpoint) {
            return Ok(v);
        }
        let said = ask(host_api_version(&route.verified)).await?;
        let verdict = check(route, endpoint, &said);
        *self.said.lock().unwrap_or_else(|e| e.into_inner()) = Some(said);
        Ok(verdict)
    }

    /// True the first time only: the refusal of this connection is logged and reported once,
    /// not on every call that skips the pod.
    pub fn first_report(&self) -> bool {
        !self.reported.swap(true, Ordering::Relaxed)
    }
}

/// Told when a pod is refused after its handshake (the router's Kubernetes side: a Warning Event
/// on the Plugin, an audit record and the metric).
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
            &format!("r1 = {} v1", digest('a')),
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
        let said = Said::from_answer(
            Ok(HandshakeResponse {
                bundle_digest: format!("sha256:\n{}", "x".repeat(10_000)),
                plugin_api_version: 1,
                ..Default::default()
            }),
            1,
        )
        .expect("an answer");
        let refusal = check(&route(&[("r1", 'a', 1)]), "e", &said).expect_err("refused");
        assert!(!refusal.message.contains('\n'), "{}", refusal.message);
        assert!(refusal.message.len() < 800, "{}", refusal.message.len());
    }

    #[test]
    fn a_route_without_records_checks_nothing() {
        assert_eq!(check(&route(&[]), "e", &runs('z', 9)), Ok(()));
    }

    #[test]
    fn a_shim_that_refuses_the_version_asked_is_refused_and_anything_else_is_asked_again() {
        let r = route(&[("r1", 'a', 1)]);
        let said = Said::from_answer(
            Err(Status::failed_precondition(
                "the host speaks plugin API version 1, this plugin targets version 2",
            )),
            1,
        )
        .expect("a definite answer");
        let refusal = check(&r, "e", &said).expect_err("refused");
        assert_eq!(refusal.reason, Reason::ApiVersion);
        assert!(
            refusal.message.contains("targets version 2"),
            "{}",
            refusal.message
        );
        // A proxy's or a starting pod's error says nothing about what it runs: not kept.
        for passing in [
            Status::unavailable("tcp connect error"),
            Status::deadline_exceeded("late"),
            Status::cancelled("timeout expired"),
            Status::internal("h2 protocol error"),
            Status::unimplemented("404"),
            Status::permission_denied("403 from a sidecar"),
        ] {
            assert!(
                Said::from_answer(Err(passing), 1).is_err(),
                "asked again later"
            );
        }
    }

    /// Issue 17 (review): a pod that refused the version asked is asked again once the router
    /// would ask another (a new revision's record arrived); a kept answer is reused.
    #[tokio::test]
    async fn a_refused_version_holds_only_while_the_same_one_is_asked() {
        let checked = Checked::default();
        let v1 = route(&[("r1", 'a', 1)]);
        let asked = std::sync::atomic::AtomicU32::new(0);
        let refuse = |version: u32| {
            asked.fetch_add(1, Ordering::Relaxed);
            async move {
                Said::from_answer(
                    Err(Status::failed_precondition("this plugin targets version 2")),
                    version,
                )
            }
        };
        let first = checked
            .verdict_or_ask(&v1, "e", refuse)
            .await
            .expect("asked");
        assert!(first.is_err());
        let again = checked
            .verdict_or_ask(&v1, "e", refuse)
            .await
            .expect("kept");
        assert!(again.is_err());
        assert_eq!(
            asked.load(Ordering::Relaxed),
            1,
            "kept for the same version"
        );

        let v2 = route(&[("r2", 'a', 2)]);
        let runs_v2 = |_: u32| async { Ok(runs('a', 2)) };
        let now = checked
            .verdict_or_ask(&v2, "e", runs_v2)
            .await
            .expect("asked");
        assert_eq!(now, Ok(()), "asked again for version 2, and it runs it");
        assert_eq!(checked.verdict(&v2, "e"), Some(Ok(())));
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
