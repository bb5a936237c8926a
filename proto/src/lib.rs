//! The wire contract of Airlock: `airlock.plugin.v1` (served by the shim), `airlock.router.v1`
//! (served to host applications) and `airlock.host.v1` (plugin callbacks). The `.proto` files in
//! this crate are the only definition of these APIs.
