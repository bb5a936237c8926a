//! What a Plugin that does not run (`spec.enabled: false`, or auto-disabled) keeps in the cluster.
//!
//! Decided and measured for issue 13: every NetworkPolicy costs the network policy controller
//! work on each sync (kube-router's iptables-restore used ≈ 73 % of a core keeping 1,000 of them,
//! all of disabled plugins), every Service an EndpointSlice and proxy rules, every Deployment a
//! ReplicaSet and status writes by the controller manager. None of it serves a plugin without
//! pods. So:
//!
//! - a Plugin that has **never run** (no Deployment of its own) gets no child at all; enabling it
//!   creates them in the usual order (identity, NetworkPolicy, Service, Deployment), which costs a
//!   few writes next to the pod start that dominates anyway;
//! - a Plugin that **stops** keeps its Deployment scaled to zero (its ReplicaSets are the pod
//!   templates a rollback to the last good revision re-applies), its ServiceAccount and Secrets
//!   (idle objects no controller works on); its NetworkPolicy and Service go once no pod can be
//!   left: [`POD_GONE_AFTER`] after the Deployment reached zero pods. Until then the policy keeps
//!   confining pods that are still terminating.

use std::time::{Duration, Instant};

/// How long after its Deployment reports zero pods a stopped plugin's last pod may still be
/// terminating: the pod's grace period (the template sets none: Kubernetes' default, 30 s) and
/// a margin for the kubelet.
pub const POD_GONE_AFTER: Duration = Duration::from_secs(45);

/// What happens to the NetworkPolicy and Service of a Plugin that does not run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Network {
    /// Pods may still be there: the NetworkPolicy must keep confining them. Look again after
    /// `recheck_after`, if set.
    Keep { recheck_after: Option<Duration> },
    /// No pod can be left: remove both.
    Remove,
}

/// `at_zero_since`: since when the Deployment has reported zero pods for its current spec
/// (`None` while it does not).
pub fn network(at_zero_since: Option<Instant>, now: Instant) -> Network {
    let Some(since) = at_zero_since else {
        return Network::Keep {
            recheck_after: None,
        };
    };
    let elapsed = now.saturating_duration_since(since);
    if elapsed >= POD_GONE_AFTER {
        Network::Remove
    } else {
        Network::Keep {
            recheck_after: Some(POD_GONE_AFTER - elapsed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_network_objects_go_only_once_no_pod_can_be_left() {
        let t0 = Instant::now();
        // Pods are still scaling down: keep, and the Deployment's next status update wakes us.
        assert_eq!(
            network(None, t0),
            Network::Keep {
                recheck_after: None
            }
        );
        // Zero pods for 10 s: a pod may still be terminating for the rest of the window.
        assert_eq!(
            network(Some(t0), t0 + Duration::from_secs(10)),
            Network::Keep {
                recheck_after: Some(POD_GONE_AFTER - Duration::from_secs(10))
            }
        );
        assert_eq!(network(Some(t0), t0 + POD_GONE_AFTER), Network::Remove);
        assert_eq!(network(Some(t0), t0 + POD_GONE_AFTER * 10), Network::Remove);
    }
}
