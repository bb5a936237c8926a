//! The reconcile pipeline against a fake API server, without a cluster (kube-rs controller-rs
//! style): the fake answers the exact requests a reconcile makes from an in-memory object map and
//! records them, so each test reads like what a user would see — which objects were written, and
//! what the Plugin's status says. The same behaviours are proven on the real cluster by the e2e
//! suite; these run in `make unit` in well under a second.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use airlock_crds::{Plugin, PluginTrustPolicy};
use airlock_tls::pki::Ca;
use base64::Engine as _;
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::client::Body;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::watcher;
use serde_json::{Value, json};

use super::watches::Watches;
use super::{Context, pipeline, record};
use crate::build::BuildConfig;
use crate::fetch::Registry;
use crate::metrics::Metrics;

const NS: &str = "plugins";
const IMAGE: &str = "198.19.255.1:5000/acme/hello@sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
const MANIFEST: &str = "name: hello\nversion: 1.0.0\napiVersion: 1\nhooks: [transform]\n\
    permissions: [log]\nentryPoint: [/hello]\n";

/// What the fake API server holds and saw.
#[derive(Default)]
struct State {
    /// Objects by path (`/api/v1/namespaces/plugins/secrets/x`).
    objects: BTreeMap<String, Value>,
    /// Every request: method and path (without the query).
    requests: Vec<(Method, String)>,
    /// Bodies of PATCH requests, by path.
    patches: Vec<(String, Value)>,
    /// Bodies of POST requests (Events), by path.
    posts: Vec<(String, Value)>,
    /// Paths whose server-side apply the API server refuses (422): an admission policy or a
    /// schema that rejects the object.
    refused_applies: Vec<String>,
    /// Paths whose GET the API server forbids (403): RBAC that lacks a verb.
    forbidden_reads: Vec<String>,
    /// Paths whose writes fail (503) and change nothing: an API server going away.
    unavailable: Vec<String>,
}

#[derive(Clone, Default)]
struct FakeApi(Arc<Mutex<State>>);

impl FakeApi {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn put(&self, path: &str, object: Value) {
        self.state().objects.insert(path.into(), object);
    }

    fn requests(&self) -> Vec<(Method, String)> {
        self.state().requests.clone()
    }

    /// Writes (anything but GET) since the last call, as `METHOD path`.
    fn take_writes(&self) -> Vec<String> {
        let mut st = self.state();
        let writes = st
            .requests
            .iter()
            .filter(|(m, _)| *m != Method::GET)
            .map(|(m, p)| format!("{m} {p}"))
            .collect();
        st.requests.clear();
        writes
    }

    fn last_patch(&self, path: &str) -> Option<Value> {
        self.state()
            .patches
            .iter()
            .rev()
            .find(|(p, _)| p == path)
            .map(|(_, b)| b.clone())
    }

    /// Kubernetes' garbage collector after a Plugin is deleted: its owned objects go.
    fn collect_garbage_of(&self, uid: &str) {
        self.state().objects.retain(|_, o| {
            !o["metadata"]["ownerReferences"]
                .as_array()
                .is_some_and(|refs| refs.iter().any(|r| r["uid"] == uid))
        });
    }

    async fn answer(self, req: Request<Body>) -> Result<Response<Body>, Infallible> {
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let query = req.uri().query().unwrap_or_default().to_string();
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let mut st = self.state();
        st.requests.push((method.clone(), path.clone()));
        let (code, answer) = match method {
            Method::GET if query.contains("labelSelector") => {
                // A list: every stored object under the collection whose labels match.
                let wanted: Vec<(String, String)> = selector(&query);
                let items: Vec<Value> = st
                    .objects
                    .iter()
                    .filter(|(p, _)| p.starts_with(&format!("{path}/")))
                    .filter(|(_, o)| {
                        wanted
                            .iter()
                            .all(|(k, v)| o["metadata"]["labels"][k] == v.as_str())
                    })
                    .map(|(_, o)| o.clone())
                    .collect();
                (StatusCode::OK, json!({"metadata": {}, "items": items}))
            }
            Method::GET if st.forbidden_reads.contains(&path) => (
                StatusCode::FORBIDDEN,
                json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                       "reason": "Forbidden", "code": 403, "message": "forbidden by the test"}),
            ),
            Method::GET => match st.objects.get(&path) {
                Some(o) => (StatusCode::OK, o.clone()),
                None => not_found(),
            },
            Method::PATCH | Method::POST if st.unavailable.contains(&path) => (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                       "reason": "ServiceUnavailable", "code": 503,
                       "message": "the API server is going away (the test)"}),
            ),
            Method::PATCH
                if query.contains("fieldManager") && st.refused_applies.contains(&path) =>
            {
                (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                           "reason": "Invalid", "code": 422, "message": "refused by the test"}),
                )
            }
            Method::PATCH if refused_secret_write(&st, &path, &body).is_some() => {
                let list = refused_secret_write(&st, &path, &body).unwrap_or_default();
                (
                    StatusCode::FORBIDDEN,
                    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "reason": "Forbidden", "code": 403,
                    "message": match path.contains("/configmaps/") {
                        false => format!("secrets is forbidden: ValidatingAdmissionPolicy \
                            'airlock-operator-secrets' with binding 'airlock-operator-secrets' \
                            denied request: {}{list}", crate::ownership::SECRET_NOT_OWNED_MARKER),
                        true => format!("configmaps is forbidden: ValidatingAdmissionPolicy \
                            'airlock-operator-configmaps' with binding 'airlock-operator-configmaps' \
                            denied request: {}{list}", crate::ownership::SECRET_NOT_OWNED_MARKER),
                    }}),
                )
            }
            Method::PATCH => {
                st.patches.push((path.clone(), body.clone()));
                let (object_path, status_only) = match path.strip_suffix("/status") {
                    Some(p) => (p.to_string(), true),
                    None => (path.clone(), false),
                };
                let mut object = st.objects.get(&object_path).cloned().unwrap_or(json!({}));
                if status_only {
                    object["status"] = body["status"].clone();
                } else {
                    // Server-side apply, as far as these tests look: the applied fields replace
                    // the stored ones; the status (written by others) stays.
                    for (k, v) in body.as_object().into_iter().flatten() {
                        if k != "status" {
                            object[k] = v.clone();
                        }
                    }
                    if object["spec"]["replicas"].is_null() && object_path.contains("/deployments/")
                    {
                        object["spec"]["replicas"] = json!(1);
                    }
                }
                object["metadata"]["resourceVersion"] = json!(st.requests.len().to_string());
                if object["metadata"]["uid"].is_null() {
                    // The API server gives every object a uid when it creates it.
                    object["metadata"]["uid"] = json!(format!("uid-of-{object_path}"));
                }
                st.objects.insert(object_path, object.clone());
                (StatusCode::OK, object)
            }
            Method::POST => {
                st.posts.push((path.clone(), body.clone()));
                (StatusCode::CREATED, body)
            }
            Method::DELETE => match st.objects.remove(&path) {
                Some(o) => (StatusCode::OK, o),
                None => not_found(),
            },
            _ => not_found(),
        };
        let bytes = serde_json::to_vec(&answer).unwrap_or_default();
        let mut response = Response::new(Body::from(bytes));
        *response.status_mut() = code;
        Ok(response)
    }
}

/// What the chart's admission policy `airlock-operator-secrets` decides for the operator's write
/// of a Secret outside its namespace (the real policy is exercised by the e2e suite): refused
/// unless the Secret is absent or controlled by the uid the write names as controller. The
/// refusal lists the existing Secret's owner references as the policy words them.
fn refused_secret_write(st: &State, path: &str, body: &Value) -> Option<String> {
    // The same for ConfigMaps of configurations (policy `airlock-operator-configmaps`).
    if !path.contains("/secrets/") && !path.contains("/configmaps/") {
        return None;
    }
    let existing = st.objects.get(path)?;
    let controller = |o: &Value| {
        o["metadata"]["ownerReferences"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["controller"] == true)
            .map(|r| r["uid"].clone())
    };
    if controller(existing).is_some() && controller(existing) == controller(body) {
        return None;
    }
    Some(
        existing["metadata"]["ownerReferences"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                format!(
                    "{}|{}|{}|{}|{}",
                    r["kind"].as_str().unwrap_or_default(),
                    r["apiVersion"].as_str().unwrap_or_default(),
                    r["name"].as_str().unwrap_or_default(),
                    r["uid"].as_str().unwrap_or_default(),
                    if r["controller"] == true { "c" } else { "" }
                )
            })
            .collect::<Vec<_>>()
            .join(","),
    )
}

fn not_found() -> (StatusCode, Value) {
    (
        StatusCode::NOT_FOUND,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": "not found", "reason": "NotFound", "code": 404}),
    )
}

/// `a=b,c=d` from a query's `labelSelector`.
fn selector(query: &str) -> Vec<(String, String)> {
    let raw = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("labelSelector="))
        .unwrap_or_default()
        .replace("%3D", "=")
        .replace("%2C", ",")
        .replace("%2F", "/");
    raw.split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A test bundle (packed like `airlockctl bundle pack`) with `manifest` as its plugin.yaml.
fn bundle(manifest: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("plugin.yaml"), manifest).unwrap();
    airlock_bundle::pack::pack(dir.path(), airlock_bundle::DEFAULT_MAX_BYTES)
        .unwrap()
        .bytes
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn plugin(uid: &str, permissions: &str) -> Plugin {
    serde_yaml::from_str(&format!(
        r#"
apiVersion: airlock.dev/v1alpha1
kind: Plugin
metadata: {{name: hello, namespace: {NS}, uid: {uid}, generation: 1}}
spec:
  version: 1.0.0
  image: {IMAGE}
  bundle: {{source: {{configMapRef: {{name: hello-bundle}}}}}}
  pluginApiVersion: 1
  hooks: [{{name: transform, timeout: 200ms}}]
  permissions: {permissions}
"#
    ))
    .unwrap()
}

/// The owner references of an object the Plugin `hello` with `uid` made (its controller).
fn owned_by(uid: &str) -> Value {
    json!([{"apiVersion": "airlock.dev/v1alpha1", "kind": "Plugin", "name": "hello", "uid": uid,
            "controller": true, "blockOwnerDeletion": true}])
}

/// A policy that lets unsigned plugins run at level Untrusted, and lists `keys`.
fn policy(keys: Value) -> PluginTrustPolicy {
    serde_json::from_value(json!({
        "apiVersion": "airlock.dev/v1alpha1",
        "kind": "PluginTrustPolicy",
        "metadata": {"name": "dev"},
        "spec": {
            "keys": keys,
            "trustLevels": {
                "Untrusted": {"allowUnsigned": true, "maxMemory": "128Mi", "maxTimeout": "2s",
                              "permissions": ["log", "storage:read", "storage:write"]},
                "Trusted": {"maxMemory": "128Mi", "maxTimeout": "2s", "permissions": ["log"]},
            },
        },
    }))
    .unwrap()
}

/// One leadership term against the fake: the context and the watch caches, which the tests fill
/// themselves (the watches that would fill them are not under test here).
struct Harness {
    api: FakeApi,
    ctx: Context,
    /// The audit records the reconciles wrote (collected, not printed).
    audit: Arc<Mutex<Vec<Value>>>,
    watches: Watches,
    deployments: Writer<Deployment>,
    namespaces: Writer<PartialObjectMeta<k8s_openapi::api::core::v1::Namespace>>,
    services: Writer<PartialObjectMeta<Service>>,
    network_policies: Writer<PartialObjectMeta<NetworkPolicy>>,
    _listed: tokio::sync::watch::Sender<bool>,
}

impl Harness {
    fn new(policy: PluginTrustPolicy, config_map: Value) -> Self {
        let api = FakeApi::default();
        api.put(
            &format!("/api/v1/namespaces/{NS}/configmaps/hello-bundle"),
            config_map,
        );
        let service = tower::service_fn({
            let api = api.clone();
            move |req| api.clone().answer(req)
        });
        let client = kube::Client::new(service, NS);
        let (namespaces, namespace_writer) = reflector::store();
        let mut ctx = Context::with_namespaces(
            client,
            namespaces,
            BuildConfig {
                shim_image: "198.19.255.1:5000/airlock/shim@sha256:aaaa".into(),
                router_namespace: "airlock-system".into(),
                router_pod_labels: vec![],
                progress_deadline_seconds: 20,
                seccomp_localhost_profile: None,
                host_api: None,
                cluster_cidrs: vec![],
                allow_readable_key: false,
                image_pull_secrets: vec![],
            },
            Registry::new(vec![], Duration::from_secs(3600)).unwrap(),
            Metrics::new().unwrap(),
            airlock_bundle::DEFAULT_MAX_BYTES,
        );
        let audit = Arc::new(Mutex::new(Vec::new()));
        ctx.audit = Arc::new({
            let audit = audit.clone();
            move |record: &Value| audit.lock().unwrap().push(record.clone())
        });
        let (policies, mut policy_writer) = reflector::store();
        policy_writer.apply_watcher_event(&watcher::Event::Apply(policy));
        let (deployments, deployment_writer) = reflector::store();
        let (services, service_writer) = reflector::store();
        let (network_policies, network_policy_writer) = reflector::store();
        let (listed_tx, policies_listed) = tokio::sync::watch::channel(true);
        let watches = Watches {
            policies,
            policies_listed,
            deployments_listed: tokio::sync::watch::channel(true).1,
            deployments,
            services,
            network_policies,
            service_accounts: reflector::store().0,
            // Empty and listed: every ConfigMap is read from the (fake) API server.
            bundle_config_maps: crate::bundle_config_maps::BundleConfigMaps::new(
                reflector::store().0,
                tokio::sync::watch::channel(true).1,
            ),
            ca: Ca::generate(SystemTime::now()).unwrap(),
        };
        Self {
            api,
            ctx,
            audit,
            watches,
            deployments: deployment_writer,
            namespaces: namespace_writer,
            services: service_writer,
            network_policies: network_policy_writer,
            _listed: listed_tx,
        }
    }

    fn unsigned(manifest: &str) -> Self {
        Self::new(
            policy(json!([])),
            json!({"metadata": {"name": "hello-bundle", "namespace": NS},
                   "binaryData": {"bundle.tar.gz": b64(&bundle(manifest))}}),
        )
    }

    /// One reconcile of `plugin`; what it asks the controller to do next.
    async fn reconcile(&self, plugin: &Plugin) -> Action {
        // The API server holds the Plugin (its status patch answers with the whole object).
        self.api.put(
            &format!("/apis/airlock.dev/v1alpha1/namespaces/{NS}/plugins/hello"),
            serde_json::to_value(plugin).unwrap(),
        );
        pipeline::run(plugin, &self.ctx, &self.watches)
            .await
            .expect("the reconcile succeeds")
    }

    /// One reconcile of `plugin` that may fail (the API server answered an error).
    async fn try_reconcile(&self, plugin: &Plugin) -> Result<Action, super::Error> {
        self.api.put(
            &format!("/apis/airlock.dev/v1alpha1/namespaces/{NS}/plugins/hello"),
            serde_json::to_value(plugin).unwrap(),
        );
        pipeline::run(plugin, &self.ctx, &self.watches).await
    }

    /// `plugin` as the next reconcile would see it: with the status the last one wrote.
    fn seen(&self, plugin: &Plugin) -> Plugin {
        let mut seen = plugin.clone();
        seen.status = serde_json::from_value(self.status()).ok();
        seen
    }

    /// `(type, reason)` of each Event posted so far.
    fn events(&self) -> Vec<(String, String)> {
        self.api
            .state()
            .posts
            .iter()
            .filter(|(path, _)| path.contains("/events"))
            .map(|(_, e)| {
                let field = |k: &str| e[k].as_str().unwrap_or_default().to_string();
                (field("type"), field("reason"))
            })
            .collect()
    }

    /// The status the reconcile last wrote.
    fn status(&self) -> Value {
        self.api
            .last_patch(&format!(
                "/apis/airlock.dev/v1alpha1/namespaces/{NS}/plugins/hello/status"
            ))
            .map(|b| b["status"].clone())
            .expect("a status was written")
    }

    /// `(event, reason)` of each audit record written so far.
    fn audited(&self) -> Vec<(String, String)> {
        let records = self.audit.lock().unwrap();
        records
            .iter()
            .map(|r| {
                assert_eq!(r["stream"], "airlock.audit", "{r}");
                let field = |k: &str| r[k].as_str().unwrap_or_default().to_string();
                (field("event"), field("reason"))
            })
            .collect()
    }

    /// The plugin's Service and NetworkPolicy as the watches would show them now (gone ones
    /// removed).
    fn watch_network(&mut self) {
        /// The watch event for the object the fake holds (`None`: it was deleted).
        fn seen<K>(object: Option<&Value>) -> watcher::Event<PartialObjectMeta<K>> {
            let event = |metadata| PartialObjectMeta {
                types: None,
                metadata,
                _phantom: Default::default(),
            };
            match object {
                Some(o) => watcher::Event::Apply(event(
                    serde_json::from_value(o["metadata"].clone()).unwrap(),
                )),
                None => watcher::Event::Delete(event(ObjectMeta {
                    name: Some("hello".into()),
                    namespace: Some(NS.into()),
                    ..Default::default()
                })),
            }
        }
        let objects = self.api.state().objects.clone();
        self.services.apply_watcher_event(&seen(
            objects.get(&format!("/api/v1/namespaces/{NS}/services/hello")),
        ));
        self.network_policies
            .apply_watcher_event(&seen(objects.get(&format!(
                "/apis/networking.k8s.io/v1/namespaces/{NS}/networkpolicies/hello"
            ))));
    }

    /// The plugin's Deployment as the watch would show it now.
    /// The watch shows the applied Deployment with all its pods ready.
    fn watch_deployment_ready(&mut self) {
        let path = format!("/apis/apps/v1/namespaces/{NS}/deployments/hello");
        let mut d: Deployment =
            serde_json::from_value(self.api.state().objects[&path].clone()).unwrap();
        let replicas = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        d.status = Some(k8s_openapi::api::apps::v1::DeploymentStatus {
            observed_generation: d.metadata.generation,
            replicas: Some(replicas),
            ready_replicas: Some(replicas),
            updated_replicas: Some(replicas),
            available_replicas: Some(replicas),
            ..Default::default()
        });
        self.deployments
            .apply_watcher_event(&watcher::Event::Apply(d));
    }

    fn watch_deployment(&mut self) {
        let path = format!("/apis/apps/v1/namespaces/{NS}/deployments/hello");
        let d: Deployment =
            serde_json::from_value(self.api.state().objects[&path].clone()).unwrap();
        self.deployments
            .apply_watcher_event(&watcher::Event::Apply(d));
    }
}

fn condition(status: &Value, ty: &str) -> (String, String) {
    let c = status["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == ty)
        .unwrap_or_else(|| panic!("condition {ty} in {status}"));
    (
        c["status"].as_str().unwrap_or_default().into(),
        c["reason"].as_str().unwrap_or_default().into(),
    )
}

fn wrote(writes: &[String], what: &str) -> bool {
    writes.iter().any(|w| w.contains(what))
}

#[tokio::test]
async fn a_new_plugin_gets_its_identity_and_children_then_an_unchanged_one_writes_nothing() {
    let mut h = Harness::unsigned(MANIFEST);
    let p = plugin("uid-1", "[log]");
    h.reconcile(&p).await;

    let writes = h.api.take_writes();
    for child in [
        "PATCH /api/v1/namespaces/plugins/serviceaccounts/hello",
        "PATCH /api/v1/namespaces/plugins/secrets/hello-tls",
        "PATCH /apis/networking.k8s.io/v1/namespaces/plugins/networkpolicies/hello",
        "PATCH /api/v1/namespaces/plugins/services/hello",
        "PATCH /apis/apps/v1/namespaces/plugins/deployments/hello",
        "PATCH /apis/airlock.dev/v1alpha1/namespaces/plugins/plugins/hello/status",
    ] {
        assert!(
            writes.contains(&child.to_string()),
            "{child} in {writes:#?}"
        );
    }
    assert!(wrote(&writes, "secrets/hello-bundle-"), "{writes:#?}");
    // Pods starting is progress: in the status and the audit stream, not an Event.
    assert!(
        !wrote(&writes, "/apis/events.k8s.io/v1"),
        "no Event while deploying: {writes:#?}"
    );
    let status = h.status();
    assert_eq!(status["phase"], "Deploying", "{status}");
    assert_eq!(condition(&status, "Verified").0, "True");
    assert_eq!(status["trustLevel"], "Untrusted");
    let audited = h.audited();
    assert!(
        audited.contains(&("Phase".into(), "Deploying".into())),
        "{audited:?}"
    );

    // The watch now shows what was applied: the same Plugin again costs no write at all.
    h.watch_deployment();
    let mut seen = p.clone();
    seen.status = serde_json::from_value(status).ok();
    h.reconcile(&seen).await;
    let again: Vec<String> = h
        .api
        .take_writes()
        .into_iter()
        .filter(|w| {
            !w.contains("/serviceaccounts/")
                && !w.contains("/services/")
                && !w.contains("/networkpolicies/")
        })
        .collect();
    assert_eq!(
        again,
        Vec::<String>::new(),
        "no writes for an unchanged Plugin"
    );
    assert_eq!(h.audited(), audited, "and no audit record");
}

/// Progress is not told; the outcome is, once, with what the untold statuses changed.
#[tokio::test]
async fn a_plugin_becoming_active_is_one_event_that_tells_its_verification() {
    let mut h = Harness::unsigned(MANIFEST);
    let p = plugin("uid-1", "[log]");
    h.reconcile(&p).await;
    assert_eq!(h.status()["phase"], "Deploying");
    assert_eq!(
        h.events(),
        Vec::<(String, String)>::new(),
        "nothing told yet"
    );

    h.watch_deployment_ready();
    let mut seen = p.clone();
    seen.status = serde_json::from_value(h.status()).ok();
    h.reconcile(&seen).await;
    assert_eq!(h.status()["phase"], "Active", "{}", h.status());
    assert_eq!(
        h.events(),
        vec![("Normal".to_string(), "Active".to_string())]
    );
    let note = h
        .api
        .state()
        .posts
        .iter()
        .rev()
        .find(|(path, _)| path.contains("/events"))
        .map(|(_, e)| e["note"].as_str().unwrap_or_default().to_string())
        .unwrap_or_default();
    for part in [
        "is serving on 1 pod(s)",
        "Verified=True",
        "phase none -> Active",
    ] {
        assert!(note.contains(part), "{part:?} in {note:?}");
    }
    let audited = h.audited();
    for phase in ["Deploying", "Active"] {
        assert!(
            audited.contains(&("Phase".into(), phase.into())),
            "every transition is audited: {audited:?}"
        );
    }
}

#[tokio::test]
async fn a_plugin_asking_for_an_undeclared_permission_is_blocked_and_nothing_is_rolled_out() {
    let h = Harness::unsigned(MANIFEST);
    h.reconcile(&plugin("uid-1", "[log, storage:write]")).await;

    let writes = h.api.take_writes();
    assert!(
        writes
            .iter()
            .all(|w| w.contains("/status") || w.starts_with("POST")),
        "only the status and Events are written: {writes:#?}"
    );
    let status = h.status();
    assert_eq!(status["phase"], "Failed", "{status}");
    let (ok, reason) = condition(&status, "PermissionsApproved");
    assert_eq!(
        (ok.as_str(), reason.as_str()),
        ("False", "NotDeclaredBySigner")
    );
}

#[tokio::test]
async fn a_plugin_recreated_under_the_same_name_gets_fresh_secrets() {
    let h = Harness::unsigned(MANIFEST);
    h.reconcile(&plugin("uid-1", "[log]")).await;
    let first = h.api.take_writes();
    assert!(wrote(&first, "secrets/hello-bundle-") && wrote(&first, "secrets/hello-tls"));

    // Deleted: the controller records it, Kubernetes collects what the Plugin owned.
    record::cleanup(&plugin("uid-1", "[log]"), &h.ctx).await;
    assert!(h.audited().contains(&("Deleted".into(), "Deleted".into())));
    h.api.collect_garbage_of("uid-1");
    h.api.take_writes();

    // Applied again with the same name and bundle, within the same leadership term.
    h.reconcile(&plugin("uid-2", "[log]")).await;
    let second = h.api.take_writes();
    assert!(
        wrote(
            &second,
            "PATCH /api/v1/namespaces/plugins/secrets/hello-bundle-"
        ),
        "the bundle Secret is created again: {second:#?}"
    );
    assert!(
        wrote(
            &second,
            "PATCH /api/v1/namespaces/plugins/secrets/hello-tls"
        ),
        "the TLS Secret is issued again: {second:#?}"
    );
    let tls = h.api.state().objects
        ["/api/v1/namespaces/plugins/secrets/hello-tls"]["metadata"]["ownerReferences"][0]["uid"]
        .clone();
    assert_eq!(tls, "uid-2", "the new Secret belongs to the new Plugin");
}

/// The Plugin watch selects this release's shard by label: a Plugin relabelled into another
/// release's shard leaves it as a delete event. That is recorded as a hand-over, not a deletion
/// (its children stay, the other release takes them); a Plugin really gone, or re-created under
/// the same name, is recorded as deleted.
#[tokio::test]
async fn a_plugin_relabelled_into_another_shard_is_recorded_as_handed_over_not_deleted() {
    let h = Harness::unsigned(MANIFEST);
    let path = "/apis/airlock.dev/v1alpha1/namespaces/plugins/plugins/hello";
    let mut moved = serde_json::to_value(plugin("uid-1", "[log]")).unwrap();
    moved["metadata"]["labels"] = json!({airlock_core::shard::SHARD_LABEL: "canary"});
    h.api.put(path, moved.clone());
    record::cleanup(&plugin("uid-1", "[log]"), &h.ctx).await;
    let audited = h.audited();
    assert!(
        audited.contains(&("Shard".into(), "ShardChanged".into())),
        "{audited:?}"
    );
    assert!(
        !audited.iter().any(|(_, reason)| reason == "Deleted"),
        "{audited:?}"
    );

    // The same name, another Plugin (uid): the one this release served is gone.
    moved["metadata"]["uid"] = json!("uid-2");
    h.api.put(path, moved);
    record::cleanup(&plugin("uid-1", "[log]"), &h.ctx).await;
    assert!(h.audited().contains(&("Deleted".into(), "Deleted".into())));
}

/// A reconcile of a Plugin whose new revision missed its progress deadline, with a last good
/// revision `rgood` (recorded with `record`) and the ReplicaSet `rs` in the namespace: the image
/// the Deployment was applied with afterwards, and the status written.
async fn after_deadline(record: Value, rs: Value) -> (Value, Value) {
    let mut h = Harness::unsigned(MANIFEST);
    let deployment = format!("/apis/apps/v1/namespaces/{NS}/deployments/hello");
    // The Deployment says the new revision did not progress in time.
    h.api.put(
        &deployment,
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"name": "hello", "namespace": NS, "generation": 2, "uid": "deploy-1",
                            "ownerReferences": owned_by("uid-1")},
               "status": {"observedGeneration": 2, "conditions": [
                   {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}]}}),
    );
    h.watch_deployment();
    h.api.put(
        &format!("/apis/apps/v1/namespaces/{NS}/replicasets/hello-rgood"),
        rs,
    );
    let mut p = plugin("uid-1", "[log]");
    p.status = serde_json::from_value(json!({
        "lastGoodRevision": "rgood", "currentRevision": "rgood", "revisions": [record]}))
    .ok();
    h.reconcile(&p).await;
    let image = h
        .api
        .last_patch(&deployment)
        .map(|d| d["spec"]["template"]["spec"]["containers"][0]["image"].clone())
        .unwrap_or(Value::Null);
    (image, h.status())
}

/// The last good revision's ReplicaSet as the Deployment controller makes it: controlled by the
/// Deployment `deploy-1`, running `image`.
fn replica_set(owner: Value, image: &str) -> (Value, String) {
    let template = json!({"metadata": {"labels": {"airlock.dev/plugin": "hello",
                                                  "airlock.dev/revision": "rgood"}},
                          "spec": {"containers": [{"name": "plugin", "image": image}]}});
    let digest =
        crate::running::template_digest(&serde_json::from_value(template.clone()).unwrap());
    let mut in_rs = template.clone();
    in_rs["metadata"]["labels"]["pod-template-hash"] = json!("5d8f7");
    let rs = json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "metadata": {"name": "hello-rgood", "namespace": NS, "ownerReferences": owner,
                                 "labels": {"airlock.dev/plugin": "hello", "airlock.dev/revision": "rgood"}},
                    "spec": {"selector": {"matchLabels": {"airlock.dev/plugin": "hello"}},
                             "template": in_rs}});
    (rs, digest)
}

fn controlled_by_deployment() -> Value {
    json!([{"apiVersion": "apps/v1", "kind": "Deployment", "name": "hello", "uid": "deploy-1",
            "controller": true}])
}

#[tokio::test]
async fn a_revision_that_misses_its_deadline_is_rolled_back_to_the_last_good_one() {
    let (rs, digest) = replica_set(controlled_by_deployment(), "good-image");
    let record = json!({"revision": "rgood", "permissions": ["log"], "templateDigest": digest});
    let (image, status) = after_deadline(record, rs).await;
    assert_eq!(
        image, "good-image",
        "the last good revision's pod template is applied again"
    );
    assert_eq!(status["currentRevision"], "rgood", "{status}");
    assert!(status["failedRevision"].is_string(), "{status}");
}

#[tokio::test]
async fn a_rollback_never_applies_a_template_the_deployment_controller_did_not_make() {
    // The tenant's ReplicaSet carries the Plugin's labels, and even a forged controller
    // reference to the Plugin's Deployment: its template is not the one recorded.
    let (_, digest) = replica_set(controlled_by_deployment(), "good-image");
    let record = json!({"revision": "rgood", "permissions": ["log"], "templateDigest": digest});
    for (owner, what) in [
        (json!(null), "no owner"),
        (controlled_by_deployment(), "a forged controller reference"),
    ] {
        let (rs, _) = replica_set(owner, "tenant-image-printing-HIJACKED");
        let (image, status) = after_deadline(record.clone(), rs).await;
        assert_ne!(image, "tenant-image-printing-HIJACKED", "{what}");
        assert_ne!(status["currentRevision"], "rgood", "{what}: {status}");
        let (_, ready) = condition(&status, "Ready");
        assert_eq!(ready, "ProgressDeadlineExceeded", "{what}: {status}");
        assert!(
            status["conditions"]
                .to_string()
                .contains("recorded pod template"),
            "{what}: the status says why nothing was rolled back: {status}"
        );
    }
    // The genuine template, but owned by another Deployment (or none): not this Plugin's.
    let (rs, digest) = replica_set(json!(null), "good-image");
    let record = json!({"revision": "rgood", "permissions": ["log"], "templateDigest": digest});
    let (image, _) = after_deadline(record, rs).await;
    assert_ne!(image, "good-image");
}

#[tokio::test]
async fn a_rollback_never_brings_back_a_revision_todays_policies_refuse() {
    let (rs, digest) = replica_set(controlled_by_deployment(), "good-image");
    // The good revision holds net:egress, which its trust level no longer grants, or was signed
    // by a key no policy lists any more.
    for record in [
        json!({"revision": "rgood", "permissions": ["log", "net:egress"], "templateDigest": digest}),
        json!({"revision": "rgood", "bundleSigner": "sha256:gone", "templateDigest": digest}),
    ] {
        let (image, status) = after_deadline(record.clone(), rs.clone()).await;
        assert_ne!(image, "good-image", "{record}");
        assert_ne!(status["currentRevision"], "rgood", "{record}: {status}");
        assert!(
            status["conditions"]
                .to_string()
                .contains("was not rolled back to"),
            "{record}: {status}"
        );
    }
}

/// The hello bundle signed by key `acme`, which the policy revokes.
fn revoked_signer_harness() -> Harness {
    let (private, public) = airlock_bundle::signing::generate().unwrap();
    let key = airlock_bundle::signing::parse_private_key(&private).unwrap();
    let bytes = bundle(MANIFEST);
    let signature = airlock_bundle::signing::sign(&key, &airlock_bundle::digest(&bytes));
    Harness::new(
        policy(
            json!([{"name": "acme", "ed25519": public, "trustLevel": "Trusted", "revoked": true}]),
        ),
        json!({"metadata": {"name": "hello-bundle", "namespace": NS},
               "binaryData": {"bundle.tar.gz": b64(&bytes), "bundle.tar.gz.sig": b64(signature.as_bytes())}}),
    )
}

/// The Plugin uid-1's own Deployment, running 2 replicas, on the API server and in the
/// watch cache; returns its API path.
fn running_deployment_of_two(h: &mut Harness) -> String {
    let deployment = format!("/apis/apps/v1/namespaces/{NS}/deployments/hello");
    h.api.put(
        &deployment,
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"name": "hello", "namespace": NS, "ownerReferences": owned_by("uid-1"),
                            "labels": {"airlock.dev/plugin": "hello"}},
               "spec": {"replicas": 2}}),
    );
    h.watch_deployment();
    deployment
}

#[tokio::test]
async fn a_revoked_signer_quarantines_the_running_revision_without_asking_a_registry() {
    let mut h = revoked_signer_harness();
    // A revision of it is running.
    let deployment = running_deployment_of_two(&mut h);
    let mut p = plugin("uid-1", "[log]");
    p.status = serde_json::from_value(json!({"lastGoodRevision": "rgood"})).ok();
    h.reconcile(&p).await;

    assert_eq!(
        h.api
            .last_patch(&deployment)
            .map(|b| b["spec"]["replicas"].clone()),
        Some(json!(0)),
        "scaled to zero"
    );
    let status = h.status();
    assert_eq!(status["phase"], "Quarantined", "{status}");
    assert_eq!(condition(&status, "Verified").1, "KeyRevoked");
    let audited = h.audited();
    for record in [("Verified", "KeyRevoked"), ("Phase", "Quarantined")] {
        assert!(
            audited.contains(&(record.0.into(), record.1.into())),
            "{record:?} in {audited:?}"
        );
    }
    // The image is pinned by digest and the bundle refused first: no registry was contacted
    // (a registry request would have failed this test: nothing listens at the image's host).
    assert!(
        h.api.requests().iter().all(|(_, p)| p.starts_with("/api")),
        "only API server requests"
    );
}

/// A Plugin an admin moved to this release's shard keeps its children with the old shard's
/// label until its rollout here succeeds, so this release's Deployment cache does not hold them.
/// Quarantine must still stop it: a stop reads the Deployment when the cache has none.
#[tokio::test]
async fn a_revoked_signer_stops_a_deployment_the_cache_does_not_hold() {
    let h = revoked_signer_harness();
    let deployment = format!("/apis/apps/v1/namespaces/{NS}/deployments/hello");
    h.api.put(
        &deployment,
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"name": "hello", "namespace": NS, "uid": "d-1",
                            "labels": {"airlock.dev/shard": "canary"},
                            "ownerReferences": owned_by("uid-1")},
               "spec": {"replicas": 2}}),
    );
    // Not put in the watch cache.
    let mut p = plugin("uid-1", "[log]");
    p.status = serde_json::from_value(json!({"lastGoodRevision": "rgood"})).ok();
    h.reconcile(&p).await;
    let patch = h
        .api
        .last_patch(&deployment)
        .expect("the Deployment was patched");
    assert_eq!(patch["spec"]["replicas"], 0, "scaled to zero: {patch}");
    assert_eq!(
        patch["metadata"]["uid"], "d-1",
        "only the Deployment judged: {patch}"
    );
    assert_eq!(h.status()["phase"], "Quarantined");
}

/// Writes other than the Plugin's status and Events: what a reconcile did to other objects.
fn child_writes(writes: &[String]) -> Vec<&String> {
    writes
        .iter()
        .filter(|w| !w.ends_with("/plugins/hello/status") && !w.starts_with("POST /apis/events"))
        .collect()
}

const CHILDREN: [&str; 5] = [
    "PATCH /api/v1/namespaces/plugins/serviceaccounts/hello",
    "PATCH /api/v1/namespaces/plugins/secrets/hello-tls",
    "PATCH /apis/networking.k8s.io/v1/namespaces/plugins/networkpolicies/hello",
    "PATCH /api/v1/namespaces/plugins/services/hello",
    "PATCH /apis/apps/v1/namespaces/plugins/deployments/hello",
];

/// No write since the last look was to a child of the Plugin (`what` says what that means in the
/// test).
fn assert_no_child_written(h: &Harness, what: &str) {
    let writes = h.api.take_writes();
    assert_eq!(
        child_writes(&writes),
        Vec::<&String>::new(),
        "{what}: {writes:#?}"
    );
}

/// The Plugin's status says `object` (`Kind namespace/name`) is someone else's and in the way.
fn assert_in_the_way(h: &Harness, object: &str) {
    let status = h.status();
    assert_eq!(
        condition(&status, "Ready"),
        ("False".into(), "ObjectNotOwned".into()),
        "{status}"
    );
    assert!(
        status
            .to_string()
            .contains(&format!("{object} already exists")),
        "{status}"
    );
}

/// Every one of the [`CHILDREN`] was written since the last look; the writes, for more checks.
fn assert_every_child_written(h: &Harness) -> Vec<String> {
    let writes = h.api.take_writes();
    for child in CHILDREN {
        assert!(
            writes.contains(&child.to_string()),
            "{child} in {writes:#?}"
        );
    }
    writes
}

#[tokio::test]
async fn a_plugin_named_like_someone_elses_network_policy_takes_nothing_over_until_it_is_gone() {
    let h = Harness::unsigned(MANIFEST);
    // The namespace's own policy, made by its tenant: no owner, no Airlock labels (so no watch
    // cache holds it), denying all ingress.
    let victim_path = format!("/apis/networking.k8s.io/v1/namespaces/{NS}/networkpolicies/hello");
    let victim = json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                        "metadata": {"name": "hello", "namespace": NS, "resourceVersion": "7"},
                        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}});
    h.api.put(&victim_path, victim.clone());
    let p = plugin("uid-1", "[log]");
    let action = h.reconcile(&p).await;

    // Nothing of the plugin is written: no child at all, not only the policy.
    assert_no_child_written(&h, "no child is applied");
    assert_eq!(
        h.api.state().objects[&victim_path],
        victim,
        "the policy is untouched"
    );
    let status = h.status();
    assert_eq!(status["phase"], "Failed", "{status}");
    assert_eq!(
        condition(&status, "Ready"),
        ("False".into(), "ObjectNotOwned".into())
    );
    let ready = status["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Ready")
        .and_then(|c| c["message"].as_str())
        .unwrap_or_default()
        .to_string();
    for part in [
        "NetworkPolicy plugins/hello",
        "rename the Plugin or delete/rename the existing NetworkPolicy hello if it is not in use",
    ] {
        assert!(ready.contains(part), "{part:?} in {ready:?}");
    }
    assert_eq!(
        condition(&status, "Verified").0,
        "True",
        "the plugin itself is fine"
    );
    assert!(
        h.events()
            .contains(&("Warning".into(), "ObjectNotOwned".into())),
        "{:?}",
        h.events()
    );
    let audited = h.audited();
    assert!(
        audited.contains(&("Ready".into(), "ObjectNotOwned".into())),
        "{audited:?}"
    );
    // Not a hot loop: looked at again on a bounded interval (the policy is not watched).
    assert_eq!(
        action,
        Action::requeue(crate::ownership::RECHECK_FOREIGN),
        "{action:?}"
    );

    // Looked at again with nothing changed: no write at all, no new Event or audit record.
    h.reconcile(&h.seen(&p)).await;
    assert_eq!(h.api.take_writes(), Vec::<String>::new());
    assert_eq!(h.audited(), audited);

    // The tenant deletes the policy: the next reconcile rolls the plugin out as usual.
    h.api.state().objects.remove(&victim_path);
    h.reconcile(&h.seen(&p)).await;
    assert_every_child_written(&h);
    assert_eq!(h.status()["phase"], "Deploying");
    assert_eq!(
        h.api.state().objects[&victim_path]["metadata"]["ownerReferences"][0]["uid"],
        "uid-1",
        "the new policy is the plugin's own"
    );
}

/// Issue 12, point 7: the operator never reads a Secret outside its namespace (its role does not
/// allow it), and a Secret named like the Plugin's TLS Secret that someone else made is neither
/// overwritten nor made the Plugin's: the admission policy refuses the write and the Plugin says
/// which Secret is in the way, with nothing else written.
#[tokio::test]
async fn a_secret_named_like_the_plugins_own_is_not_taken_over_and_no_secret_is_read() {
    let h = Harness::unsigned(MANIFEST);
    let tls_path = format!("/api/v1/namespaces/{NS}/secrets/hello-tls");
    let theirs = json!({"apiVersion": "v1", "kind": "Secret",
                        "metadata": {"name": "hello-tls", "namespace": NS},
                        "data": {"password": "c2VjcmV0"}});
    h.api.put(&tls_path, theirs.clone());
    let p = plugin("uid-1", "[log]");
    let action = h.reconcile(&p).await;

    assert_eq!(
        h.api.state().objects[&tls_path],
        theirs,
        "their Secret is untouched"
    );
    let writes = h.api.take_writes();
    assert_eq!(
        child_writes(&writes),
        vec![&format!("PATCH {tls_path}")],
        "only the refused attempt: nothing else of the plugin is written"
    );
    assert_in_the_way(&h, "Secret plugins/hello-tls");
    assert_eq!(action, Action::requeue(crate::ownership::RECHECK_FOREIGN));
    assert!(
        h.api
            .requests()
            .iter()
            .all(|(m, p)| !(*m == Method::GET && p.contains("/secrets"))),
        "no Secret is read: {:?}",
        h.api.requests()
    );

    // Their Secret goes: the plugin gets its own identity and everything else.
    h.api.state().objects.remove(&tls_path);
    h.reconcile(&h.seen(&p)).await;
    assert_every_child_written(&h);
    assert_eq!(
        h.api.state().objects[&tls_path]["metadata"]["ownerReferences"][0]["uid"],
        "uid-1"
    );
}

#[tokio::test]
async fn leftovers_of_a_deleted_plugin_of_the_same_name_block_until_they_are_collected() {
    let h = Harness::unsigned(MANIFEST);
    h.reconcile(&plugin("uid-1", "[log]")).await;
    record::cleanup(&plugin("uid-1", "[log]"), &h.ctx).await;
    h.api.take_writes();

    // Re-created under the same name before the garbage collector removed the old children.
    let p = plugin("uid-2", "[log]");
    let action = h.reconcile(&p).await;
    assert_no_child_written(&h, "nothing of the old Plugin is taken over");
    let status = h.status();
    assert_eq!(condition(&status, "Ready").1, "ObjectNotOwned", "{status}");
    assert!(
        status
            .to_string()
            .contains("earlier Plugin hello (uid uid-1)"),
        "{status}"
    );
    // Issue 14: a delete and re-create (as GitOps does) is in progress for kstatus, not failed.
    assert_eq!(status["phase"], "Pending", "{status}");
    assert_eq!(condition(&status, "Reconciling").0, "True", "{status}");
    assert_eq!(
        action,
        Action::requeue(crate::ownership::RECHECK_GARBAGE_COLLECTION)
    );

    // Collected: the next reconcile creates the new Plugin's own children.
    h.api.collect_garbage_of("uid-1");
    h.reconcile(&h.seen(&p)).await;
    let writes = assert_every_child_written(&h);
    assert!(wrote(&writes, "secrets/hello-bundle-"), "{writes:#?}");
    let deployment = &h.api.state().objects["/apis/apps/v1/namespaces/plugins/deployments/hello"];
    assert_eq!(deployment["metadata"]["ownerReferences"][0]["uid"], "uid-2");
}

/// The attack of issue 12: break the spec first (a wrong `spec.bundle.digest`: the fetch fails
/// before any signature is looked at), then keep the running revision after its signer was
/// revoked or its policy tightened. The running revision's record is judged anyway.
/// A Plugin whose revision `rgood` (bundle signed by `fingerprint`, granted `permissions`) runs
/// as its Deployment of 2 replicas, under a policy of `keys`, while its spec names a bundle
/// digest that does not match (its fetch fails). Returns the Deployment's API path too.
fn running_with_a_broken_spec(
    keys: Value,
    fingerprint: &str,
    permissions: Value,
) -> (Harness, String, Plugin) {
    let mut h = Harness::new(
        policy(keys),
        json!({"metadata": {"name": "hello-bundle", "namespace": NS},
               "binaryData": {"bundle.tar.gz": b64(&bundle(MANIFEST))}}),
    );
    let deployment = running_deployment_of_two(&mut h);
    let mut p = plugin("uid-1", "[log]");
    p.spec.bundle.digest = Some(format!("sha256:{}", "0".repeat(64)));
    p.status = serde_json::from_value(json!({
        "phase": "Active", "currentRevision": "rgood", "lastGoodRevision": "rgood",
        "permissions": permissions,
        "revisions": [{"revision": "rgood", "bundleSigner": fingerprint,
                       "imageSigner": null, "permissions": permissions}]}))
    .ok();
    (h, deployment, p)
}

#[tokio::test]
async fn a_broken_spec_does_not_keep_a_revoked_or_no_longer_allowed_revision_running() {
    let (public, fingerprint) = signer_key();
    let key = |revoked: bool| json!([{"name": "acme", "ed25519": public, "trustLevel": "Trusted", "revoked": revoked}]);
    for (keys, permissions, reason) in [
        (key(true), json!(["log"]), "KeyRevoked"),
        // Trusted allows only `log` in this policy: storage:write is no longer allowed.
        (
            key(false),
            json!(["log", "storage:write"]),
            "NoLongerAllowed",
        ),
    ] {
        let (h, deployment, p) = running_with_a_broken_spec(keys, &fingerprint, permissions);
        h.reconcile(&p).await;

        assert_eq!(
            replicas_patched(&h, &deployment),
            Some(json!(0)),
            "{reason}: scaled to zero"
        );
        let status = h.status();
        assert_eq!(status["phase"], "Quarantined", "{status}");
        assert_eq!(condition(&status, "Ready").1, reason, "{status}");
        assert_eq!(
            condition(&status, "Verified").1,
            "BundleDigestMismatch",
            "the spec's own problem is still reported"
        );
        assert!(status["permissions"].is_null(), "no host API: {status}");
        assert!(
            h.audited()
                .contains(&("Phase".to_string(), "Quarantined".to_string())),
            "{:?}",
            h.audited()
        );
    }
}

/// The kill switch does not wait for the registry: a running Plugin switched off (by
/// `spec.enabled: false` or the router's auto-disable) while its spec cannot be fetched or
/// verified (here a bundle digest that does not match) is scaled to zero and loses its host-API
/// permissions; before, it kept running as Degraded until the spec could be fetched again.
#[tokio::test]
async fn a_switched_off_plugin_stops_even_when_its_spec_cannot_be_fetched() {
    let (public, fingerprint) = signer_key();
    for how in ["spec.enabled", "auto-disabled"] {
        let (h, deployment, mut p) = running_with_a_broken_spec(
            json!([{"name": "acme", "ed25519": public, "trustLevel": "Trusted"}]),
            &fingerprint,
            json!(["log"]),
        );
        match how {
            "spec.enabled" => p.spec.enabled = false,
            _ => {
                p.metadata.annotations = Some(
                    [(
                        airlock_crds::plugin::AUTO_DISABLED_ANNOTATION.to_string(),
                        "timeouts".to_string(),
                    )]
                    .into(),
                )
            }
        }
        h.reconcile(&p).await;

        assert_eq!(
            replicas_patched(&h, &deployment),
            Some(json!(0)),
            "{how}: scaled to zero"
        );
        let status = h.status();
        assert_eq!(status["phase"], "Disabled", "{how}: {status}");
        assert_eq!(
            condition(&status, "Verified").1,
            "BundleDigestMismatch",
            "{how}: the spec's own problem is still reported"
        );
        assert!(
            status["permissions"].is_null(),
            "{how}: no host API: {status}"
        );
    }
}

/// The kill switch holds when the switched-off revision cannot be applied (an admission policy,
/// a quota or a schema refuses the Deployment): the reconcile fails and is retried, and what
/// runs is scaled to zero meanwhile (attack review: before, the early return skipped it and
/// the pods of a disabled plugin kept running).
#[tokio::test]
async fn a_disabled_plugin_stops_even_when_its_deployment_cannot_be_applied() {
    let mut h = Harness::unsigned(MANIFEST);
    let p = plugin("uid-1", "[log]");
    h.reconcile(&p).await;
    h.watch_deployment();
    let deployment = format!("/apis/apps/v1/namespaces/{NS}/deployments/hello");
    // The API server runs it with 2 replicas; the next apply of it is refused.
    let mut running = h.api.state().objects[&deployment].clone();
    running["spec"]["replicas"] = json!(2);
    h.api.put(&deployment, running);
    h.watch_deployment();
    h.api.state().refused_applies.push(deployment.clone());
    h.api.take_writes();

    let mut off = h.seen(&p);
    off.spec.enabled = false;
    h.api.put(
        &format!("/apis/airlock.dev/v1alpha1/namespaces/{NS}/plugins/hello"),
        serde_json::to_value(&off).unwrap(),
    );
    let result = pipeline::run(&off, &h.ctx, &h.watches).await;
    assert!(result.is_err(), "the refused apply is an error (retried)");
    assert_eq!(
        replicas_patched(&h, &deployment),
        Some(json!(0)),
        "scaled to zero anyway: {:?}",
        h.api.take_writes()
    );
}

/// A newer revision is rolling out while the last good one still serves (`maxUnavailable: 0`
/// keeps its pods until the new ones are ready): revoking the last good one's key stops its
/// ReplicaSet at once, and it is no longer a revision to return to.
#[tokio::test]
async fn a_revoked_last_good_revision_stops_serving_while_a_newer_one_rolls_out() {
    let (public, fingerprint) = signer_key();
    let mut h = Harness::new(
        policy(
            json!([{"name": "acme", "ed25519": public, "trustLevel": "Trusted", "revoked": true}]),
        ),
        json!({"metadata": {"name": "hello-bundle", "namespace": NS},
               "binaryData": {"bundle.tar.gz": b64(&bundle(MANIFEST))}}),
    );
    h.api.put(
        &format!("/apis/apps/v1/namespaces/{NS}/deployments/hello"),
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"name": "hello", "namespace": NS, "uid": "deploy-1",
                            "ownerReferences": owned_by("uid-1")},
               "spec": {"replicas": 1}}),
    );
    h.watch_deployment();
    let (mut rs, _) = replica_set(controlled_by_deployment(), "good-image");
    rs["spec"]["replicas"] = json!(1);
    let rs_path = format!("/apis/apps/v1/namespaces/{NS}/replicasets/hello-rgood");
    h.api.put(&rs_path, rs);
    let mut p = plugin("uid-1", "[log]");
    p.status = serde_json::from_value(json!({
        "currentRevision": "rnew", "lastGoodRevision": "rgood",
        "revisions": [{"revision": "rgood", "bundleSigner": fingerprint, "permissions": ["log"]}]}))
    .ok();
    h.reconcile(&p).await;

    assert_eq!(
        replicas_patched(&h, &rs_path),
        Some(json!(0)),
        "the revoked revision's ReplicaSet is scaled to zero"
    );
    let status = h.status();
    assert!(status["lastGoodRevision"].is_null(), "{status}");
    assert!(
        status["revisions"]
            .as_array()
            .into_iter()
            .flatten()
            .all(|r| r["revision"] != "rgood"),
        "{status}"
    );
}

/// Nothing is downloaded for a namespace no PluginTrustPolicy governs: the tenant's bundle
/// source is not read at all (no ConfigMap GET), and the status says what is missing.
#[tokio::test]
async fn nothing_is_downloaded_for_a_namespace_no_policy_governs() {
    let mut elsewhere = policy(json!([]));
    elsewhere.spec.namespaces =
        serde_json::from_value(json!({"matchLabels": {"team": "other"}})).unwrap();
    let h = Harness::new(
        elsewhere,
        json!({"metadata": {"name": "hello-bundle", "namespace": NS},
               "binaryData": {"bundle.tar.gz": b64(&bundle(MANIFEST))}}),
    );
    h.reconcile(&plugin("uid-1", "[log]")).await;
    let status = h.status();
    assert_eq!(
        condition(&status, "Verified").1,
        "NoTrustPolicy",
        "{status}"
    );
    assert!(
        h.api
            .requests()
            .iter()
            .all(|(_, p)| !p.contains("/configmaps/")),
        "the bundle was read: {:?}",
        h.api.requests()
    );
}

/// A bundle signing key's public PEM and the fingerprint a revision record names it by.
fn signer_key() -> (String, String) {
    let (_, public) = airlock_bundle::signing::generate().unwrap();
    let material = airlock_bundle::signing::parse_public_key(&public).unwrap();
    let fingerprint = format!(
        "sha256:{}",
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(material.as_bytes()))
    );
    (public, fingerprint)
}

/// `spec.replicas` of the last patch of the object at `path`.
fn replicas_patched(h: &Harness, path: &str) -> Option<Value> {
    h.api
        .last_patch(path)
        .map(|b| b["spec"]["replicas"].clone())
}

/// Issue 13: a Plugin created disabled costs the cluster nothing: no ServiceAccount, Secret,
/// NetworkPolicy, Service or Deployment, only its status.
#[tokio::test]
async fn a_plugin_that_never_ran_has_no_children() {
    let h = Harness::unsigned(MANIFEST);
    let mut p = plugin("uid-1", "[log]");
    p.spec.enabled = false;
    h.reconcile(&p).await;
    let writes = h.api.take_writes();
    let children: Vec<&String> = writes
        .iter()
        .filter(|w| !w.contains("/plugins/hello/status") && !w.contains("/events"))
        .collect();
    assert!(children.is_empty(), "{children:#?}");
    assert_eq!(h.status()["phase"], "Disabled", "{}", h.status());
}

/// Issue 13: a plugin that stops keeps its Deployment (scaled to zero: its ReplicaSets are what a
/// rollback re-applies) and its NetworkPolicy while a pod may still be terminating; once none
/// can be left, the NetworkPolicy and Service go — the very objects the watches show as its own.
#[tokio::test]
async fn a_stopped_plugin_keeps_its_network_policy_until_no_pod_can_be_left() {
    let mut h = Harness::unsigned(MANIFEST);
    let p = plugin("uid-1", "[log]");
    h.reconcile(&p).await;
    h.watch_deployment();
    h.watch_network();
    h.api.take_writes();

    let mut off = h.seen(&p);
    off.spec.enabled = false;
    let action = h.reconcile(&off).await;
    h.watch_deployment();
    let writes = h.api.take_writes();
    assert!(
        wrote(
            &writes,
            "PATCH /apis/apps/v1/namespaces/plugins/deployments/hello"
        ),
        "scaled to zero: {writes:#?}"
    );
    assert!(
        !wrote(&writes, "DELETE"),
        "pods may be terminating: {writes:#?}"
    );
    // Nothing will change meanwhile: the reconcile asks to look again when the window ends.
    let requeue = requeue_seconds(&action);
    let window = crate::stopped::POD_GONE_AFTER.as_secs_f64();
    assert!(requeue > window - 5.0 && requeue <= window, "{action:?}");

    // The window has passed (the operator saw the Deployment at zero a minute ago).
    let uid = "uid-1";
    let earlier = std::time::Instant::now()
        .checked_sub(Duration::from_secs(60))
        .expect("the machine has been up a minute");
    h.ctx.caches.not_stopped(uid);
    h.ctx.caches.stopped_since(uid, earlier);
    h.reconcile(&h.seen(&off)).await;
    let writes = h.api.take_writes();
    for gone in [
        "DELETE /apis/networking.k8s.io/v1/namespaces/plugins/networkpolicies/hello",
        "DELETE /api/v1/namespaces/plugins/services/hello",
    ] {
        assert!(writes.contains(&gone.to_string()), "{gone} in {writes:#?}");
    }
    assert!(
        !wrote(&writes, "DELETE /apis/apps"),
        "the Deployment stays: {writes:#?}"
    );
    assert_eq!(h.status()["phase"], "Disabled");

    // Enabled again before the watches saw the deletion: applied again all the same (the pods
    // must not start without their NetworkPolicy because a lagging cache still shows it).
    let on = h.seen(&p);
    h.reconcile(&on).await;
    let writes = h.api.take_writes();
    assert!(
        writes.contains(
            &"PATCH /apis/networking.k8s.io/v1/namespaces/plugins/networkpolicies/hello"
                .to_string()
        ),
        "{writes:#?}"
    );
    // Stopped again, and this time the window long passed at once.
    h.watch_deployment();
    h.watch_network();
    h.reconcile(&h.seen(&off)).await;
    h.watch_deployment();
    h.ctx.caches.not_stopped(uid);
    h.ctx.caches.stopped_since(uid, earlier);
    h.reconcile(&h.seen(&off)).await;
    h.api.take_writes();

    // Gone from the watches: nothing more to do, and nothing re-created.
    h.watch_network();
    h.reconcile(&h.seen(&off)).await;
    let writes = h.api.take_writes();
    assert!(
        !wrote(&writes, "networkpolicies") && !wrote(&writes, "services"),
        "{writes:#?}"
    );

    // Enabled again: the NetworkPolicy and Service come back with the pods.
    let on = h.seen(&p);
    h.reconcile(&on).await;
    let writes = h.api.take_writes();
    for back in [
        "PATCH /apis/networking.k8s.io/v1/namespaces/plugins/networkpolicies/hello",
        "PATCH /api/v1/namespaces/plugins/services/hello",
    ] {
        assert!(writes.contains(&back.to_string()), "{back} in {writes:#?}");
    }
}

/// A Plugin whose namespace is being deleted writes nothing (every create there is refused, and
/// the namespace takes the children with it); its own deletion follows.
#[tokio::test]
async fn nothing_is_written_for_a_plugin_whose_namespace_is_going_away() {
    let mut h = Harness::unsigned(MANIFEST);
    h.namespaces
        .apply_watcher_event(&watcher::Event::Apply(PartialObjectMeta {
            types: None,
            metadata: ObjectMeta {
                name: Some(NS.into()),
                deletion_timestamp: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    k8s_openapi::jiff::Timestamp::now(),
                )),
                ..Default::default()
            },
            _phantom: Default::default(),
        }));
    h.reconcile(&plugin("uid-1", "[log]")).await;
    assert_eq!(h.api.take_writes(), Vec::<String>::new());
}

/// Issue 14: the finalizer older versions set is removed (a conditional write: the
/// resourceVersion it was read at), and a finalizer of someone else stays.
#[tokio::test]
async fn the_finalizer_of_older_versions_is_removed_and_others_are_kept() {
    let h = Harness::unsigned(MANIFEST);
    let mut p = plugin("uid-1", "[log]");
    p.metadata.finalizers = Some(vec![
        "example.com/keep".into(),
        super::LEGACY_FINALIZER.into(),
    ]);
    p.metadata.resource_version = Some("42".into());
    h.api.put(
        &format!("/apis/airlock.dev/v1alpha1/namespaces/{NS}/plugins/hello"),
        serde_json::to_value(&p).unwrap(),
    );
    let api = kube::Api::<Plugin>::namespaced(h.ctx.client.clone(), NS);
    super::remove_legacy_finalizer(&api, &p)
        .await
        .expect("removed");
    let body = h
        .api
        .last_patch(&format!(
            "/apis/airlock.dev/v1alpha1/namespaces/{NS}/plugins/hello"
        ))
        .expect("a patch of the Plugin");
    assert_eq!(body["metadata"]["finalizers"], json!(["example.com/keep"]));
    assert_eq!(body["metadata"]["resourceVersion"], "42");
}

/// A harness whose policy grants the credentials Secret `acme-pull` (in `airlock-system`) for the
/// repositories under `198.19.255.1:5000/acme`, which the test Plugin's image is in.
fn with_registry_grant() -> Harness {
    let mut grant = policy(json!([]));
    grant.spec.registries = vec![airlock_crds::trust_policy::RegistryCredentials {
        prefix: "198.19.255.1:5000/acme".into(),
        credentials_secret: "acme-pull".into(),
    }];
    let mut h = Harness::new(
        grant,
        json!({"metadata": {"name": "hello-bundle", "namespace": NS},
               "binaryData": {"bundle.tar.gz": b64(&bundle(MANIFEST))}}),
    );
    h.ctx.registry = Arc::new(
        Registry::new(vec![], Duration::from_secs(3600))
            .unwrap()
            .with_credentials(h.ctx.client.clone(), "airlock-system"),
    );
    h
}

#[tokio::test]
async fn granted_credentials_that_do_not_exist_block_the_rollout_and_say_who_creates_them() {
    let h = with_registry_grant();
    h.reconcile(&plugin("uid-1", "[log]")).await;

    let writes = h.api.take_writes();
    assert!(
        !wrote(&writes, "/deployments/"),
        "nothing is rolled out: {writes:#?}"
    );
    let status = h.status();
    let (ok, reason) = condition(&status, "Verified");
    assert_eq!(
        (ok.as_str(), reason.as_str()),
        ("False", "RegistryCredentialsUnavailable"),
        "{status}"
    );
    let message = status.to_string();
    for part in [
        "PluginTrustPolicy dev",
        "airlock-system/acme-pull",
        "kubectl -n airlock-system create secret docker-registry acme-pull",
    ] {
        assert!(message.contains(part), "{part:?} in {message}");
    }
}

#[tokio::test]
async fn a_granted_secret_of_the_wrong_kind_is_named_without_its_content() {
    let h = with_registry_grant();
    h.api.put(
        "/api/v1/namespaces/airlock-system/secrets/acme-pull",
        json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
               "metadata": {"name": "acme-pull", "namespace": "airlock-system"},
               "data": {"password": b64(b"hunter2")}}),
    );
    h.reconcile(&plugin("uid-1", "[log]")).await;

    let status = h.status();
    assert_eq!(
        condition(&status, "Verified").1,
        "RegistryCredentialsUnavailable"
    );
    let message = status.to_string();
    assert!(
        message.contains(r#"is of type \"Opaque\", not kubernetes.io/dockerconfigjson"#),
        "{message}"
    );
    assert!(!message.contains("hunter2") && !message.contains(&b64(b"hunter2")));
}

/// The write of the Plugin's TLS Secret (its certificate issued or renewed).
const TLS_SECRET_WRITE: &str = "PATCH /api/v1/namespaces/plugins/secrets/hello-tls";

/// `s` seconds ago on the monotonic clock (the renewal moment is set back rather than the clock
/// forward).
fn issued_ago(s: u64) -> std::time::Instant {
    std::time::Instant::now()
        .checked_sub(Duration::from_secs(s))
        .expect("the machine has been up for minutes")
}

/// In how many seconds the reconcile asked to look at the Plugin again (`Action` keeps it private).
fn requeue_seconds(action: &Action) -> f64 {
    let debug = format!("{action:?}");
    debug
        .split("Some(")
        .nth(1)
        .and_then(|s| s.split('s').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("a requeue in {debug}"))
}

/// Seconds from now until the end of the certificate the last patch of the Plugin's TLS Secret
/// wrote.
fn certificate_left(h: &Harness) -> f64 {
    let secret = h
        .api
        .last_patch(&format!("/api/v1/namespaces/{NS}/secrets/hello-tls"))
        .expect("the TLS Secret was written");
    let pem = base64::engine::general_purpose::STANDARD
        .decode(secret["data"]["tls.crt"].as_str().expect("tls.crt"))
        .unwrap();
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
    let not_after = pem.parse_x509().unwrap().validity().not_after.timestamp();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    not_after as f64 - now
}

/// A short certificate lifetime (`--plugin-certificate-lifetime-seconds`) is what the plugin's
/// certificate gets, and the reconcile comes back in time to renew it with a third left, also
/// when that is sooner than a steady Plugin's five-minute look.
#[tokio::test]
async fn a_short_lived_certificate_is_renewed_before_a_third_of_it_is_left() {
    let mut h = Harness::unsigned(MANIFEST);
    let lifetime = Duration::from_secs(600);
    h.ctx.plugin_certificate_lifetime = lifetime;
    let p = plugin("uid-1", "[log]");
    h.reconcile(&p).await;
    h.watch_deployment_ready();
    let left = certificate_left(&h);
    assert!((595.0..=600.0).contains(&left), "valid for {left} s");
    h.api.take_writes();

    let seen = h.seen(&p);
    let secret = TLS_SECRET_WRITE;
    // Issued 300 s ago: due in 100 s, sooner than the steady five-minute look.
    h.ctx
        .caches
        .certificate_issued("uid-1", issued_ago(300), lifetime);
    let action = h.reconcile(&seen).await;
    assert!(
        !h.api.take_writes().contains(&secret.to_string()),
        "not due yet"
    );
    let requeue = requeue_seconds(&action);
    assert!(
        requeue > 95.0 && requeue <= 101.0,
        "back when two thirds of the lifetime have passed: {action:?}"
    );

    // Two thirds have passed.
    h.ctx
        .caches
        .certificate_issued("uid-1", issued_ago(400), lifetime);
    h.reconcile(&seen).await;
    assert!(h.api.take_writes().contains(&secret.to_string()), "renewed");
    assert!(certificate_left(&h) > 595.0);
}

/// A plugin whose new spec cannot be fetched or verified keeps serving its earlier revision
/// (Degraded), for as long as the spec stays broken: its certificate must be renewed meanwhile,
/// or the running pods stop serving at its end.
#[tokio::test]
async fn a_plugin_serving_an_earlier_revision_keeps_its_certificate_renewed() {
    let (public, fingerprint) = signer_key();
    let (mut h, _, p) = running_with_a_broken_spec(
        json!([{"name": "acme", "ed25519": public, "trustLevel": "Trusted"}]),
        &fingerprint,
        json!(["log"]),
    );
    let lifetime = Duration::from_secs(600);
    h.ctx.plugin_certificate_lifetime = lifetime;
    let secret = TLS_SECRET_WRITE;

    h.ctx
        .caches
        .certificate_issued("uid-1", issued_ago(100), lifetime);
    h.reconcile(&p).await;
    assert_eq!(h.status()["phase"], "Degraded", "{}", h.status());
    assert!(
        !h.api.take_writes().contains(&secret.to_string()),
        "a good certificate is not written again"
    );

    h.ctx
        .caches
        .certificate_issued("uid-1", issued_ago(400), lifetime);
    h.reconcile(&p).await;
    let writes = h.api.take_writes();
    assert!(writes.contains(&secret.to_string()), "renewed: {writes:#?}");
    assert!(certificate_left(&h) > 595.0);
    assert!(
        !wrote(&writes, "deployments/hello"),
        "nothing of the broken spec is applied: {writes:#?}"
    );
}

/// The renewal above never gives a certificate to a Plugin the operator did not roll out: a tenant
/// who makes a Deployment that looks like the Plugin's (its name, a controller reference with the
/// Plugin's uid) for a Plugin whose spec fails to verify gets no CA-signed certificate written
/// into a Secret they can read.
#[tokio::test]
async fn a_deployment_made_to_look_like_the_plugins_earns_it_no_certificate() {
    let (public, fingerprint) = signer_key();
    let secret = TLS_SECRET_WRITE;
    for forged in ["never rolled out", "no plugin label"] {
        let (mut h, deployment, mut p) = running_with_a_broken_spec(
            json!([{"name": "acme", "ed25519": public, "trustLevel": "Trusted"}]),
            &fingerprint,
            json!(["log"]),
        );
        match forged {
            // No status: the operator never rolled anything out for it.
            "never rolled out" => p.status = None,
            // The tenant's own Deployment cannot carry the label (admission policy).
            _ => {
                h.api.put(
                    &deployment,
                    json!({"apiVersion": "apps/v1", "kind": "Deployment",
                           "metadata": {"name": "hello", "namespace": NS,
                                        "ownerReferences": owned_by("uid-1")},
                           "spec": {"replicas": 1}}),
                );
                h.watch_deployment();
            }
        }
        h.reconcile(&p).await;
        let writes = h.api.take_writes();
        assert!(
            !writes.contains(&secret.to_string()),
            "{forged}: no certificate: {writes:#?}"
        );
    }
}

/// A running Plugin whose next revision is held back by someone else's object named like one of
/// its children (nothing of the revision is applied) keeps serving the last one: with its
/// certificate renewed meanwhile.
#[tokio::test]
async fn a_plugin_held_back_by_an_object_in_the_way_keeps_its_certificate_renewed() {
    let mut h = Harness::unsigned(MANIFEST);
    running_deployment_of_two(&mut h);
    h.api.put(
        &format!("/apis/networking.k8s.io/v1/namespaces/{NS}/networkpolicies/hello"),
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
               "metadata": {"name": "hello", "namespace": NS, "resourceVersion": "7"},
               "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}),
    );
    let mut p = plugin("uid-1", "[log]");
    p.status = serde_json::from_value(json!({
        "phase": "Active", "currentRevision": "rgood", "lastGoodRevision": "rgood",
        "permissions": ["log"],
        "revisions": [{"revision": "rgood", "bundleSigner": null, "imageSigner": null,
                       "permissions": ["log"]}]}))
    .ok();
    let lifetime = Duration::from_secs(600);
    h.ctx.plugin_certificate_lifetime = lifetime;
    h.ctx
        .caches
        .certificate_issued("uid-1", issued_ago(400), lifetime);
    h.reconcile(&p).await;
    let writes = h.api.take_writes();
    let status = h.status();
    assert_eq!(
        condition(&status, "Ready"),
        ("False".into(), "ObjectNotOwned".into()),
        "{status}"
    );
    assert!(
        writes.contains(&TLS_SECRET_WRITE.to_string()),
        "renewed: {writes:#?}"
    );
    assert!(
        !wrote(&writes, "deployments/hello"),
        "nothing of the held-back revision is applied: {writes:#?}"
    );
}

/// A restarted operator or a new leader (nothing remembered) keeps the certificate the Plugin's
/// status records while it is of today's CA and lifetime — no Secret write, the renewal still on
/// time — and issues one at once when the CA was replaced or the lifetime lowered.
#[tokio::test]
async fn a_new_leader_keeps_the_recorded_certificate_unless_the_ca_or_lifetime_changed() {
    let mut h = Harness::unsigned(MANIFEST);
    let p = plugin("uid-1", "[log]");
    h.reconcile(&p).await;
    h.watch_deployment_ready();
    h.reconcile(&h.seen(&p)).await;
    let seen = h.seen(&p);
    let record = seen
        .status
        .as_ref()
        .and_then(|s| s.certificate.clone())
        .expect("the status records the certificate");
    assert_eq!(record.ca_digest, crate::certs::ca_digest(&h.watches.ca));
    assert_eq!(h.status()["phase"], "Active", "{}", h.status());
    h.api.take_writes();

    // A new leader.
    h.ctx.caches = super::caches::PluginCaches::default();
    h.reconcile(&seen).await;
    let writes = h.api.take_writes();
    assert!(
        !writes.contains(&TLS_SECRET_WRITE.to_string()),
        "the recorded certificate is kept: {writes:#?}"
    );
    let renewal = h
        .ctx
        .caches
        .certificate_renewal_in("uid-1", std::time::Instant::now())
        .expect("its renewal is known");
    assert!(
        renewal > Duration::from_secs(15 * 3600) && renewal <= Duration::from_secs(16 * 3600),
        "renewed on the recorded schedule: {renewal:?}"
    );

    // The lifetime was lowered: a certificate that would outlive it is replaced at once.
    h.ctx.caches = super::caches::PluginCaches::default();
    h.ctx.plugin_certificate_lifetime = Duration::from_secs(600);
    h.reconcile(&seen).await;
    assert!(
        h.api.take_writes().contains(&TLS_SECRET_WRITE.to_string()),
        "a lowered lifetime applies at once"
    );
    h.ctx.plugin_certificate_lifetime = airlock_tls::pki::PLUGIN_LEAF_LIFETIME;

    // The CA was replaced.
    h.ctx.caches = super::caches::PluginCaches::default();
    h.watches.ca = Ca::generate(SystemTime::now()).unwrap();
    h.reconcile(&seen).await;
    assert!(
        h.api.take_writes().contains(&TLS_SECRET_WRITE.to_string()),
        "a certificate of another CA is issued again"
    );
    assert_eq!(
        h.status()["certificate"]["caDigest"],
        crate::certs::ca_digest(&h.watches.ca),
        "and recorded"
    );
}

/// A manifest that takes a configuration (`onLoad`; `onConfigChange` when `live`) whose schema
/// requires a short `greeting`.
fn configured_manifest(live: bool) -> String {
    let hooks = if live {
        "[onLoad, onConfigChange, transform]"
    } else {
        "[onLoad, transform]"
    };
    format!(
        "name: hello\nversion: 1.0.0\napiVersion: 1\nhooks: {hooks}\npermissions: [log]\n\
         entryPoint: [/hello]\nconfigSchema:\n  type: object\n  properties:\n    \
         greeting: {{type: string, maxLength: 8}}\n  required: [greeting]\n"
    )
}

fn configured_plugin(greeting: &str) -> Plugin {
    let mut p = plugin("uid-1", "[log]");
    p.spec.config = Some(json!({"greeting": greeting}));
    p
}

/// The configuration ConfigMaps the fake holds: name → data.
fn config_maps(h: &Harness) -> BTreeMap<String, Value> {
    h.api
        .state()
        .objects
        .iter()
        .filter(|(p, _)| p.contains("/configmaps/hello-config"))
        .map(|(_, o)| {
            (
                o["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                o["data"].clone(),
            )
        })
        .collect()
}

/// The ConfigMap the Deployment's pods mount.
fn mounted_config(h: &Harness) -> String {
    let d = &h.api.state().objects[&format!("/apis/apps/v1/namespaces/{NS}/deployments/hello")];
    d["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == "config")
        .map(|v| {
            v["configMap"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn a_configuration_is_written_once_before_the_pods_and_a_change_is_a_new_one() {
    let mut h = Harness::unsigned(&configured_manifest(false));
    let p = configured_plugin("hi");
    h.reconcile(&p).await;
    let writes = h.api.take_writes();
    let first = config_maps(&h);
    assert_eq!(first.len(), 1, "{first:?}");
    let (name, data) = first.iter().next().unwrap();
    assert_eq!(data["config.json"], r#"{"greeting":"hi"}"#);
    assert_eq!(mounted_config(&h), *name, "the pods mount it");
    let at = |what: &str| writes.iter().position(|w| w.contains(what));
    assert!(
        at("configmaps/hello-config") < at("deployments/hello"),
        "written before the pods that mount it: {writes:#?}"
    );

    // Unchanged: not written again.
    h.watch_deployment();
    h.reconcile(&h.seen(&p)).await;
    assert!(!wrote(&h.api.take_writes(), "configmaps/"), "written once");

    // Changed: a new ConfigMap and a new revision mounting it; the old one stays for a rollback.
    let changed = configured_plugin("hey");
    h.reconcile(&h.seen(&changed)).await;
    let second = config_maps(&h);
    assert_eq!(second.len(), 2, "{second:?}");
    let new = mounted_config(&h);
    assert_ne!(&new, name);
    assert_eq!(second[&new]["config.json"], r#"{"greeting":"hey"}"#);
}

#[tokio::test]
async fn a_live_configuration_changes_in_place_without_a_new_revision() {
    let mut h = Harness::unsigned(&configured_manifest(true));
    let p = configured_plugin("hi");
    h.reconcile(&p).await;
    let revision = h.status()["currentRevision"].clone();
    assert!(revision.is_string(), "{}", h.status());
    assert_eq!(mounted_config(&h), "hello-config");
    h.watch_deployment();
    h.api.take_writes();
    h.reconcile(&h.seen(&configured_plugin("hey"))).await;
    let writes = h.api.take_writes();
    assert!(wrote(&writes, "configmaps/hello-config"), "{writes:#?}");
    assert!(
        !wrote(&writes, "deployments/"),
        "the pods stay: {writes:#?}"
    );
    assert_eq!(h.status()["currentRevision"], revision);
    assert_eq!(
        config_maps(&h)["hello-config"]["config.json"],
        r#"{"greeting":"hey"}"#
    );
}

#[tokio::test]
async fn a_configuration_the_signed_schema_refuses_is_a_condition_naming_the_field_and_nothing_rolls_out()
 {
    let h = Harness::unsigned(&configured_manifest(false));
    h.reconcile(&configured_plugin("far too long")).await;
    let status = h.status();
    assert_eq!(
        condition(&status, "Compatible"),
        ("False".into(), "ConfigInvalid".into()),
        "{status}"
    );
    let text = status.to_string();
    assert!(text.contains("spec.config.greeting"), "{text}");
    assert!(
        !text.contains("far too long"),
        "the value is not repeated: {text}"
    );
    assert_no_child_written(&h, "a refused configuration");
}

#[tokio::test]
async fn a_config_map_named_like_the_plugins_configuration_is_not_taken_over() {
    let h = Harness::unsigned(&configured_manifest(true));
    let path = format!("/api/v1/namespaces/{NS}/configmaps/hello-config");
    let theirs = json!({"apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": "hello-config", "namespace": NS},
                        "data": {"config.json": "{\"greeting\":\"theirs\"}"}});
    h.api.put(&path, theirs.clone());
    h.reconcile(&configured_plugin("hi")).await;
    assert_eq!(h.api.state().objects[&path], theirs, "untouched");
    assert_in_the_way(&h, "ConfigMap plugins/hello-config");
    let writes = h.api.take_writes();
    assert!(
        !wrote(&writes, "deployments/"),
        "no pods without their configuration"
    );
    // Nothing after the refused write either (the network objects come after the
    // configuration): a name squatted by a tenant gets the plugin no further.
    for later in ["serviceaccounts/", "networkpolicies/", "services/"] {
        assert!(!wrote(&writes, later), "{later} in {writes:#?}");
    }
}

/// A Secret named like the Plugin's bundle Secret that someone else made is neither overwritten
/// nor made the Plugin's: the write is refused (admission policy), the Plugin says which Secret
/// is in the way, and nothing after it is written — not its ConfigMap, network objects or pods.
#[tokio::test]
async fn a_secret_named_like_the_plugins_bundle_secret_stops_the_rollout_there() {
    // The bundle Secret's name (named by digest) as a first reconcile writes it.
    let first = Harness::unsigned(MANIFEST);
    first.reconcile(&plugin("uid-0", "[log]")).await;
    let writes = first.api.take_writes();
    let bundle_path = writes
        .iter()
        .find_map(|w| {
            w.strip_prefix("PATCH ")
                .filter(|p| p.contains("/secrets/hello-bundle-"))
        })
        .expect("a bundle Secret is written")
        .to_string();

    let h = Harness::unsigned(MANIFEST);
    let theirs = json!({"apiVersion": "v1", "kind": "Secret",
                        "metadata": {"name": bundle_path.rsplit('/').next(), "namespace": NS},
                        "data": {"plugin.yaml": "dGhlaXJz"}});
    h.api.put(&bundle_path, theirs.clone());
    let p = plugin("uid-1", "[log]");
    h.reconcile(&p).await;

    assert_eq!(h.api.state().objects[&bundle_path], theirs, "untouched");
    let writes = h.api.take_writes();
    assert_eq!(
        child_writes(&writes),
        vec![
            &format!("PATCH /api/v1/namespaces/{NS}/secrets/hello-tls"),
            &format!("PATCH {bundle_path}"),
        ],
        "the identity, then the refused attempt: nothing after it"
    );
    assert_in_the_way(
        &h,
        &format!(
            "Secret {NS}/{}",
            bundle_path.rsplit('/').next().unwrap_or_default()
        ),
    );

    // Their Secret goes: the plugin's own and everything after it follow (its certificate,
    // issued before, is not issued again).
    h.api.state().objects.remove(&bundle_path);
    h.reconcile(&h.seen(&p)).await;
    let writes = h.api.take_writes();
    for child in [
        &bundle_path,
        "serviceaccounts/hello",
        "networkpolicies/hello",
        "services/hello",
        "deployments/hello",
    ] {
        assert!(wrote(&writes, child), "{child} in {writes:#?}");
    }
    assert_eq!(
        h.api.state().objects[&bundle_path]["metadata"]["ownerReferences"][0]["uid"],
        "uid-1"
    );
}

/// The plugin's storage as the router leaves it after `version`'s process wrote it.
fn storage_written_by(h: &Harness, version: &str) {
    h.api.put(
        &format!("/apis/airlock.dev/v1alpha1/namespaces/{NS}/pluginstorages/hello"),
        json!({"apiVersion": "airlock.dev/v1alpha1", "kind": "PluginStorage",
               "metadata": {"name": "hello", "namespace": NS},
               "spec": {"plugin": "hello"},
               "data": {"schema": "v2"},
               "status": {"writtenBy": version}}),
    );
}

fn storage_reads(h: &Harness) -> usize {
    h.api
        .requests()
        .iter()
        .filter(|(m, p)| *m == Method::GET && p.ends_with("/pluginstorages/hello"))
        .count()
}

#[tokio::test]
async fn a_version_below_the_one_that_wrote_the_storage_is_refused_until_the_plugin_allows_it() {
    let h = Harness::unsigned(MANIFEST);
    storage_written_by(&h, "1.1.0");
    let p = plugin("uid-1", "[log]");
    h.reconcile(&p).await;
    let status = h.status();
    assert_eq!(
        condition(&status, "Compatible"),
        ("False".into(), "DowngradeRefused".into()),
        "{status}"
    );
    let text = status.to_string();
    for what in [
        "1.1.0",
        "spec.allowDowngrade: true",
        "PluginStorage plugins/hello",
    ] {
        assert!(text.contains(what), "{what:?} in {text}");
    }
    assert_no_child_written(&h, "a refused downgrade");
    assert!(
        h.events()
            .iter()
            .any(|(ty, reason)| ty == "Warning" && reason == "DowngradeRefused"),
        "{:?}",
        h.events()
    );

    // The Plugin says the older version reads that data: it rolls out.
    let mut allowed = p.clone();
    allowed.spec.allow_downgrade = true;
    h.reconcile(&h.seen(&allowed)).await;
    assert_every_child_written(&h);
    assert_ne!(
        condition(&h.status(), "Compatible").1,
        "DowngradeRefused",
        "{}",
        h.status()
    );
}

#[tokio::test]
async fn the_storage_is_looked_at_only_when_a_new_revision_would_roll_out() {
    let mut h = Harness::unsigned(MANIFEST);
    // Written by this very version (or never): no refusal.
    storage_written_by(&h, "1.0.0");
    let p = plugin("uid-1", "[log]");
    h.reconcile(&p).await;
    assert!(storage_reads(&h) >= 1, "{:#?}", h.api.requests());
    assert_every_child_written(&h);
    // The revision that runs: reconciles do not read the storage again.
    h.watch_deployment_ready();
    h.reconcile(&h.seen(&p)).await;
    h.reconcile(&h.seen(&p)).await;
    assert_eq!(storage_reads(&h), 0, "{:#?}", h.api.requests());
}

#[tokio::test]
async fn an_unreadable_storage_holds_the_new_revision_and_the_kill_switch_still_acts() {
    let mut h = Harness::unsigned(MANIFEST);
    let p = plugin("uid-1", "[log]");
    h.reconcile(&p).await;
    h.watch_deployment_ready();
    h.reconcile(&h.seen(&p)).await;
    let running = h.status()["currentRevision"].clone();
    h.api.take_writes();
    h.api.state().forbidden_reads.push(format!(
        "/apis/airlock.dev/v1alpha1/namespaces/{NS}/pluginstorages/hello"
    ));
    // A new revision (another memory limit) cannot rule a downgrade out: it waits, named.
    let mut changed = h.seen(&p);
    changed.spec.resources = serde_json::from_value(json!({"limits": {"memory": "96Mi"}})).unwrap();
    h.reconcile(&changed).await;
    let status = h.status();
    assert_eq!(
        condition(&status, "Compatible"),
        ("False".into(), "StorageUnreadable".into()),
        "{status}"
    );
    assert!(
        status.to_string().contains("get on pluginstorages"),
        "{status}"
    );
    assert_eq!(
        status["currentRevision"], running,
        "the running revision stays"
    );
    assert_no_child_written(&h, "a revision that waits for the storage");
    // Switched off meanwhile: it stops, whatever the storage read says.
    let mut off = h.seen(&changed);
    off.spec.enabled = false;
    h.reconcile(&off).await;
    assert!(
        replicas_patched(
            &h,
            &format!("/apis/apps/v1/namespaces/{NS}/deployments/hello")
        )
        .is_some_and(|r| r == json!(0)),
        "scaled to zero: {:#?}",
        h.api.requests()
    );
}

const STATUS_PATH: &str = "/apis/airlock.dev/v1alpha1/namespaces/plugins/plugins/hello/status";

const EVENTS_PATH: &str = "/apis/events.k8s.io/v1/namespaces/plugins/events";

/// The API server goes away as a Plugin turns Active: the audit record went out, the status
/// write beside it failed (and the Event with it, when `events_fail`). Tried again (the
/// reconcile's error is retried), the status is written and nothing is recorded or told twice —
/// the audit stream's consumers count transitions — nor is the Event lost.
async fn active_while_the_api_server_goes_away(events_fail: bool) {
    let mut h = Harness::unsigned(MANIFEST);
    let p = plugin("uid-1", "[log]");
    h.reconcile(&p).await;
    assert_eq!(h.status()["phase"], "Deploying");
    let deploying = h.seen(&p);

    h.watch_deployment_ready();
    h.api.state().unavailable.push(STATUS_PATH.into());
    if events_fail {
        h.api.state().unavailable.push(EVENTS_PATH.into());
    }
    assert!(
        h.try_reconcile(&deploying).await.is_err(),
        "the failed write fails the reconcile (retried with backoff)"
    );
    assert_eq!(h.status()["phase"], "Deploying", "nothing was written");
    let audited = h.audited();
    assert!(
        audited.contains(&("Phase".into(), "Active".into())),
        "recorded before the write: {audited:?}"
    );
    let active = vec![("Normal".to_string(), "Active".to_string())];
    assert_eq!(h.events().is_empty(), events_fail, "{:?}", h.events());

    h.api.state().unavailable.clear();
    h.reconcile(&deploying).await;
    assert_eq!(h.status()["phase"], "Active", "written when tried again");
    assert_eq!(h.audited(), audited, "no transition recorded twice");
    assert_eq!(h.events(), active, "told once");

    // And steady from then on.
    h.reconcile(&h.seen(&p)).await;
    assert_eq!(h.audited(), audited);
    assert_eq!(h.events(), active);
}

#[tokio::test]
async fn a_status_write_that_failed_is_tried_again_without_recording_its_transitions_twice() {
    active_while_the_api_server_goes_away(false).await;
}

#[tokio::test]
async fn an_event_that_failed_with_the_status_write_is_told_when_it_is_tried_again() {
    active_while_the_api_server_goes_away(true).await;
}

/// A status recorded but never written, and by the next attempt no longer true (the pods lost
/// their readiness while the API server was away): the audit stream is brought back to the
/// status that stands, so that it never ends on a phase the Plugin did not have.
#[tokio::test]
async fn a_recorded_status_whose_write_failed_is_taken_back_when_it_no_longer_holds() {
    let mut h = Harness::unsigned(MANIFEST);
    let p = plugin("uid-1", "[log]");
    h.reconcile(&p).await;
    let deploying = h.seen(&p);

    h.watch_deployment_ready();
    h.api.state().unavailable.push(STATUS_PATH.into());
    assert!(h.try_reconcile(&deploying).await.is_err());
    h.api.state().unavailable.clear();

    h.watch_deployment();
    h.reconcile(&deploying).await;
    assert_eq!(h.status()["phase"], "Deploying");
    let phases: Vec<String> = h
        .audited()
        .into_iter()
        .filter(|(event, _)| event == "Phase")
        .map(|(_, phase)| phase)
        .collect();
    assert_eq!(phases, ["Deploying", "Active", "Deploying"]);
}
