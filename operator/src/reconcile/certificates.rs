//! The plugin's and the router's mTLS identities: the CA (loaded or created once per term), the
//! router's certificate (kept fresh for the term), and per Plugin the named pipeline steps
//! [`ensure_identity`] (certificate issuing) and [`hourly_checks`] (storage adoption).

use std::time::{Duration, Instant, SystemTime};

use airlock_crds::Plugin;
use airlock_tls::pki::Ca;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use tracing::{info, warn};

use super::caches::HOURLY_CHECKS_EVERY;
use super::watches::Watches;
use super::{Context, Error};
use crate::build::{self, FIELD_MANAGER};
use crate::certs;
use crate::ownership::{Owner, Ownership, ownership};

/// Loads (or creates) the CA, retrying until it works: no plugin can be served without it.
pub(super) async fn load_ca(ctx: &Context) -> Ca {
    let mut wait = Duration::from_secs(1);
    loop {
        match certs::load_or_create_ca(&ctx.client, &ctx.build.router_namespace).await {
            Ok(ca) => return ca,
            Err(e) => {
                warn!(error = %e, "cannot load the plugin CA; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// Keeps the router's certificate issued and fresh for as long as this term lasts.
pub(super) async fn maintain_router_certificate(client: Client, namespace: String, ca: Ca) {
    let meta = certs::operator_secret_meta(certs::ROUTER_TLS_SECRET, &namespace);
    loop {
        let next = match certs::ensure_certificate(
            &client,
            meta.clone(),
            airlock_core::identity::ROUTER_IDENTITY,
            &ca,
        )
        .await
        {
            Ok(_) => HOURLY_CHECKS_EVERY,
            Err(e) => {
                warn!(error = %e, "cannot issue the router's certificate; retrying");
                Duration::from_secs(5)
            }
        };
        tokio::time::sleep(next).await;
    }
}

/// The plugin's identity, before anything that runs it: its TLS Secret holds a good certificate
/// for its identity ([`issue_plugin_certificate`]), renewed on its own clock
/// ([`PluginCaches::certificate_due`](super::caches::PluginCaches::certificate_due)), by uid: a
/// re-created Plugin gets one at once, its old Secret having been garbage-collected.
pub(super) async fn ensure_identity(
    plugin: &Plugin,
    ctx: &Context,
    watches: &Watches,
) -> Result<(), Error> {
    let ns = plugin.namespace().ok_or(Error::NoNamespace)?;
    // A plugin without pods needs no certificate (issue 13: a disabled Plugin costs nothing);
    // enabling it issues one before its pods start. Renewal has its own clock.
    if plugin.should_run() {
        issue_plugin_certificate(plugin, ctx, watches, &ns).await?;
    }
    Ok(())
}

/// What is looked at once an hour per Plugin (by uid: a re-created Plugin at once), not on every
/// reconcile: the `PluginStorage` an installer created for it, which nobody controls, is adopted
/// ([`adopt_storage`]). Never needed before the pods start (the
/// storage is reached through the router), so it may run beside the children's writes.
pub(super) async fn hourly_checks(plugin: &Plugin, ctx: &Context) -> Result<(), Error> {
    let uid = plugin.uid().unwrap_or_default();
    let ns = plugin.namespace().ok_or(Error::NoNamespace)?;
    let now = Instant::now();
    if !ctx.caches.hourly_checks_due(&uid, now) {
        return Ok(());
    }
    adopt_storage(plugin, ctx, &ns).await?;
    ctx.caches.hourly_checks_passed(&uid, now);
    Ok(())
}

/// Renews the certificate of a plugin that keeps serving an earlier revision while its spec is
/// not rolled out (its fetch or verification failed, its plan is blocked, an object is in the
/// way): its pods would stop serving at the certificate's end. Nothing is written while the
/// certificate is good.
pub(super) async fn renew_certificate(
    plugin: &Plugin,
    ctx: &Context,
    watches: &Watches,
) -> Result<(), Error> {
    let ns = plugin.namespace().ok_or(Error::NoNamespace)?;
    issue_plugin_certificate(plugin, ctx, watches, &ns).await
}

/// Issues (or renews) the certificate of the plugin's mTLS identity into its TLS Secret when one
/// is due: when this process knows of none for the Plugin (a new Plugin, or a restarted operator
/// — which cannot read the Secret — finding none it may keep in the status), or when the one it
/// issued or kept has a third of its lifetime left.
async fn issue_plugin_certificate(
    plugin: &Plugin,
    ctx: &Context,
    watches: &Watches,
    ns: &str,
) -> Result<(), Error> {
    let uid = plugin.uid().unwrap_or_default();
    let (now, wall) = (Instant::now(), SystemTime::now());
    let Some(why) = ctx.caches.certificate_due(&uid, now) else {
        return Ok(());
    };
    // A restarted operator or a new leader keeps the certificate the status records (the
    // operator writes the status after the Secret, and tenants cannot write it) while it is of
    // today's CA and lifetime: at 1,000 Plugins each leader change cost 1,000 Secret writes and
    // as many reloads in the plugin pods.
    if ctx.caches.certificate_renewal_in(&uid, now).is_none()
        && let Some(record) = plugin.status.as_ref().and_then(|s| s.certificate.clone())
        && let Some(left) =
            certs::kept_for(&record, &watches.ca, ctx.plugin_certificate_lifetime, wall)
    {
        ctx.caches.certificate_renews_at(&uid, now + left);
        ctx.caches.record_certificate(&uid, record);
        return Ok(());
    }
    let identity = airlock_core::identity::plugin_identity(ns, &plugin.name_any());
    let meta = build::tls_secret::plugin_tls_meta(plugin);
    let name = meta.name.clone().unwrap_or_default();
    let issued = certs::issue_plugin_certificate(
        &ctx.client,
        meta,
        &identity,
        &uid,
        &watches.ca,
        ctx.plugin_certificate_lifetime,
        wall,
    );
    match issued.await {
        Ok(()) => {}
        Err(certs::CertError::Kube(e)) => {
            return Err(Error::from_secret_write(e, plugin, ns, &name));
        }
        Err(e) => return Err(e.into()),
    }
    ctx.caches
        .certificate_issued(&uid, now, ctx.plugin_certificate_lifetime);
    ctx.caches.record_certificate(
        &uid,
        certs::certificate_record(&watches.ca, ctx.plugin_certificate_lifetime, wall),
    );
    info!(plugin = %plugin.name_any(), namespace = ns, reason = why, "issued the plugin's certificate");
    Ok(())
}

/// The `PluginStorage` an installer created for the plugin (initial data) becomes owned by it, so
/// it is deleted with the Plugin (the router sets the owner only on a PluginStorage it creates
/// itself, for a plugin that had none).
async fn adopt_storage(plugin: &Plugin, ctx: &Context, ns: &str) -> Result<(), Error> {
    let api = Api::<airlock_crds::PluginStorage>::namespaced(ctx.client.clone(), ns);
    let Some(storage) = api.get_opt(&plugin.name_any()).await? else {
        return Ok(());
    };
    let uid = plugin.uid().unwrap_or_default();
    if storage
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.uid == uid)
    {
        return Ok(());
    }
    // Only a storage nobody controls is adopted; one another object controls (or an earlier
    // Plugin's) is left alone: the ownership step reports it before anything is applied.
    if ownership(Some(&storage.metadata), &plugin.name_any(), &uid)
        != Ownership::Foreign(Owner::Nobody)
    {
        warn!(plugin = %plugin.name_any(), namespace = ns, "not adopting a PluginStorage that is not this Plugin's to adopt");
        return Ok(());
    }
    let patch = json!({
        "apiVersion": "airlock.dev/v1alpha1",
        "kind": "PluginStorage",
        "metadata": {"name": plugin.name_any(), "ownerReferences": build::labels::owner(plugin)},
    });
    api.patch(
        &plugin.name_any(),
        &PatchParams::apply(FIELD_MANAGER),
        &Patch::Apply(&patch),
    )
    .await?;
    info!(plugin = %plugin.name_any(), namespace = ns, "adopted the plugin's PluginStorage");
    Ok(())
}
