//! The in-pod runtime of an Airlock plugin (`airlock-shim`) and the SDK plugin authors link.
//! This crate never depends on `kube`: it only sees its bundle, its child process and gRPC.
