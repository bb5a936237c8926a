//! The one fixture of the e2e tests that run plugins: a namespace of its own, governed by a trust
//! policy of its own (unsigned plugins allowed, with the permissions the test names), under Pod
//! Security "restricted", with Airlock installed.
//!
//! The policy is cluster-scoped, so a test that fails or panics must not leave it behind:
//! [`Sandbox::teardown`] deletes the namespace (the operator honours the Plugins' finalizers) and
//! the policy and reports what went wrong; if a test never gets there (a panic), `Drop` deletes
//! both without waiting, through `kubectl`, which needs no async runtime.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use airlock_crds::Plugin;
use anyhow::{Context, Result, ensure};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use crate::TestNamespace;
use crate::install::{images_env, workspace};

pub struct Sandbox {
    pub client: Client,
    pub ns: TestNamespace,
    pub policy: String,
    torn_down: bool,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("ns", &self.ns)
            .field("policy", &self.policy)
            .finish()
    }
}

impl Sandbox {
    /// A sandbox whose trust level Untrusted allows `permissions`.
    pub async fn new(prefix: &str, permissions: &[&str]) -> Result<Self> {
        crate::install::ensure_installed().await?;
        let client = crate::client().await?;
        let suffix = crate::unique_suffix();
        let ns = TestNamespace::create(
            &client,
            prefix,
            &[
                ("airlock.dev/e2e-sandbox", suffix.as_str()),
                ("pod-security.kubernetes.io/enforce", "restricted"),
                ("pod-security.kubernetes.io/enforce-version", "latest"),
            ],
        )
        .await?;
        let policy = format!("e2e-{prefix}-{suffix}");
        // From here on, Drop cleans up whatever happens next.
        let sandbox = Self {
            client: client.clone(),
            ns,
            policy: policy.clone(),
            torn_down: false,
        };
        let body = json!({
            "apiVersion": "airlock.dev/v1alpha1",
            "kind": "PluginTrustPolicy",
            "metadata": {"name": policy},
            "spec": {
                "keys": [],
                "namespaces": {"matchLabels": {"airlock.dev/e2e-sandbox": suffix}},
                "trustLevels": {"Untrusted": {
                    "allowUnsigned": true, "maxMemory": "64Mi", "maxCpu": "250m",
                    "maxTimeout": "2s", "permissions": permissions
                }}
            }
        });
        Api::<airlock_crds::PluginTrustPolicy>::all(client)
            .patch(
                &policy,
                &PatchParams::apply("airlock-e2e").force(),
                &Patch::Apply(&body),
            )
            .await
            .context("applying the trust policy")?;
        Ok(sandbox)
    }

    pub fn ns(&self) -> &str {
        &self.ns.name
    }

    /// Makes the sandbox policy trust one key `release`, for images (`cosign`, a cosign.pub) and
    /// bundles (`ed25519`), at the Untrusted level the sandbox configures.
    pub async fn trust_release_key(&self, cosign: &str, ed25519: &str) -> Result<()> {
        Api::<airlock_crds::PluginTrustPolicy>::all(self.client.clone())
            .patch(
                &self.policy,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"keys": [{
                    "name": "release", "cosign": cosign, "ed25519": ed25519,
                    "trustLevel": "Untrusted",
                }]}})),
            )
            .await
            .context("trusting the release key in the sandbox policy")?;
        Ok(())
    }

    /// A new release key pair made in `dir` — cosign's (`cosign.key`, for `signing::sign_classic`)
    /// and an ed25519 one for bundles — and trusted by the sandbox policy; returns the bundle
    /// signing key.
    pub async fn trust_new_release_keys(&self, dir: &std::path::Path) -> Result<String> {
        crate::signing::cosign(dir, &["generate-key-pair"], None)?;
        let (bundle_private, bundle_public) = airlock_bundle::signing::generate()?;
        let cosign_public = std::fs::read_to_string(dir.join("cosign.pub"))?;
        self.trust_release_key(&cosign_public, &bundle_public)
            .await?;
        Ok(bundle_private)
    }

    /// Merges `limits` into the sandbox policy's Untrusted level (e.g. `{"maxCpu": "1"}` for a
    /// bench that needs more than the tests do).
    pub async fn set_limits(&self, limits: serde_json::Value) -> Result<()> {
        Api::<airlock_crds::PluginTrustPolicy>::all(self.client.clone())
            .patch(
                &self.policy,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"trustLevels": {"Untrusted": limits}}})),
            )
            .await
            .context("changing the sandbox's trust level")?;
        Ok(())
    }

    /// The hello bundle bound to `image_digest`, signed with the ed25519 `bundle_key`, in the
    /// ConfigMap `<name>-bundle`; and the Plugin `name` running `image` from it.
    pub async fn deploy_signed_hello(
        &self,
        work: &std::path::Path,
        name: &str,
        image: &str,
        image_digest: &str,
        bundle_key: &str,
    ) -> Result<()> {
        let bundle = format!("{name}-bundle");
        let no_more = json!({});
        self.deploy_signed_hello_with(
            work,
            name,
            &bundle,
            image,
            image_digest,
            bundle_key,
            no_more,
        )
        .await
    }

    /// [`Self::deploy_signed_hello`] with the bundle in the ConfigMap `bundle_name` (a new one
    /// for an upgrade: bundle ConfigMaps are created, never changed) and `spec` merged into the
    /// Plugin's spec (e.g. `{"enabled": false}`), in one apply.
    #[allow(clippy::too_many_arguments)]
    pub async fn deploy_signed_hello_with(
        &self,
        work: &std::path::Path,
        name: &str,
        bundle_name: &str,
        image: &str,
        image_digest: &str,
        bundle_key: &str,
        spec: Value,
    ) -> Result<()> {
        use airlock_bundle::signing;
        let bundle = crate::signing::hello_bundle(work, name, image_digest)?;
        let signature = signing::sign(
            &signing::parse_private_key(bundle_key)?,
            &airlock_bundle::digest(&bundle),
        );
        put_bundle(&self.ns, bundle_name, bundle, Some(signature)).await?;
        let mut plugin = self.hello(name)?;
        plugin["spec"]["image"] = json!(image);
        plugin["spec"]["bundle"] = json!({"source": {"configMapRef": {"name": bundle_name}}});
        for (k, v) in spec.as_object().into_iter().flatten() {
            plugin["spec"][k] = v.clone();
        }
        self.apply(&plugin).await
    }

    /// Puts `bundle` in the ConfigMap `name` (key `bundle.tar.gz`), as the README tells users to.
    pub async fn put_bundle(&self, name: &str, bundle: Vec<u8>) -> Result<()> {
        put_bundle(&self.ns, name, bundle, None).await
    }

    /// Puts the hello plugin's bundle (from `make e2e-images`) in the ConfigMap `hello-bundle`.
    pub async fn with_hello_bundle(&self) -> Result<()> {
        let bundle = std::fs::read(images_env("AIRLOCK_HELLO_BUNDLE")?)?;
        self.put_bundle("hello-bundle", bundle).await
    }

    /// examples/hello-plugin.yaml named `name`, with the image pushed by `make e2e-images`.
    pub fn hello(&self, name: &str) -> Result<Value> {
        let manifest = std::fs::read_to_string(workspace().join("examples/hello-plugin.yaml"))?;
        let mut plugin: Value = serde_yaml::from_str(&manifest).context("parsing YAML")?;
        plugin["metadata"]["name"] = json!(name);
        plugin["spec"]["image"] = json!(images_env("AIRLOCK_HELLO_IMAGE")?);
        Ok(plugin)
    }

    /// Server-side applies `plugin` in the sandbox.
    pub async fn apply(&self, plugin: &Value) -> Result<()> {
        crate::plugins::apply(&self.ns.api::<Plugin>(), plugin).await
    }

    /// Deletes the namespace, waits until it is gone (a stuck finalizer fails the test) and
    /// deletes the policy.
    pub async fn teardown(mut self) -> Result<()> {
        // On an early return below, Drop still deletes what is left.
        self.ns.delete().await?;
        let nss: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(self.client.clone());
        let deadline = Instant::now() + crate::WAIT;
        while nss.get_opt(&self.ns.name).await?.is_some() {
            ensure!(
                Instant::now() < deadline,
                "namespace {} was not deleted: are the Plugins' finalizers stuck?",
                self.ns.name
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        match Api::<airlock_crds::PluginTrustPolicy>::all(self.client.clone())
            .delete(&self.policy, &DeleteParams::default())
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
        self.torn_down = true;
        Ok(())
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if self.torn_down {
            return;
        }
        // A panicking test: delete without waiting, and never panic here.
        for args in [
            vec!["delete", "namespace", self.ns.name.as_str()],
            vec!["delete", "plugintrustpolicy", self.policy.as_str()],
        ] {
            let mut kubectl = Command::new("kubectl");
            if std::env::var_os("KUBECONFIG").is_none() {
                kubectl.env("KUBECONFIG", crate::LOCAL_CLUSTER_KUBECONFIG);
            }
            let _ = kubectl
                .args(args)
                .args(["--ignore-not-found", "--wait=false"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Puts `bundle` in the ConfigMap `name` in `ns` (key `bundle.tar.gz`), with its detached
/// `signature` (key `bundle.tar.gz.sig`) if any, as the README tells users to.
pub async fn put_bundle(
    ns: &TestNamespace,
    name: &str,
    bundle: Vec<u8>,
    signature: Option<String>,
) -> Result<()> {
    let cm = ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        binary_data: Some([("bundle.tar.gz".to_string(), ByteString(bundle))].into()),
        data: signature.map(|s| [("bundle.tar.gz.sig".to_string(), s)].into()),
        ..Default::default()
    };
    ns.api::<ConfigMap>()
        .create(&PostParams::default(), &cm)
        .await
        .with_context(|| format!("creating the bundle ConfigMap {name}"))?;
    Ok(())
}

/// Runs `body` in a sandbox and tears it down whatever the outcome.
pub async fn in_sandbox<F>(prefix: &str, permissions: &[&str], body: F) -> Result<()>
where
    F: AsyncFnOnce(&Sandbox) -> Result<()>,
{
    torn_down_after(
        Sandbox::new(prefix, permissions).await?,
        body,
        Sandbox::teardown,
    )
    .await
}

/// Runs `body` on `fixture`, then `teardown` whatever the outcome; when both fail, the body's
/// failure is the one reported.
pub(crate) async fn torn_down_after<T>(
    fixture: T,
    body: impl AsyncFnOnce(&T) -> Result<()>,
    teardown: impl AsyncFnOnce(T) -> Result<()>,
) -> Result<()> {
    let outcome = body(&fixture).await;
    let cleanup = teardown(fixture).await;
    outcome?;
    cleanup
}
