//! `catalog publish|search|show|install|upgrade`: signed plugins from catalogs the cluster trusts.
//!
//! A catalog is an index ([`index::Index`]) published as a signed OCI artifact; the cluster's
//! `PluginCatalog` objects say which indexes to read and which keys they must be signed with.
//! Nothing from a catalog is used before its index verifies under one of those keys, and nothing
//! is installed before the entry's bundle, pulled by its pinned digest, verifies under the key the
//! entry names. What is installed is a Plugin pinned by digest, verified again by the operator
//! against the PluginTrustPolicy as any other: a catalog offers, the trust policy decides.

pub mod index;

use std::path::PathBuf;

use airlock_bundle::oci::{BUNDLE, CATALOG};
use airlock_bundle::{DEFAULT_MAX_BYTES, signing};
use airlock_crds::{Plugin, PluginCatalog};
use clap::{Args, Subcommand};
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client};
use serde::Serialize;
use serde_json::Value;

use crate::invoke::table;
use crate::oci::{OciError, RegistryArgs, pull_kind, push_kind};
use crate::output::{Output, PrintError, print};
use index::{
    CATALOG_LABEL, ENTRY_ANNOTATION, Entry, Index, IndexError, MAX_INDEX_BYTES, index_digest,
};

/// The field manager of what `install` and `upgrade` write.
const FIELD_MANAGER: &str = "kubectl-airlock";

#[derive(Args, Debug)]
pub struct CatalogArgs {
    #[command(subcommand)]
    pub command: CatalogCommand,
}

#[derive(Subcommand, Debug)]
pub enum CatalogCommand {
    /// Add a signed bundle (already pushed) to a catalog index and push the index, signed.
    Publish(PublishArgs),
    /// The newest version of every plugin the cluster's catalogs offer (matching TEXT).
    Search(SearchArgs),
    /// Every version of one plugin: image, bundle, digests, hooks, permissions, signer.
    Show(ShowArgs),
    /// Install NAME[@VERSION] from a catalog as a Plugin pinned by digest.
    Install(InstallArgs),
    /// Move a Plugin installed from a catalog to a newer version of it.
    Upgrade(UpgradeArgs),
}

#[derive(Args, Debug)]
pub struct PublishArgs {
    /// The bundle artifact, as `bundle push` printed it (REPOSITORY:TAG@sha256:...), signed with
    /// --key.
    #[arg(long)]
    pub bundle: String,
    /// The plugin's image, pinned: REPOSITORY@sha256:...
    #[arg(long)]
    pub image: String,
    /// The index to add it to: REGISTRY/REPOSITORY:TAG (created if it does not exist).
    #[arg(long)]
    pub index: String,
    /// The catalog's private key (from `keygen`): it signed the bundle and signs the index.
    #[arg(long, value_name = "PATH")]
    pub key: PathBuf,
    /// The key's name in the cluster's PluginCatalog (spec.keys[].name).
    #[arg(long)]
    pub key_name: String,
    /// What the plugin does, for `catalog search`.
    #[arg(long, default_value = "")]
    pub description: String,
    /// Create the index when the registry has none (without it, a missing index is an error:
    /// a registry that lost or hides the index must not make publish start an empty one).
    #[arg(long)]
    pub create: bool,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

#[derive(Args, Debug)]
pub struct SearchArgs {
    /// Only plugins whose name or description contains it.
    #[arg(default_value = "")]
    pub text: String,
    /// Only this PluginCatalog.
    #[arg(long)]
    pub catalog: Option<String>,
    #[arg(long, short = 'o', value_enum, default_value_t)]
    pub output: Output,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

#[derive(Args, Debug)]
pub struct ShowArgs {
    /// NAME, or NAME@VERSION for one version.
    pub plugin: String,
    #[arg(long)]
    pub catalog: Option<String>,
    #[arg(long, short = 'o', value_enum, default_value_t)]
    pub output: Output,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

#[derive(Args, Debug)]
pub struct InstallArgs {
    /// NAME, or NAME@VERSION (default: the newest).
    pub plugin: String,
    /// Namespace of the Plugin. Default: the kubeconfig context's namespace.
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// The Plugin's name. Default: the plugin's.
    #[arg(long)]
    pub name: Option<String>,
    /// The PluginCatalog to install from, when several offer the plugin.
    #[arg(long)]
    pub catalog: Option<String>,
    /// Print the Plugin (with -o yaml or json) instead of applying it.
    #[arg(long)]
    pub dry_run: bool,
    #[arg(long, short = 'o', value_enum, default_value_t)]
    pub output: Output,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

#[derive(Args, Debug)]
pub struct UpgradeArgs {
    /// The Plugin (installed by `catalog install`).
    pub name: String,
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// The version to move to. Default: the catalog's newest.
    #[arg(long)]
    pub to: Option<semver::Version>,
    /// Allow moving to an older version (an older signed index served again would otherwise
    /// roll the Plugin back unnoticed).
    #[arg(long)]
    pub allow_downgrade: bool,
    #[arg(long)]
    pub dry_run: bool,
    #[arg(long, short = 'o', value_enum, default_value_t)]
    pub output: Output,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error(
        "cannot reach the cluster ({0}); check the kubeconfig (KUBECONFIG, `kubectl config current-context`)"
    )]
    Config(String),
    #[error("the API server refused: {0}")]
    Api(#[from] kube::Error),
    #[error(
        "there is no PluginCatalog{}; an administrator adds one (kubectl apply -f a PluginCatalog naming the index and its keys)",
        .0.as_deref().map(|c| format!(" {c}")).unwrap_or_default()
    )]
    NoCatalog(Option<String>),
    #[error(
        "the catalog {catalog} has no index at {index} yet: publish to it with `airlockctl catalog publish`"
    )]
    NoIndex { catalog: String, index: String },
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error(transparent)]
    Oci(#[from] OciError),
    #[error("no catalog offers {0}; `airlockctl catalog search` lists what they offer")]
    NotFound(String),
    #[error("{plugin} is offered by several catalogs ({catalogs}); choose one with --catalog")]
    Ambiguous { plugin: String, catalogs: String },
    #[error("{0:?} is not NAME or NAME@VERSION (a semantic version)")]
    BadName(String),
    #[error("the bundle {bundle}: {reason}")]
    Bundle { bundle: String, reason: String },
    #[error(
        "--image {0} is not pinned: give REPOSITORY@sha256:<64 hex> (the digest `crane digest` prints)"
    )]
    ImageNotPinned(String),
    #[error("reading the key {}: {reason}", .path.display())]
    Key { path: PathBuf, reason: String },
    #[error(
        "the Plugin {0} was not installed from a catalog (no label {CATALOG_LABEL}); install it with `catalog install`, or change it in Git"
    )]
    NotFromCatalog(String),
    #[error("there is no Plugin {0}")]
    NoPlugin(String),
    #[error(
        "{plugin}: {to} is older than the installed {from}; pass --allow-downgrade to move back (the operator still refuses a version older than the one that last wrote the plugin's storage)"
    )]
    Downgrade {
        plugin: String,
        from: String,
        to: String,
    },
    #[error("{0}")]
    Publish(String),
    #[error(transparent)]
    Print(#[from] PrintError),
}

impl CatalogError {
    /// 5: nothing of that name; 2: bad input; 1: anything else (a refused signature included).
    pub fn exit_code(&self) -> u8 {
        match self {
            CatalogError::NotFound(_) | CatalogError::NoPlugin(_) | CatalogError::NoCatalog(_) => 5,
            CatalogError::BadName(_)
            | CatalogError::ImageNotPinned(_)
            | CatalogError::Downgrade { .. } => 2,
            _ => 1,
        }
    }
}

/// NAME or NAME@VERSION.
pub fn parse_plugin(text: &str) -> Result<(String, Option<semver::Version>), CatalogError> {
    match text.split_once('@') {
        None if !text.is_empty() => Ok((text.to_string(), None)),
        Some((name, version)) if !name.is_empty() => version
            .parse()
            .map(|v| (name.to_string(), Some(v)))
            .map_err(|_| CatalogError::BadName(text.to_string())),
        _ => Err(CatalogError::BadName(text.to_string())),
    }
}

/// The cluster's PluginCatalogs (only `only`, when given).
async fn catalogs(client: &Client, only: Option<&str>) -> Result<Vec<PluginCatalog>, CatalogError> {
    let api: Api<PluginCatalog> = Api::all(client.clone());
    let all = api.list(&ListParams::default()).await?.items;
    let chosen: Vec<PluginCatalog> = all
        .into_iter()
        .filter(|c| only.is_none_or(|o| c.metadata.name.as_deref() == Some(o)))
        .collect();
    if chosen.is_empty() {
        return Err(CatalogError::NoCatalog(only.map(str::to_string)));
    }
    Ok(chosen)
}

fn name_of(catalog: &PluginCatalog) -> String {
    catalog.metadata.name.clone().unwrap_or_default()
}

/// The catalog's index, verified under its keys.
async fn load(catalog: &PluginCatalog, registry: &RegistryArgs) -> Result<Index, CatalogError> {
    let name = name_of(catalog);
    let Some((pulled, _)) =
        pull_kind(&CATALOG, &catalog.spec.index, registry, MAX_INDEX_BYTES).await?
    else {
        return Err(CatalogError::NoIndex {
            catalog: name,
            index: catalog.spec.index.clone(),
        });
    };
    Ok(Index::verified(
        &name,
        &pulled.bundle,
        pulled.signature.as_deref(),
        &catalog.spec.keys,
    )?)
}

async fn client() -> Result<(Client, String), CatalogError> {
    crate::kubeconfig::client()
        .await
        .map_err(CatalogError::Config)
}

/// The entry `name` (at `version`, or newest) and the catalog offering it.
async fn resolve(
    client: &Client,
    only: Option<&str>,
    name: &str,
    version: Option<&semver::Version>,
    registry: &RegistryArgs,
) -> Result<(PluginCatalog, Entry), CatalogError> {
    let mut found = Vec::new();
    for catalog in catalogs(client, only).await? {
        let index = load(&catalog, registry).await?;
        if let Some(entry) = index.find(name, version) {
            found.push((catalog, entry.clone()));
        }
    }
    match found.len() {
        0 => Err(CatalogError::NotFound(match version {
            Some(v) => format!("{name}@{v}"),
            None => name.to_string(),
        })),
        1 => Ok(found.remove(0)),
        _ => Err(CatalogError::Ambiguous {
            plugin: name.to_string(),
            catalogs: found
                .iter()
                .map(|(c, _)| name_of(c))
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

/// The plugin.yaml of `bundle` (pulled from `reference`), unpacked with the shim's checks.
fn signed_manifest(
    reference: &str,
    bundle: &[u8],
) -> Result<airlock_bundle::Manifest, CatalogError> {
    let refused = |reason: String| CatalogError::Bundle {
        bundle: reference.to_string(),
        reason,
    };
    let scratch = tempfile::tempdir().map_err(|e| refused(format!("a scratch directory: {e}")))?;
    Ok(
        airlock_bundle::extract(bundle, scratch.path(), DEFAULT_MAX_BYTES)
            .map_err(|e| refused(e.to_string()))?
            .manifest,
    )
}

/// Pulls the entry's bundle by its pinned reference and checks it against the entry.
async fn check_entry(
    catalog: &PluginCatalog,
    entry: &Entry,
    registry: &RegistryArgs,
) -> Result<(), CatalogError> {
    let Some((pulled, _)) = pull_kind(&BUNDLE, &entry.bundle, registry, DEFAULT_MAX_BYTES).await?
    else {
        return Err(CatalogError::Bundle {
            bundle: entry.bundle.clone(),
            reason: "the registry does not have it".into(),
        });
    };
    entry.check_bundle(
        &name_of(catalog),
        &catalog.spec.keys,
        &pulled.bundle,
        pulled.signature.as_deref(),
    )?;
    let manifest = signed_manifest(&entry.bundle, &pulled.bundle)?;
    entry.check_manifest(&name_of(catalog), &manifest)?;
    Ok(())
}

/// One row of `search`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Offered {
    pub catalog: String,
    #[serde(flatten)]
    pub entry: Entry,
}

fn offered_table(offered: &[Offered]) -> String {
    if offered.is_empty() {
        return "no plugin matches".into();
    }
    let mut rows = vec![vec![
        "NAME".to_string(),
        "VERSION".into(),
        "CATALOG".into(),
        "PERMISSIONS".into(),
        "DESCRIPTION".into(),
    ]];
    for o in offered {
        rows.push(vec![
            o.entry.name.clone(),
            o.entry.version.to_string(),
            o.catalog.clone(),
            o.entry.permissions.join(","),
            o.entry.description.clone(),
        ]);
    }
    table(&rows)
}

pub async fn search(args: &SearchArgs) -> Result<String, CatalogError> {
    let (client, _) = client().await?;
    let mut offered = Vec::new();
    for catalog in catalogs(&client, args.catalog.as_deref()).await? {
        let index = load(&catalog, &args.registry).await?;
        for entry in index.search(&args.text) {
            offered.push(Offered {
                catalog: name_of(&catalog),
                entry: entry.clone(),
            });
        }
    }
    Ok(print(&offered, args.output, |o| offered_table(o))?)
}

pub async fn show(args: &ShowArgs) -> Result<String, CatalogError> {
    let (name, version) = parse_plugin(&args.plugin)?;
    let (client, _) = client().await?;
    let mut offered = Vec::new();
    for catalog in catalogs(&client, args.catalog.as_deref()).await? {
        let index = load(&catalog, &args.registry).await?;
        offered.extend(
            index
                .entries
                .iter()
                .filter(|e| e.name == name && version.as_ref().is_none_or(|v| &e.version == v))
                .map(|e| Offered {
                    catalog: name_of(&catalog),
                    entry: e.clone(),
                }),
        );
    }
    if offered.is_empty() {
        return Err(CatalogError::NotFound(args.plugin.clone()));
    }
    Ok(print(&offered, args.output, |offered| {
        offered
            .iter()
            .map(|o| {
                let e = &o.entry;
                format!(
                    "{}@{} (catalog {})\n  {}\n  image:       {}\n  bundle:      {}\n  digest:      {}\n  hooks:       {}\n  permissions: {}\n  signer:      {}",
                    e.name,
                    e.version,
                    o.catalog,
                    e.description,
                    e.image,
                    e.bundle,
                    e.bundle_digest,
                    e.hooks.join(", "),
                    e.permissions.join(", "),
                    e.signer
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    })?)
}

/// Applies (or, dry run, only prints) `plugin`.
async fn apply(
    client: &Client,
    namespace: &str,
    plugin: &Value,
    dry_run: bool,
    output: Output,
    done: String,
) -> Result<String, CatalogError> {
    if !dry_run {
        let name = plugin["metadata"]["name"].as_str().unwrap_or_default();
        Api::<Plugin>::namespaced(client.clone(), namespace)
            .patch(
                name,
                &PatchParams::apply(FIELD_MANAGER),
                &Patch::Apply(plugin),
            )
            .await?;
    }
    let output = match (dry_run, output) {
        // A dry run is for reading the Plugin: YAML unless asked otherwise.
        (true, Output::Table) => Output::Yaml,
        (_, o) => o,
    };
    Ok(print(plugin, output, |_| done)?)
}

pub async fn install(args: &InstallArgs) -> Result<String, CatalogError> {
    let (name, version) = parse_plugin(&args.plugin)?;
    let (client, default_namespace) = client().await?;
    let namespace = args.namespace.clone().unwrap_or(default_namespace);
    let (catalog, entry) = resolve(
        &client,
        args.catalog.as_deref(),
        &name,
        version.as_ref(),
        &args.registry,
    )
    .await?;
    check_entry(&catalog, &entry, &args.registry).await?;
    let plugin_name = args.name.clone().unwrap_or_else(|| entry.name.clone());
    let plugin = entry.plugin(&plugin_name, &namespace, &name_of(&catalog), &[]);
    let done = format!(
        "installed Plugin {namespace}/{plugin_name}: {}@{} from catalog {} (pinned by digest; its bundle's signature verified under key {})\nnext: airlockctl why {namespace}/{plugin_name}",
        entry.name,
        entry.version,
        name_of(&catalog),
        entry.signer
    );
    apply(
        &client,
        &namespace,
        &plugin,
        args.dry_run,
        args.output,
        done,
    )
    .await
}

pub async fn upgrade(args: &UpgradeArgs) -> Result<String, CatalogError> {
    let (client, default_namespace) = client().await?;
    let namespace = args.namespace.clone().unwrap_or(default_namespace);
    let shown = format!("{namespace}/{}", args.name);
    let current = Api::<Plugin>::namespaced(client.clone(), &namespace)
        .get_opt(&args.name)
        .await?
        .ok_or_else(|| CatalogError::NoPlugin(shown.clone()))?;
    let catalog_name = current
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(CATALOG_LABEL))
        .cloned()
        .ok_or_else(|| CatalogError::NotFromCatalog(shown.clone()))?;
    let current_json = serde_json::to_value(&current).unwrap_or_default();
    let plugin_version = current_json["spec"]["version"].as_str().unwrap_or_default();
    // The catalog plugin the install recorded (the Plugin may be named otherwise): upgrades move
    // along that plugin's versions only.
    let entry_name = current
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ENTRY_ANNOTATION))
        .cloned()
        .ok_or_else(|| CatalogError::NotFromCatalog(shown.clone()))?;
    let catalog = catalogs(&client, Some(&catalog_name)).await?.remove(0);
    let index = load(&catalog, &args.registry).await?;
    let target = index
        .find(&entry_name, args.to.as_ref())
        .ok_or_else(|| {
            CatalogError::NotFound(format!(
                "{entry_name}@{}",
                args.to
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default()
            ))
        })?
        .clone();
    if target.version.to_string() == plugin_version {
        return Ok(format!(
            "Plugin {shown} is at {}, the catalog's {}",
            target.version,
            if args.to.is_some() {
                "version asked for"
            } else {
                "newest"
            }
        ));
    }
    let older = semver::Version::parse(plugin_version).is_ok_and(|v| target.version < v);
    if older && !args.allow_downgrade {
        return Err(CatalogError::Downgrade {
            plugin: shown,
            from: plugin_version.to_string(),
            to: target.version.to_string(),
        });
    }
    check_entry(&catalog, &target, &args.registry).await?;
    let hooks = current_json["spec"]["hooks"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut plugin = target.plugin(&args.name, &namespace, &catalog_name, &hooks);
    // An upgrade grants nothing new: the permissions stay those the Plugin approves that the new
    // version still declares; what it newly declares is said, for the owner to decide.
    let granted: Vec<String> = current_json["spec"]["permissions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p.as_str().map(str::to_string))
        .collect();
    let kept: Vec<&String> = target
        .permissions
        .iter()
        .filter(|p| granted.contains(p))
        .collect();
    let new: Vec<&String> = target
        .permissions
        .iter()
        .filter(|p| !granted.contains(p))
        .collect();
    plugin["spec"]["permissions"] = serde_json::json!(kept);
    let mut done = format!(
        "upgraded Plugin {shown}: {plugin_version} -> {} (the operator verifies and rolls it out; `airlockctl why {shown}` follows it)",
        target.version
    );
    if !new.is_empty() {
        done.push_str(&format!(
            "\nnot granted (the new version declares them; add them to spec.permissions if it needs them): {}",
            new.iter().map(|p| p.as_str()).collect::<Vec<_>>().join(", ")
        ));
    }
    apply(
        &client,
        &namespace,
        &plugin,
        args.dry_run,
        args.output,
        done,
    )
    .await
}

/// What `publish` did.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Published {
    pub index: String,
    pub entry: Entry,
}

pub async fn publish(args: &PublishArgs) -> Result<String, CatalogError> {
    let pinned_image = args
        .image
        .split_once('@')
        .is_some_and(|(_, d)| airlock_bundle::oci::is_sha256_digest(d));
    if !pinned_image {
        return Err(CatalogError::ImageNotPinned(args.image.clone()));
    }
    let key_error = |reason: String| CatalogError::Key {
        path: args.key.clone(),
        reason,
    };
    let pem = std::fs::read_to_string(&args.key).map_err(|e| key_error(e.to_string()))?;
    let private = signing::parse_private_key(&pem).map_err(|e| key_error(e.to_string()))?;
    let public = signing::public_key_pem(&private).map_err(|e| key_error(e.to_string()))?;
    let keys = [airlock_crds::CatalogKey {
        name: args.key_name.clone(),
        ed25519: public,
    }];

    // The bundle as users will get it, checked as install checks it.
    let Some((pulled, pinned_bundle)) =
        pull_kind(&BUNDLE, &args.bundle, &args.registry, DEFAULT_MAX_BYTES).await?
    else {
        return Err(CatalogError::Bundle {
            bundle: args.bundle.clone(),
            reason: "the registry does not have it; push it with `airlockctl bundle push`".into(),
        });
    };
    let manifest = signed_manifest(&args.bundle, &pulled.bundle)?;
    let entry = Entry {
        name: manifest.name.clone(),
        version: manifest.version.clone(),
        description: args.description.clone(),
        image: args.image.clone(),
        bundle: pinned_bundle,
        bundle_digest: airlock_bundle::digest(&pulled.bundle),
        plugin_api_version: manifest.api_version,
        hooks: manifest.hooks.iter().map(|h| h.to_string()).collect(),
        permissions: manifest.permissions.iter().map(|p| p.to_string()).collect(),
        signer: args.key_name.clone(),
    };
    let catalog = args.index.clone();
    entry.check_bundle(&catalog, &keys, &pulled.bundle, pulled.signature.as_deref())?;

    // The index as it is, which must be this key's own (never sign over another's index).
    let mut index = match pull_kind(&CATALOG, &args.index, &args.registry, MAX_INDEX_BYTES).await? {
        Some((current, _)) => Index::verified(
            &catalog,
            &current.bundle,
            current.signature.as_deref(),
            &keys,
        )?,
        None if args.create => Index::new(),
        None => {
            return Err(CatalogError::Publish(format!(
                "the registry has no index at {}; pass --create to start one",
                args.index
            )));
        }
    };
    index.put(entry.clone()).map_err(CatalogError::Publish)?;
    let bytes = index.to_bytes();
    let signature = signing::sign(&private, &index_digest(&bytes));
    let pinned = push_kind(&CATALOG, &args.index, &args.registry, &bytes, &signature).await?;
    Ok(format!(
        "published {}@{} in {pinned} ({} entries, signed with {})",
        entry.name,
        entry.version,
        index.entries.len(),
        args.key_name
    ))
}

pub async fn run(args: &CatalogArgs) -> Result<String, CatalogError> {
    match &args.command {
        CatalogCommand::Publish(a) => publish(a).await,
        CatalogCommand::Search(a) => search(a).await,
        CatalogCommand::Show(a) => show(a).await,
        CatalogCommand::Install(a) => install(a).await,
        CatalogCommand::Upgrade(a) => upgrade(a).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plugin_is_named_with_or_without_a_version() {
        assert_eq!(parse_plugin("hello").expect("ok"), ("hello".into(), None));
        let (name, version) = parse_plugin("hello@1.2.0").expect("ok");
        assert_eq!(
            (name.as_str(), version.map(|v| v.to_string())),
            ("hello", Some("1.2.0".into()))
        );
        for bad in ["", "@1.0.0", "hello@", "hello@one"] {
            let e = parse_plugin(bad).expect_err(bad);
            assert_eq!(e.exit_code(), 2);
        }
    }
}
