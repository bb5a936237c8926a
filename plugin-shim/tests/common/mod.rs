//! Helpers shared by the shim's integration tests. (Each test crate uses some of them.)
#![allow(dead_code)]

use flate2::Compression;
use flate2::write::GzEncoder;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

/// The sandbox of the plugin process, applied by the built shim binary (these tests run the shim
/// in-process, so their own executable is the test harness).
pub fn sandbox() -> airlock_plugin_shim::cli::SandboxArgs {
    airlock_plugin_shim::cli::SandboxArgs {
        allow_network: false,
        max_open_files: 256,
        max_processes: None,
        sandbox_launcher: Some(env!("CARGO_BIN_EXE_airlock-shim").into()),
    }
}

/// A gzipped tar of `(path, text)` files, each mode 0755: a plugin bundle.
pub fn tgz(files: &[(&str, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::default()));
    for (path, text) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(text.len() as u64);
        h.set_mode(0o755);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, path, text.as_bytes()).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap()
}

/// A CA of its own, as the operator runs one, issuing identities.
pub struct Pki {
    pub ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    pub fn new() -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        let ca_pem = params.self_signed(&key).unwrap().pem();
        Self {
            ca_pem,
            issuer: Issuer::new(params, key),
        }
    }

    /// (certificate PEM, key PEM) for `identity`.
    pub fn issue(&self, identity: &str) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(vec![identity.to_string()]).unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// Writes a certificate for `identity` into `dir` as the operator mounts it for a plugin.
    pub fn write_plugin_tls(&self, dir: &std::path::Path, identity: &str) {
        let (cert, key) = self.issue(identity);
        std::fs::write(dir.join("tls.crt"), cert).unwrap();
        std::fs::write(dir.join("tls.key"), key).unwrap();
        std::fs::write(dir.join("ca.crt"), &self.ca_pem).unwrap();
    }
}
