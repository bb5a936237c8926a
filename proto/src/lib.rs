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
