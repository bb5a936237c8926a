//! The wire contract of Airlock: `airlock.plugin.v1` (served by the shim in every plugin pod),
//! `airlock.router.v1` (served by the router to host applications) and `airlock.host.v1` (served
//! by the router to plugin shims: the plugins' callbacks).
//! The `.proto` files under `proto/` are the only definition of these APIs; this crate compiles
//! them at build time (with `protox`, no system `protoc`) into prost messages and tonic clients
//! and servers.

/// `airlock.plugin.*`: the API a plugin pod serves.
pub mod plugin {
    /// `airlock.plugin.v1`: `Handshake` and `Invoke`, served by `airlock-shim`.
    #[allow(missing_docs, clippy::all, clippy::pedantic)]
    pub mod v1 {
        tonic::include_proto!("airlock.plugin.v1");
    }
}

/// `airlock.router.*`: the API host applications call.
pub mod router {
    /// `airlock.router.v1`: `Invoke`, `Broadcast`, `Transform`, `ListPlugins`.
    #[allow(missing_docs, clippy::all, clippy::pedantic)]
    pub mod v1 {
        tonic::include_proto!("airlock.router.v1");
    }
}

/// The mTLS identities of the router ↔ shim connections: DNS names in the certificates the
/// operator's CA issues. They are names of identities, not of hosts: nothing resolves them. The
/// router dials a plugin pod by IP and requires its certificate to carry [`plugin_identity`] of
/// the Plugin it meant; the shim admits only a client whose certificate carries
/// [`ROUTER_IDENTITY`].
pub mod identity {
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
}

/// `airlock.host.*`: the API plugins call back (through their shim).
pub mod host {
    /// `airlock.host.v1`: `Log`, `Get`, `Put`, `Delete`, `List`, `Emit`, served by the router.
    #[allow(missing_docs, clippy::all, clippy::pedantic)]
    pub mod v1 {
        tonic::include_proto!("airlock.host.v1");
    }
}

/// Encoded `google.protobuf.FileDescriptorSet` of every `.proto` in this crate (with imports), for
/// `tonic_reflection::server::Builder::register_encoded_file_descriptor_set`.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/airlock_descriptor.bin"));

#[cfg(test)]
mod tests {
    use prost::Message;

    /// Reflection serves this set; it must decode and describe every service.
    #[test]
    fn descriptor_set_describes_the_plugin_router_and_host_services() {
        let set = prost_types_free_decode(super::FILE_DESCRIPTOR_SET);
        assert!(set.contains(&"airlock.plugin.v1".to_string()), "{set:?}");
        assert!(set.contains(&"airlock.router.v1".to_string()), "{set:?}");
        assert!(set.contains(&"airlock.host.v1".to_string()), "{set:?}");
    }

    /// Decodes just the package names of a FileDescriptorSet (field 1 = file, whose field 2 =
    /// package) without pulling in prost-types.
    fn prost_types_free_decode(bytes: &[u8]) -> Vec<String> {
        #[derive(Clone, PartialEq, Message)]
        struct Set {
            #[prost(message, repeated, tag = "1")]
            file: Vec<File>,
        }
        #[derive(Clone, PartialEq, Message)]
        struct File {
            #[prost(string, optional, tag = "2")]
            package: Option<String>,
        }
        Set::decode(bytes)
            .unwrap()
            .file
            .into_iter()
            .filter_map(|f| f.package)
            .collect()
    }
}
