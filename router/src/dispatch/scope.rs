//! Which plugins a broadcast or a pipeline covers ([`Scope`]): the gRPC edge decides it from the
//! caller's identity and bindings; the router reads the route table through it.

use std::sync::Arc;

use airlock_core::{Hook, PluginKey};

use crate::table::{HookRoute, Route, RouteTable};

/// Which plugins a broadcast or a pipeline covers: those of one namespace that the caller may call
/// (the gRPC edge decides both from the caller's identity and the bindings). One namespace, so a
/// pipeline's priority orders only plugins that namespace's owner put there: no tenant's plugin
/// runs before another tenant's in the same pipeline.
#[derive(Clone, Copy)]
pub struct Scope<'a> {
    pub namespace: &'a str,
    /// Whether the caller may call this hook of this plugin; the others are skipped.
    pub may_call: &'a (dyn Fn(&PluginKey, Hook) -> bool + Sync),
}

impl std::fmt::Debug for Scope<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scope")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl Scope<'_> {
    /// The subscribers of `hook` in the scope's namespace the caller may call (in pipeline order),
    /// and those it may not.
    pub(super) fn subscribers(
        &self,
        table: &RouteTable,
        hook: Hook,
    ) -> (Vec<(Arc<Route>, HookRoute)>, Vec<PluginKey>) {
        let (allowed, denied): (Vec<_>, Vec<_>) = table
            .subscribers(hook, Some(self.namespace))
            .into_iter()
            .partition(|(route, _)| (self.may_call)(&route.plugin, hook));
        (
            allowed,
            denied.into_iter().map(|(r, _)| r.plugin.clone()).collect(),
        )
    }
}
