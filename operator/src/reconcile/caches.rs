//! Everything the controller remembers about one Plugin between reconciles, in one place, keyed
//! by the Plugin's uid and dropped when the Plugin is deleted.
//!
//! Why by uid: a Plugin deleted and re-created under the same name is a new object whose children
//! Kubernetes has garbage-collected. Keyed by namespace/name, the memory of the old one ("its
//! bundle Secret exists", "its certificate was checked an hour ago") would make the controller
//! skip creating the new one's Secrets, and its pod would never start.
//!
//! Watch caches of the children (what the cluster has) live in [`super::watches`]; this is what
//! this process did or saw last, so that a steady state costs no API request.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use airlock_crds::plugin::{PluginCertificate, PluginStatus};

use crate::applied::Applied;

/// How long a plugin's storage ownership, once found good, is not looked at again.
pub const HOURLY_CHECKS_EVERY: Duration = Duration::from_secs(3600);

#[derive(Debug, Default)]
pub struct PluginCaches {
    /// What this process applied to each child: an unchanged reconcile writes nothing.
    /// Shared with the watches, which drop the echoes of these applies ([`super::triggers`]).
    pub applied: std::sync::Arc<Applied>,
    plugins: Mutex<HashMap<String, PerPlugin>>,
}

#[derive(Debug, Default)]
struct PerPlugin {
    /// The status this process last wrote. The watch cache can lag behind our own writes;
    /// comparing with it would repeat Events and audit records for the same transition.
    last_written: Option<PluginStatus>,
    /// The status whose transitions are in the audit stream but whose write failed (the API
    /// server went away mid-rollout): the next attempt records only what changed since, not the
    /// same transitions again. Only what [`crate::status::transitions`] and
    /// [`crate::status::event`] read is kept; dropped once a status is written.
    recorded_unwritten: Option<PluginStatus>,
    /// The status the last Event of this process described (`Some(None)`: the Plugin had no
    /// status when progress was first left untold); `None`: nothing known, the previous status
    /// stands in ([`crate::status::event`]).
    told: Option<Option<PluginStatus>>,
    /// Bundle Secrets known to exist: immutable and named by digest, so existing means right.
    /// (Not watched: a watch on Secrets would need `list` on every Secret in the cluster.)
    bundle_secrets: HashSet<String>,
    /// Configuration ConfigMaps this process wrote, as `name@digest` (a live one keeps its name
    /// while its content changes).
    config_maps: HashSet<String>,
    /// When the storage check last passed.
    checked_at: Option<Instant>,
    /// When the certificate this process issued for the Plugin is due for renewal (the Secret
    /// itself is not read: see [`PluginCaches::certificate_due`]).
    /// (On the monotonic clock: a wall clock stepped back must not delay a renewal.)
    certificate_renew_at: Option<Instant>,
    /// What the status says of that certificate (`status.certificate`), written with the next
    /// status.
    certificate: Option<PluginCertificate>,
    /// Since when the Plugin, not running, has had its Deployment at zero pods
    /// ([`crate::stopped::network`]).
    stopped_since: Option<Instant>,
}

impl PluginCaches {
    fn with<T>(&self, uid: &str, f: impl FnOnce(&mut PerPlugin) -> T) -> T {
        let mut plugins = self.plugins.lock().unwrap_or_else(|e| e.into_inner());
        f(plugins.entry(uid.to_string()).or_default())
    }

    fn read<T>(&self, uid: &str, f: impl FnOnce(&PerPlugin) -> T) -> Option<T> {
        let plugins = self.plugins.lock().unwrap_or_else(|e| e.into_inner());
        plugins.get(uid).map(f)
    }

    /// The status this process last wrote for the Plugin `uid`.
    pub fn last_written(&self, uid: &str) -> Option<PluginStatus> {
        self.read(uid, |p| p.last_written.clone()).flatten()
    }

    pub fn written(&self, uid: &str, status: PluginStatus) {
        self.with(uid, |p| {
            p.last_written = Some(status);
            p.recorded_unwritten = None;
        });
    }

    /// The audit stream has the transitions to `status` of the Plugin `uid`, whose write is
    /// about to be tried ([`Self::written`] once it succeeded).
    pub fn recorded(&self, uid: &str, status: PluginStatus) {
        self.with(uid, |p| p.recorded_unwritten = Some(status));
    }

    /// The status the audit stream went on to while its write failed, if one did.
    pub fn recorded_unwritten(&self, uid: &str) -> Option<PluginStatus> {
        self.read(uid, |p| p.recorded_unwritten.clone()).flatten()
    }

    /// The status the last Event about the Plugin `uid` described, if this process knows it.
    pub fn told(&self, uid: &str) -> Option<Option<PluginStatus>> {
        self.read(uid, |p| p.told.clone()).flatten()
    }

    pub fn tell(&self, uid: &str, status: Option<PluginStatus>) {
        self.with(uid, |p| p.told = Some(status));
    }

    /// Whether the bundle Secret `name` of the Plugin `uid` is known to exist.
    pub fn bundle_secret_known(&self, uid: &str, name: &str) -> bool {
        self.read(uid, |p| p.bundle_secrets.contains(name))
            .unwrap_or(false)
    }

    pub fn bundle_secret_exists(&self, uid: &str, name: &str) {
        self.with(uid, |p| p.bundle_secrets.insert(name.to_string()));
    }

    /// Whether this process wrote the configuration ConfigMap `name` of the Plugin `uid` with the
    /// configuration of `digest`.
    pub fn config_map_known(&self, uid: &str, name: &str, digest: &str) -> bool {
        let key = format!("{name}@{digest}");
        self.read(uid, |p| p.config_maps.contains(&key))
            .unwrap_or(false)
    }

    pub fn config_map_written(&self, uid: &str, name: &str, digest: &str) {
        self.with(uid, |p| p.config_maps.insert(format!("{name}@{digest}")));
    }

    /// Whether the hourly checks of the Plugin `uid` are due at `now`.
    pub fn hourly_checks_due(&self, uid: &str, now: Instant) -> bool {
        self.read(uid, |p| p.checked_at)
            .flatten()
            .is_none_or(|at| now.saturating_duration_since(at) >= HOURLY_CHECKS_EVERY)
    }

    pub fn hourly_checks_passed(&self, uid: &str, now: Instant) {
        self.with(uid, |p| p.checked_at = Some(now));
    }

    /// Why the Plugin `uid` needs a new certificate at `now`, if it does: this process knows of
    /// none (it cannot read the Secret; one recorded in the Plugin's status may still be kept:
    /// `reconcile::certificates`), or the one it issued or kept has less than a third of its
    /// lifetime left.
    pub fn certificate_due(&self, uid: &str, now: Instant) -> Option<&'static str> {
        match self.read(uid, |p| p.certificate_renew_at).flatten() {
            None => Some("this operator knows of none yet"),
            Some(at) if now >= at => Some("its certificate has a third of its lifetime left"),
            Some(_) => None,
        }
    }

    /// Since when the Plugin `uid` has been seen stopped (its Deployment at zero pods): `now` the
    /// first time.
    pub fn stopped_since(&self, uid: &str, now: Instant) -> Instant {
        self.with(uid, |p| *p.stopped_since.get_or_insert(now))
    }

    /// The Plugin `uid` runs (or is scaling down): the clock of [`Self::stopped_since`] restarts.
    pub fn not_stopped(&self, uid: &str) {
        self.with(uid, |p| p.stopped_since = None);
    }

    /// A certificate valid for `lifetime` was issued for the Plugin `uid` at `now`: it is
    /// renewed with a third of that left.
    pub fn certificate_issued(&self, uid: &str, now: Instant, lifetime: Duration) {
        self.certificate_renews_at(uid, now + lifetime * 2 / 3);
    }

    /// The certificate of the Plugin `uid`, which this process found recorded in its status and
    /// keeps, is renewed at `at`.
    pub fn certificate_renews_at(&self, uid: &str, at: Instant) {
        self.with(uid, |p| p.certificate_renew_at = Some(at));
    }

    /// The record of the Plugin `uid`'s certificate for its status.
    pub fn record_certificate(&self, uid: &str, record: PluginCertificate) {
        self.with(uid, |p| p.certificate = Some(record));
    }

    /// What the status of the Plugin `uid` says of its certificate, if this process issued or
    /// kept one.
    pub fn certificate_record(&self, uid: &str) -> Option<PluginCertificate> {
        self.read(uid, |p| p.certificate.clone()).flatten()
    }

    /// How long until the certificate this process issued for the Plugin `uid` is due for
    /// renewal, if it issued one: the latest moment to look at the Plugin again, whatever else
    /// wakes it (a steady Plugin is otherwise looked at every few minutes, more than a short
    /// certificate lifetime's third).
    pub fn certificate_renewal_in(&self, uid: &str, now: Instant) -> Option<Duration> {
        let at = self.read(uid, |p| p.certificate_renew_at).flatten()?;
        Some(at.saturating_duration_since(now))
    }

    /// Keeps only the Plugins whose uid `alive` accepts: a sweep for deletions no delete event
    /// reported (a watch that relists after a gap emits none).
    pub fn retain(&self, alive: &dyn Fn(&str) -> bool) {
        self.applied.retain(alive);
        self.plugins
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|uid, _| alive(uid));
    }

    /// The Plugin `uid` is gone: so is everything remembered about it.
    pub fn forget(&self, uid: &str) {
        self.applied.forget(uid);
        self.plugins
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(uid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUNDLE_SECRET: &str = "hello-bundle-0123";

    /// The Plugin `uid` as a reconcile leaves it: its bundle Secret exists, its certificate was
    /// just issued and its storage checked, its status was written.
    fn remember(caches: &PluginCaches, uid: &str, now: Instant) {
        caches.bundle_secret_exists(uid, BUNDLE_SECRET);
        caches.hourly_checks_passed(uid, now);
        caches.certificate_issued(uid, now, Duration::from_secs(600));
        caches.written(uid, PluginStatus::default());
    }

    /// Nothing is believed about the Plugin `uid`: each of its objects is looked at again.
    fn assert_knows_nothing_of(caches: &PluginCaches, uid: &str, now: Instant) {
        assert!(!caches.bundle_secret_known(uid, BUNDLE_SECRET), "{uid}");
        assert!(caches.hourly_checks_due(uid, now), "{uid}");
        assert!(caches.certificate_due(uid, now).is_some(), "{uid}");
        assert_eq!(caches.last_written(uid), None, "{uid}");
    }

    #[test]
    fn a_plugin_recreated_under_the_same_name_starts_from_nothing() {
        let caches = PluginCaches::default();
        let now = Instant::now();
        // The first "hello".
        remember(&caches, "uid-1", now);
        assert!(caches.bundle_secret_known("uid-1", BUNDLE_SECRET));
        assert!(!caches.hourly_checks_due("uid-1", now));
        assert_eq!(caches.last_written("uid-1"), Some(PluginStatus::default()));

        // Deleted and applied again with the same name and bundle: a new uid, whose Secrets
        // Kubernetes has not created yet. Nothing of the first one may be believed for it.
        assert_knows_nothing_of(&caches, "uid-2", now);
    }

    #[test]
    fn forgetting_a_plugin_drops_everything_about_it() {
        let caches = PluginCaches::default();
        let now = Instant::now();
        remember(&caches, "uid-1", now);
        remember(&caches, "uid-2", now);
        caches.forget("uid-1");
        assert_knows_nothing_of(&caches, "uid-1", now);
        assert!(
            caches.bundle_secret_known("uid-2", BUNDLE_SECRET),
            "another Plugin is kept"
        );
    }

    /// A deletion no delete event reported is swept all the same.
    #[test]
    fn a_sweep_drops_the_plugins_that_no_longer_exist() {
        let caches = PluginCaches::default();
        let now = Instant::now();
        remember(&caches, "uid-1", now);
        remember(&caches, "uid-2", now);
        caches.retain(&|uid| uid == "uid-2");
        assert_knows_nothing_of(&caches, "uid-1", now);
        assert!(caches.bundle_secret_known("uid-2", BUNDLE_SECRET));
    }

    #[test]
    fn the_checks_come_due_again_after_an_hour() {
        let caches = PluginCaches::default();
        let now = Instant::now();
        caches.hourly_checks_passed("u", now);
        assert!(!caches.hourly_checks_due("u", now + Duration::from_secs(3599)));
        assert!(caches.hourly_checks_due("u", now + HOURLY_CHECKS_EVERY));
    }
}
