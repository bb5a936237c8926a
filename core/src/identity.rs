//! The mTLS identities of the router ↔ shim connections: DNS names in the certificates the
//! operator's CA issues. They are names of identities, not of hosts: nothing resolves them. The
//! router dials a plugin pod by IP and requires its certificate to carry [`plugin_identity`] of
//! the Plugin it meant; the shim admits only a client whose certificate carries
//! [`ROUTER_IDENTITY`].

/// The router's identity (its client certificate's DNS name).
pub const ROUTER_IDENTITY: &str = "router.airlock.internal";

/// The identity of the Plugin `name` in `namespace`. Both are DNS labels (Kubernetes names),
/// so the result is a valid DNS name.
pub fn plugin_identity(namespace: &str, name: &str) -> String {
    format!("{name}.{namespace}.plugin.airlock.internal")
}

/// Namespace and name of a plugin identity, `None` for anything else.
pub fn parse_plugin_identity(identity: &str) -> Option<(&str, &str)> {
    let rest = identity.strip_suffix(".plugin.airlock.internal")?;
    let (name, namespace) = rest.split_once('.')?;
    (!name.is_empty() && !namespace.is_empty() && !namespace.contains('.'))
        .then_some((namespace, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plugin_identity_names_its_plugin_and_nothing_else() {
        let id = plugin_identity("team-a", "hello");
        assert_eq!(id, "hello.team-a.plugin.airlock.internal");
        assert_eq!(parse_plugin_identity(&id), Some(("team-a", "hello")));
        assert_eq!(parse_plugin_identity(ROUTER_IDENTITY), None);
        assert_eq!(parse_plugin_identity("a.b.c.plugin.airlock.internal"), None);
    }
}
