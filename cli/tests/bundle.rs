//! The key and bundle commands as a user runs them: the built `airlockctl` binary, files in a
//! temporary directory, exit codes and output.

// clippy.toml allows unwrap/expect inside #[test] functions only; the fixture helpers here panic
// on a failed setup just the same, which is what a test should do.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

use airlock_bundle as bundle;

const MANIFEST: &str = "\
# The signed manifest of the hello plugin (the bundle's plugin.yaml).
name: hello
version: 1.0.0
apiVersion: 1
hooks: [transform]
permissions: [log]
entryPoint: [./bin/hello]
imageDigest: sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
";

fn airlockctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_airlockctl"))
        .args(args)
        .output()
        .expect("run airlockctl")
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs airlockctl and asserts its exit code; returns (stdout, stderr).
#[track_caller]
fn expect_code(args: &[&str], code: i32) -> (String, String) {
    let out = airlockctl(args);
    let (stdout, stderr) = text(&out);
    assert_eq!(
        out.status.code(),
        Some(code),
        "airlockctl {args:?}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    (stdout, stderr)
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

/// A hello-like plugin directory.
fn plugin_dir(root: &Path, name: &str) -> PathBuf {
    let dir = root.join(name);
    fs::create_dir_all(dir.join("bin")).unwrap();
    fs::create_dir_all(dir.join("share/doc")).unwrap();
    fs::write(dir.join("plugin.yaml"), MANIFEST).unwrap();
    fs::write(dir.join("bin/hello"), b"#!/bin/sh\nexec cat\n").unwrap();
    fs::set_permissions(dir.join("bin/hello"), fs::Permissions::from_mode(0o750)).unwrap();
    fs::write(dir.join("share/doc/README"), b"hello plugin\n").unwrap();
    dir
}

/// keygen NAME in `root/keys`; returns (NAME.key, NAME.pub).
fn keygen(root: &Path, name: &str) -> (PathBuf, PathBuf) {
    let keys = root.join("keys");
    expect_code(&["keygen", name, "--dir", s(&keys)], 0);
    (
        keys.join(format!("{name}.key")),
        keys.join(format!("{name}.pub")),
    )
}

/// `airlockctl verify` with each of `keys`, expecting exit code `code`; returns (stdout, stderr).
#[track_caller]
fn verify(keys: &[&Path], bundle: &Path, code: i32) -> (String, String) {
    let mut args = vec!["verify"];
    for key in keys {
        args.extend(["--key", s(key)]);
    }
    args.push(s(bundle));
    expect_code(&args, code)
}

/// A packed and signed bundle: (bundle, key pair).
fn signed_bundle(root: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let dir = plugin_dir(root, "hello");
    let out = root.join("hello.tar.gz");
    expect_code(&["bundle", "pack", s(&dir), "-o", s(&out)], 0);
    let (private, public) = keygen(root, "release");
    expect_code(&["sign", "--key", s(&private), s(&out)], 0);
    (out, private, public)
}

#[test]
fn pack_is_reproducible_and_accepted_by_the_operator_check() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = plugin_dir(tmp.path(), "hello");
    let a = tmp.path().join("a.tar.gz");
    let b = tmp.path().join("b.tar.gz");
    let (stdout, _) = expect_code(&["bundle", "pack", s(&dir), "-o", s(&a)], 0);
    expect_code(&["bundle", "pack", s(&dir), "-o", s(&b)], 0);
    let bytes = fs::read(&a).unwrap();
    assert_eq!(bytes, fs::read(&b).unwrap(), "two packs differ");
    assert!(
        stdout.contains(&format!("digest: {}", bundle::digest(&bytes))),
        "{stdout}"
    );

    // A copy of the tree made later, with other times and a looser umask, packs the same.
    let copy = plugin_dir(tmp.path(), "copy");
    let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    fs::File::options()
        .write(true)
        .open(copy.join("share/doc/README"))
        .unwrap()
        .set_modified(old)
        .unwrap();
    fs::set_permissions(copy.join("bin/hello"), fs::Permissions::from_mode(0o777)).unwrap();
    fs::set_permissions(copy.join("plugin.yaml"), fs::Permissions::from_mode(0o666)).unwrap();
    let c = tmp.path().join("c.tar.gz");
    expect_code(&["bundle", "pack", s(&copy), "-o", s(&c)], 0);
    assert_eq!(bytes, fs::read(&c).unwrap(), "the copy packs differently");

    let unpacked = tmp.path().join("unpacked");
    let extracted = bundle::extract(&bytes, &unpacked, bundle::DEFAULT_MAX_BYTES).unwrap();
    assert_eq!(extracted.manifest.name, "hello");
    assert_eq!(
        fs::read(unpacked.join("share/doc/README")).unwrap(),
        b"hello plugin\n"
    );
    let mode = fs::metadata(unpacked.join("bin/hello"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755);
}

#[test]
fn pack_refuses_a_symlink_naming_its_path() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = plugin_dir(tmp.path(), "hello");
    let link = dir.join("bin/passwd");
    std::os::unix::fs::symlink("/etc/passwd", &link).unwrap();
    let out = tmp.path().join("x.tar.gz");
    let (_, stderr) = expect_code(&["bundle", "pack", s(&dir), "-o", s(&out)], 1);
    assert!(
        stderr.contains(s(&link)) && stderr.contains("symbolic link"),
        "{stderr}"
    );
    assert!(!out.exists(), "a refused pack must not write the bundle");
}

#[test]
fn pack_refuses_an_invalid_manifest_before_writing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = plugin_dir(tmp.path(), "hello");
    fs::write(dir.join("plugin.yaml"), MANIFEST.replace("hooks:", "hook:")).unwrap();
    let out = tmp.path().join("x.tar.gz");
    let (_, stderr) = expect_code(&["bundle", "pack", s(&dir), "-o", s(&out)], 1);
    assert!(
        stderr.contains("plugin.yaml") && stderr.contains("did you mean `hooks`"),
        "{stderr}"
    );
    assert!(!out.exists());
}

#[test]
fn sign_then_verify_reports_the_signer_and_the_manifest() {
    let tmp = tempfile::tempdir().unwrap();
    let (bundle_path, _, public) = signed_bundle(tmp.path());
    assert!(PathBuf::from(format!("{}.sig", s(&bundle_path))).exists());
    let (stdout, _) = verify(&[&public], &bundle_path, 0);
    let digest = bundle::digest(&fs::read(&bundle_path).unwrap());
    for expected in [
        format!("signed by {}", s(&public)),
        format!("digest:      {digest}"),
        "name:        hello".to_string(),
        "version:     1.0.0".to_string(),
        "hooks:       transform".to_string(),
        "permissions: log".to_string(),
        "imageDigest: sha256:0123456789abcdef".to_string(),
    ] {
        assert!(
            stdout.contains(&expected),
            "missing {expected:?} in\n{stdout}"
        );
    }
}

#[test]
fn one_flipped_byte_fails_verification_with_exit_1() {
    let tmp = tempfile::tempdir().unwrap();
    let (bundle_path, _, public) = signed_bundle(tmp.path());
    let mut bytes = fs::read(&bundle_path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    fs::write(&bundle_path, &bytes).unwrap();
    let (stdout, stderr) = verify(&[&public], &bundle_path, 1);
    assert!(stdout.is_empty(), "{stdout}");
    assert!(
        stderr.contains("does NOT verify") && stderr.contains(s(&public)),
        "{stderr}"
    );
}

/// With several keys, the one that signed is named; when none did, exit 1 lists every key tried.
#[test]
fn verify_with_several_keys_names_the_signer_or_lists_the_keys_tried() {
    let tmp = tempfile::tempdir().unwrap();
    let (bundle_path, _, public) = signed_bundle(tmp.path());
    let (_, mallory) = keygen(tmp.path(), "mallory");
    let (_, eve) = keygen(tmp.path(), "eve");

    let (stdout, _) = verify(&[&mallory, &public], &bundle_path, 0);
    assert!(
        stdout.contains(&format!("signed by {}", s(&public))),
        "{stdout}"
    );

    let (_, stderr) = verify(&[&mallory, &eve], &bundle_path, 1);
    assert!(
        stderr.contains(&format!("{}, {}", s(&mallory), s(&eve))),
        "{stderr}"
    );
}

#[test]
fn unusable_inputs_are_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    let (bundle_path, private, public) = signed_bundle(tmp.path());

    // A garbage signature file.
    let garbage = tmp.path().join("garbage.sig");
    fs::write(&garbage, "this is not a signature\n").unwrap();
    let (_, stderr) = expect_code(
        &[
            "verify",
            "--key",
            s(&public),
            "--signature",
            s(&garbage),
            s(&bundle_path),
        ],
        2,
    );
    assert!(
        stderr.contains(s(&garbage)) && stderr.contains("airlockctl sign"),
        "{stderr}"
    );

    // No signature beside the bundle.
    let unsigned = tmp.path().join("unsigned.tar.gz");
    fs::copy(&bundle_path, &unsigned).unwrap();
    let (_, stderr) = verify(&[&public], &unsigned, 2);
    assert!(stderr.contains("no signature at"), "{stderr}");

    // A private key where a public key belongs, a missing bundle, no --key at all.
    verify(&[&private], &bundle_path, 2);
    verify(&[&public], &tmp.path().join("nope.tar.gz"), 2);
    verify(&[], &bundle_path, 2);
}

#[test]
fn keygen_writes_a_private_key_only_its_owner_reads_and_never_overwrites() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = tmp.path().join("keys");
    let (stdout, _) = expect_code(&["keygen", "dev", "--dir", s(&keys)], 0);
    let private = keys.join("dev.key");
    let public = keys.join("dev.pub");
    let mode = fs::metadata(&private).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let private_pem = fs::read_to_string(&private).unwrap();
    let public_pem = fs::read_to_string(&public).unwrap();
    assert!(private_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
    assert!(public_pem.starts_with("-----BEGIN PUBLIC KEY-----"));
    assert!(stdout.contains(public_pem.trim()), "{stdout}");
    assert!(
        stdout.contains("spec:") && stdout.contains("ed25519: ") && stdout.contains("- name: dev"),
        "{stdout}"
    );
    assert!(
        !stdout.contains(private_pem.lines().nth(1).unwrap()),
        "the private key must not be printed"
    );

    let (_, stderr) = expect_code(&["keygen", "dev", "--dir", s(&keys)], 1);
    assert!(
        stderr.contains("already exists") && stderr.contains("--force"),
        "{stderr}"
    );
    assert_eq!(fs::read_to_string(&private).unwrap(), private_pem);
    assert_eq!(fs::read_to_string(&public).unwrap(), public_pem);

    // Only the .pub left over is enough to refuse: no half-replaced pair.
    fs::remove_file(&private).unwrap();
    expect_code(&["keygen", "dev", "--dir", s(&keys)], 1);
    assert!(!private.exists());

    expect_code(&["keygen", "dev", "--dir", s(&keys), "--force"], 0);
    assert_ne!(fs::read_to_string(&public).unwrap(), public_pem);
    let mode = fs::metadata(&private).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn verify_help_documents_the_exit_codes() {
    let (stdout, _) = expect_code(&["verify", "--help"], 0);
    assert!(stdout.contains("Exit codes:"), "{stdout}");
    for line in ["  0  ", "  1  ", "  2  "] {
        assert!(stdout.contains(line), "{stdout}");
    }
    let (stdout, _) = expect_code(&["--help"], 0);
    assert!(
        stdout.contains("keygen") && stdout.contains("never leaves this machine"),
        "{stdout}"
    );
}
