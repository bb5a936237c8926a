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

/// `airlock.host.*`: the API plugins call back (through their shim).
pub mod host {
    /// `airlock.host.v1`: `Log`, `Get`, `Put`, `Delete`, `List`, `Emit`, served by the router.
    #[allow(missing_docs, clippy::all, clippy::pedantic)]
    pub mod v1 {
        tonic::include_proto!("airlock.host.v1");
    }
}

/// W3C Trace Context for one invocation across router → shim → plugin. The router continues the
/// host application's `traceparent` (gRPC metadata) or starts a trace, and sends each call to a
/// shim as a child span; the shim does the same for the plugin, which gets `traceparent` in its
/// request line. Router and shim log one span record per call with the trace id, span ids and the
/// invocation id, so one invocation is one trace in the logs.
pub mod trace {
    /// The gRPC metadata key (and request-line field) carrying the context.
    pub const TRACEPARENT: &str = "traceparent";

    /// A trace id and the id of the current span.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct TraceContext {
        pub trace_id: [u8; 16],
        pub span_id: [u8; 8],
        /// Trace flags (bit 0: sampled).
        pub flags: u8,
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
        if s.len() != 2 * N
            || !s
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        {
            return None;
        }
        let mut out = [0u8; N];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(out)
    }

    fn random<const N: usize>() -> [u8; N] {
        let mut b = [0u8; N];
        // Without an OS random source fall back to the clock: ids must only be unlikely to
        // collide, not secret.
        if getrandom::fill(&mut b).is_err() || b.iter().all(|x| *x == 0) {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos());
            for (i, x) in b.iter_mut().enumerate() {
                *x = (t >> ((i % 16) * 8)) as u8 | 1;
            }
        }
        b
    }

    impl TraceContext {
        /// A new trace (sampled).
        pub fn root() -> Self {
            Self {
                trace_id: random(),
                span_id: random(),
                flags: 1,
            }
        }

        /// A `traceparent` value (version 00); `None` when malformed or with an all-zero id.
        pub fn parse(value: &str) -> Option<Self> {
            let mut parts = value.trim().split('-');
            let (version, trace, span, flags) =
                (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
            if version != "00" || parts.next().is_some() {
                return None;
            }
            let trace_id = unhex::<16>(trace)?;
            let span_id = unhex::<8>(span)?;
            let [flags] = unhex::<1>(flags)?;
            if trace_id == [0; 16] || span_id == [0; 8] {
                return None;
            }
            Some(Self {
                trace_id,
                span_id,
                flags,
            })
        }

        /// The context of a new span whose parent is this one.
        pub fn child(&self) -> Self {
            Self {
                span_id: random(),
                ..*self
            }
        }

        /// The `traceparent` value.
        pub fn traceparent(&self) -> String {
            format!(
                "00-{}-{}-{:02x}",
                self.trace_id(),
                self.span_id(),
                self.flags
            )
        }

        pub fn trace_id(&self) -> String {
            hex(&self.trace_id)
        }

        pub fn span_id(&self) -> String {
            hex(&self.span_id)
        }

        /// The span of a call that arrived with `traceparent` (a child of the caller's span), or
        /// the root of a new trace when the caller sent none (or a malformed one).
        pub fn continue_from(traceparent: Option<&str>) -> (Self, Option<Self>) {
            match traceparent.and_then(Self::parse) {
                Some(parent) => (parent.child(), Some(parent)),
                None => (Self::root(), None),
            }
        }
    }

    /// The shim's spans, carried to the router in the metadata of its answer (success or
    /// error). The shim cannot export traces (its pod has no egress: a collector a plugin pod
    /// can reach is one the plugin's code can reach), so it tells the router which ids it gave
    /// its span and the plugin process's span and when they ran; the router exports them
    /// (`airlock_telemetry::relay`).
    pub mod relay {
        use std::time::{Duration, SystemTime};

        use super::{hex, unhex};

        /// The metadata key.
        pub const METADATA_KEY: &str = "airlock-spans";

        /// The longest value the router reads (two spans need 2 × (16 + 2 × 20 + 2) + 1 bytes).
        pub const MAX_LEN: usize = 128;

        /// A span the shim measured: its id and its times.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub struct Measured {
            pub span_id: [u8; 8],
            pub start: SystemTime,
            pub end: SystemTime,
        }

        fn micros(t: SystemTime) -> u128 {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros())
        }

        /// The metadata value for the shim's span and, when the plugin process answered, its span.
        pub fn encode(shim: Measured, plugin: Option<Measured>) -> String {
            let one =
                |m: Measured| format!("{}-{}-{}", hex(&m.span_id), micros(m.start), micros(m.end));
            match plugin {
                Some(p) => format!("{};{}", one(shim), one(p)),
                None => one(shim),
            }
        }

        fn parse_one(s: &str) -> Option<Measured> {
            let mut it = s.split('-');
            let (id, start, end) = (it.next()?, it.next()?, it.next()?);
            if it.next().is_some() {
                return None;
            }
            // The same rules as a traceparent's span id: lowercase hex, not all zero.
            let span_id = unhex::<8>(id).filter(|b| *b != [0; 8])?;
            let at = |v: &str| -> Option<SystemTime> {
                let us: u64 = v.parse().ok()?;
                SystemTime::UNIX_EPOCH.checked_add(Duration::from_micros(us))
            };
            let (start, end) = (at(start)?, at(end)?);
            // A span that ends before it starts is no measurement (and would make a clamp
            // into it panic).
            (start <= end).then_some(Measured {
                span_id,
                start,
                end,
            })
        }

        /// Reads a value written by [`encode`]; `None` when it is malformed, too long, or names more
        /// than two spans.
        pub fn decode(value: &str) -> Option<(Measured, Option<Measured>)> {
            if value.len() > MAX_LEN {
                return None;
            }
            let mut parts = value.split(';');
            let shim = parse_one(parts.next()?)?;
            let plugin = parts.next().map(parse_one);
            if parts.next().is_some() {
                return None;
            }
            match plugin {
                None => Some((shim, None)),
                // Two spans with one id would be one span twice.
                Some(Some(p)) if p.span_id != shim.span_id => Some((shim, Some(p))),
                Some(_) => None,
            }
        }

        #[cfg(test)]
        mod tests {
            use super::*;

            fn at(us: u64) -> SystemTime {
                SystemTime::UNIX_EPOCH + Duration::from_micros(us)
            }

            #[test]
            fn the_shims_spans_round_trip_through_the_metadata() {
                let shim = Measured {
                    span_id: [0xab; 8],
                    start: at(1_000),
                    end: at(5_000),
                };
                let plugin = Measured {
                    span_id: [0x0c; 8],
                    start: at(2_000),
                    end: at(4_000),
                };
                let v = encode(shim, Some(plugin));
                assert_eq!(v, "abababababababab-1000-5000;0c0c0c0c0c0c0c0c-2000-4000");
                assert!(v.len() <= MAX_LEN);
                assert_eq!(decode(&v), Some((shim, Some(plugin))));
                assert_eq!(decode(&encode(shim, None)), Some((shim, None)));
                // The longest honest value (times of the year 2500 and beyond) still fits.
                let far = Measured {
                    span_id: [0xff; 8],
                    start: at(u64::MAX / 2),
                    end: at(u64::MAX / 2),
                };
                assert!(encode(far, Some(far)).len() <= MAX_LEN);
            }

            #[test]
            fn a_hostile_value_is_ignored() {
                for bad in [
                    "",
                    "zz",
                    "abababababababab-1-2;",
                    "abababababababab-1-2;0c0c0c0c0c0c0c0c-1-2;0d0d0d0d0d0d0d0d-1-2",
                    "0000000000000000-1-2",
                    "ABABABABABABABAB-1-2",
                    "abababababababab--1-2",
                    "abababababababab-1-2-3",
                    "abababababababab-99999999999999999999999-2",
                    &format!("abababababababab-1-{}", "9".repeat(200)),
                    // Ends before it starts (a clock stepped back, or a lie).
                    "abababababababab-9000-1000;0c0c0c0c0c0c0c0c-1-2",
                    "abababababababab-1000-9000;0c0c0c0c0c0c0c0c-2-1",
                    // The plugin's span with the shim's id.
                    "abababababababab-1-2;abababababababab-1-2",
                ] {
                    assert_eq!(decode(bad), None, "{bad:?}");
                }
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn a_traceparent_round_trips_and_a_child_keeps_the_trace() {
            let v = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
            let c = TraceContext::parse(v).unwrap();
            assert_eq!(c.traceparent(), v);
            let child = c.child();
            assert_eq!(child.trace_id, c.trace_id);
            assert_ne!(child.span_id, c.span_id);
            let (span, parent) = TraceContext::continue_from(Some(v));
            assert_eq!(parent, Some(c));
            assert_eq!(span.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        }

        #[test]
        fn malformed_or_zero_contexts_start_a_new_trace() {
            for bad in [
                "",
                "garbage",
                "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            ] {
                assert_eq!(TraceContext::parse(bad), None, "{bad}");
                let (span, parent) = TraceContext::continue_from(Some(bad));
                assert!(parent.is_none());
                assert_ne!(span.trace_id, [0; 16]);
            }
            assert_ne!(TraceContext::root().trace_id, TraceContext::root().trace_id);
        }
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
