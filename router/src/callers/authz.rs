//! Authorization of a call (pure): the `PluginCallerBinding`s the router watches, indexed by
//! namespace ([`Bindings`]), and [`authorize`]: may this caller call this hook of this plugin?
//!
//! Default deny. A binding grants only in its own namespace: the index keeps each binding under
//! the namespace of its `metadata`, and a call to a plugin of namespace N looks at N's bindings
//! only. No field of a binding names another namespace's plugins (`spec.plugins` are names, the
//! schema forbids `/`), so a tenant of A can never grant anyone anything in B; a caller from A
//! reaches B's plugins only where B lists A's ServiceAccount (with its namespace: `frontend` of A
//! is not `frontend` of B).

use std::collections::{BTreeSet, HashMap};

use airlock_crds::PluginCallerBinding;
use airlock_crds::caller_binding::ANY;
use kube::ResourceExt;

use super::CallerId;

/// Every binding the router knows, by the namespace it grants in.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Bindings {
    by_namespace: HashMap<String, Vec<Grant>>,
}

/// One binding, as authorization reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Grant {
    /// The binding's name, for messages.
    name: String,
    /// (namespace, ServiceAccount) of every caller it lists, the default namespace filled in.
    callers: BTreeSet<(String, String)>,
    plugins: Names,
    hooks: Names,
}

/// A list of names, or `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Names {
    Any,
    Listed(BTreeSet<String>),
}

impl Grant {
    fn lists(&self, caller: &CallerId) -> bool {
        self.callers
            .iter()
            .any(|(ns, name)| *ns == caller.namespace && *name == caller.name)
    }
}

impl Names {
    fn of(names: &[String]) -> Self {
        if names.iter().any(|n| n == ANY) {
            Self::Any
        } else {
            Self::Listed(names.iter().cloned().collect())
        }
    }

    fn matches(&self, name: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Listed(names) => names.contains(name),
        }
    }
}

impl Bindings {
    /// The index of `bindings`. A binding being deleted already grants nothing (revocation takes
    /// effect when the delete is asked for, not when finalizers are done).
    pub fn new<'a>(bindings: impl IntoIterator<Item = &'a PluginCallerBinding>) -> Self {
        let mut by_namespace: HashMap<String, Vec<Grant>> = HashMap::new();
        for b in bindings {
            let Some(namespace) = b.namespace() else {
                continue;
            };
            if b.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let callers = b
                .spec
                .callers
                .iter()
                .map(|c| {
                    (
                        c.namespace.clone().unwrap_or_else(|| namespace.clone()),
                        c.service_account.clone(),
                    )
                })
                .collect();
            by_namespace.entry(namespace).or_default().push(Grant {
                name: b.name_any(),
                callers,
                plugins: Names::of(&b.spec.plugins),
                hooks: Names::of(&b.spec.hooks),
            });
        }
        Self { by_namespace }
    }

    /// Number of bindings.
    pub fn len(&self) -> usize {
        self.by_namespace.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether some binding in `namespace` lists `caller` at all (for whatever plugins and hooks).
    /// A broadcast or pipeline into a namespace none of whose bindings lists the caller is refused
    /// on this alone, before the route table is read: the answer must not tell a stranger to the
    /// namespace whether it has subscribers, or how many.
    pub fn lists(&self, namespace: &str, caller: &CallerId) -> bool {
        self.by_namespace
            .get(namespace)
            .is_some_and(|grants| grants.iter().any(|g| g.lists(caller)))
    }
}

/// Whether `caller` may call `hook` of the Plugin `namespace`/`plugin`: some binding in
/// `namespace` lists the caller and matches the plugin and the hook.
pub fn authorize(
    bindings: &Bindings,
    caller: &CallerId,
    namespace: &str,
    plugin: &str,
    hook: &str,
) -> Result<(), Box<Denied>> {
    let grants = bindings
        .by_namespace
        .get(namespace)
        .map(Vec::as_slice)
        .unwrap_or_default();
    // The path of every allowed call: no allocation, a scan of one namespace's bindings.
    if grants
        .iter()
        .any(|g| g.lists(caller) && g.plugins.matches(plugin) && g.hooks.matches(hook))
    {
        return Ok(());
    }
    let listing: Vec<&Grant> = grants.iter().filter(|g| g.lists(caller)).collect();
    let names = |f: &dyn Fn(&Grant) -> bool| -> Vec<String> {
        listing
            .iter()
            .filter(|g| f(g))
            .map(|g| g.name.clone())
            .collect()
    };
    let why = if listing.is_empty() {
        Why::NotListed
    } else if listing.iter().all(|g| !g.plugins.matches(plugin)) {
        Why::PluginNotListed(names(&|_| true))
    } else {
        Why::HookNotListed(names(&|g| g.plugins.matches(plugin)))
    };
    Err(Box::new(Denied {
        caller: caller.clone(),
        namespace: namespace.to_string(),
        plugin: plugin.to_string(),
        hook: hook.to_string(),
        why,
    }))
}

/// A call no binding allows (PERMISSION_DENIED). The message names the caller, the plugin, the
/// hook, what is missing and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{caller} may not call hook {hook} of Plugin {namespace}/{plugin}: {why}; create a \
     PluginCallerBinding in namespace {namespace} listing serviceAccount {} of namespace {} \
     (spec.callers) with plugin {plugin} or \"*\" (spec.plugins) and hook {hook} or \"*\" \
     (spec.hooks)",
    .caller.name, .caller.namespace
)]
pub struct Denied {
    pub caller: CallerId,
    pub namespace: String,
    pub plugin: String,
    pub hook: String,
    pub why: Why,
}

/// What is missing for a denied call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Why {
    #[error("no PluginCallerBinding in that namespace lists the caller")]
    NotListed,
    #[error("the PluginCallerBindings {0:?} list the caller but not this plugin")]
    PluginNotListed(Vec<String>),
    #[error("the PluginCallerBindings {0:?} list the caller and the plugin but not this hook")]
    HookNotListed(Vec<String>),
}

/// A Broadcast or Transform the caller may not make in a namespace (PERMISSION_DENIED). The
/// message names the caller, the namespace, the hook, what is missing and the fix; never how many
/// plugins subscribe.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", scope_message(self))]
pub struct ScopeDenied {
    pub caller: CallerId,
    pub namespace: String,
    pub hook: String,
    pub why: ScopeWhy,
}

/// Why a broadcast or a pipeline is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScopeWhy {
    /// No binding of the namespace lists the caller: refused before the route table is read, so
    /// the answer is the same whether or not the namespace has subscribers.
    NotListed,
    /// Bindings list the caller, but it may call none of the subscribers of the hook.
    NoneGranted,
    /// A pipeline with transform plugins the caller may not call (these, by name): a pipeline
    /// runs every transform plugin of its namespace or none, so that a step meant to see every
    /// document (a sanitiser) is never skipped for a caller granted only the others.
    Ungranted(Vec<String>),
}

fn scope_message(d: &ScopeDenied) -> String {
    let ScopeDenied {
        caller,
        namespace,
        hook,
        why,
    } = d;
    let binding = format!(
        "a PluginCallerBinding in namespace {namespace} listing serviceAccount {} of namespace {} \
         (spec.callers)",
        caller.name, caller.namespace
    );
    match why {
        ScopeWhy::NotListed => format!(
            "{caller} may call no plugin of namespace {namespace}: no PluginCallerBinding in that \
             namespace lists the caller; create {binding} with the plugins (spec.plugins, or \
             \"*\") and hook {hook} (spec.hooks, or \"*\")"
        ),
        ScopeWhy::NoneGranted => format!(
            "{caller} may call none of the plugins subscribed to {hook} in namespace {namespace}: \
             the PluginCallerBindings there that list the caller grant none of them; create \
             {binding} with the plugins (spec.plugins, or \"*\") and hook {hook} (spec.hooks, or \
             \"*\")"
        ),
        ScopeWhy::Ungranted(plugins) => format!(
            "{caller} may not run the {hook} pipeline of namespace {namespace}: it may not call \
             hook {hook} of the Plugins {plugins:?} there, and a pipeline runs every {hook} plugin \
             of its namespace or none (no step is ever skipped); create {binding} with these \
             plugins (spec.plugins, or \"*\") and hook {hook} (spec.hooks, or \"*\")"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bindings from YAML documents (each with its namespace).
    fn bindings(yaml: &str) -> Bindings {
        let objects: Vec<PluginCallerBinding> = yaml
            .split("\n---\n")
            .map(|doc| serde_yaml::from_str(doc).expect("a binding"))
            .collect();
        Bindings::new(&objects)
    }

    fn binding(ns: &str, name: &str, callers: &str, plugins: &str, hooks: &str) -> String {
        format!(
            "apiVersion: airlock.dev/v1alpha1\nkind: PluginCallerBinding\nmetadata: {{name: {name}, \
             namespace: {ns}}}\nspec: {{callers: {callers}, plugins: {plugins}, hooks: {hooks}}}"
        )
    }

    fn sa(ns: &str, name: &str) -> CallerId {
        CallerId::new(ns, name)
    }

    #[test]
    fn nothing_is_allowed_without_a_binding() {
        let none = Bindings::default();
        let e = authorize(&none, &sa("a", "frontend"), "a", "fmt", "transform")
            .expect_err("default deny");
        assert_eq!(e.why, Why::NotListed);
        assert_eq!(
            e.to_string(),
            "system:serviceaccount:a:frontend may not call hook transform of Plugin a/fmt: no \
             PluginCallerBinding in that namespace lists the caller; create a PluginCallerBinding \
             in namespace a listing serviceAccount frontend of namespace a (spec.callers) with \
             plugin fmt or \"*\" (spec.plugins) and hook transform or \"*\" (spec.hooks)"
        );
    }

    #[test]
    fn a_binding_allows_the_callers_plugins_and_hooks_it_lists() {
        let b = bindings(&binding(
            "a",
            "frontend",
            "[{serviceAccount: frontend}]",
            "[fmt, hello]",
            "[transform]",
        ));
        let fe = sa("a", "frontend");
        assert_eq!(authorize(&b, &fe, "a", "fmt", "transform"), Ok(()));
        assert_eq!(authorize(&b, &fe, "a", "hello", "transform"), Ok(()));
        let e = authorize(&b, &fe, "a", "other", "transform").expect_err("plugin");
        assert_eq!(e.why, Why::PluginNotListed(vec!["frontend".into()]));
        let e = authorize(&b, &fe, "a", "fmt", "onEvent").expect_err("hook");
        assert_eq!(e.why, Why::HookNotListed(vec!["frontend".into()]));
        assert!(
            e.to_string()
                .contains("list the caller and the plugin but not this hook"),
            "{e}"
        );
        // Another ServiceAccount of the same namespace is not listed.
        let e = authorize(&b, &sa("a", "batch"), "a", "fmt", "transform").expect_err("other SA");
        assert_eq!(e.why, Why::NotListed);
    }

    #[test]
    fn wildcards_cover_every_plugin_and_hook_of_the_namespace_only() {
        let b = bindings(&binding(
            "a",
            "all",
            "[{serviceAccount: fe}]",
            "['*']",
            "['*']",
        ));
        let fe = sa("a", "fe");
        for (plugin, hook) in [("x", "transform"), ("later", "onEvent"), ("y", "onLoad")] {
            assert_eq!(authorize(&b, &fe, "a", plugin, hook), Ok(()));
        }
        // The same wildcard says nothing about namespace b.
        assert!(authorize(&b, &fe, "b", "x", "transform").is_err());
    }

    /// Attack: a tenant of A writes a binding in A that names B's plugins (by name, or with a
    /// wildcard): it grants nothing in B.
    #[test]
    fn a_binding_in_one_namespace_grants_nothing_in_another() {
        let b = bindings(
            &[
                binding(
                    "a",
                    "reach-b",
                    "[{serviceAccount: fe}]",
                    "[victim, '*']",
                    "['*']",
                ),
                binding(
                    "a",
                    "reach-b-2",
                    "[{serviceAccount: fe, namespace: a}]",
                    "[victim]",
                    "['*']",
                ),
            ]
            .join("\n---\n"),
        );
        let e = authorize(&b, &sa("a", "fe"), "b", "victim", "transform").expect_err("denied");
        assert_eq!(e.why, Why::NotListed);
        assert!(
            e.to_string().contains(
                "create a PluginCallerBinding in namespace b listing serviceAccount fe of \
                           namespace a"
            ),
            "{e}"
        );
    }

    /// Cross-namespace calls exist only where the target namespace grants them, and name the
    /// caller's namespace: the same ServiceAccount name elsewhere is someone else.
    #[test]
    fn the_target_namespace_grants_a_caller_of_another_namespace_by_namespace_and_name() {
        let b = bindings(&binding(
            "b",
            "from-a",
            "[{serviceAccount: fe, namespace: a}]",
            "[shared]",
            "[onEvent]",
        ));
        assert_eq!(
            authorize(&b, &sa("a", "fe"), "b", "shared", "onEvent"),
            Ok(())
        );
        // fe of b (the binding's own namespace, the default) and fe of c are not fe of a.
        for other in [sa("b", "fe"), sa("c", "fe")] {
            assert!(
                authorize(&b, &other, "b", "shared", "onEvent").is_err(),
                "{other}"
            );
        }
        // And it grants nothing to a's fe in a.
        assert!(authorize(&b, &sa("a", "fe"), "a", "shared", "onEvent").is_err());
    }

    #[test]
    fn a_caller_without_namespace_is_of_the_bindings_namespace() {
        let b = bindings(&binding(
            "b",
            "local",
            "[{serviceAccount: fe}]",
            "['*']",
            "['*']",
        ));
        assert_eq!(authorize(&b, &sa("b", "fe"), "b", "p", "transform"), Ok(()));
        assert!(authorize(&b, &sa("a", "fe"), "b", "p", "transform").is_err());
    }

    #[test]
    fn grants_of_several_bindings_add_up_but_do_not_mix() {
        // One binding lists the plugin, another the hook: neither lists both.
        let b = bindings(
            &[
                binding("a", "p-only", "[{serviceAccount: fe}]", "[fmt]", "[onLoad]"),
                binding(
                    "a",
                    "h-only",
                    "[{serviceAccount: fe}]",
                    "[other]",
                    "[transform]",
                ),
            ]
            .join("\n---\n"),
        );
        let fe = sa("a", "fe");
        let e = authorize(&b, &fe, "a", "fmt", "transform").expect_err("no single binding");
        assert_eq!(e.why, Why::HookNotListed(vec!["p-only".into()]));
        assert_eq!(authorize(&b, &fe, "a", "fmt", "onLoad"), Ok(()));
        assert_eq!(authorize(&b, &fe, "a", "other", "transform"), Ok(()));
        assert_eq!(b.len(), 2);
    }

    #[test]
    fn a_binding_being_deleted_grants_nothing() {
        let mut objects: Vec<PluginCallerBinding> = vec![
            serde_yaml::from_str(&binding(
                "a",
                "gone",
                "[{serviceAccount: fe}]",
                "['*']",
                "['*']",
            ))
            .expect("binding"),
        ];
        objects[0].metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ));
        let b = Bindings::new(&objects);
        assert!(b.is_empty());
        assert!(authorize(&b, &sa("a", "fe"), "a", "p", "transform").is_err());
    }

    #[test]
    fn a_namespace_lists_a_caller_if_any_of_its_bindings_does() {
        let b = bindings(
            &[
                binding(
                    "b",
                    "narrow",
                    "[{serviceAccount: fe, namespace: a}]",
                    "[p]",
                    "[onLoad]",
                ),
                binding("c", "local", "[{serviceAccount: fe}]", "['*']", "['*']"),
            ]
            .join("\n---\n"),
        );
        assert!(b.lists("b", &sa("a", "fe")), "whatever it grants");
        assert!(!b.lists("b", &sa("b", "fe")));
        assert!(!b.lists("c", &sa("a", "fe")));
        assert!(!b.lists("nowhere", &sa("a", "fe")));
    }

    #[test]
    fn scope_refusals_name_the_fix_and_no_count() {
        let d = |why| ScopeDenied {
            caller: sa("a", "fe"),
            namespace: "b".into(),
            hook: "transform".into(),
            why,
        };
        assert_eq!(
            d(ScopeWhy::NotListed).to_string(),
            "system:serviceaccount:a:fe may call no plugin of namespace b: no PluginCallerBinding \
             in that namespace lists the caller; create a PluginCallerBinding in namespace b \
             listing serviceAccount fe of namespace a (spec.callers) with the plugins \
             (spec.plugins, or \"*\") and hook transform (spec.hooks, or \"*\")"
        );
        let e = d(ScopeWhy::Ungranted(vec!["sanitise".into()])).to_string();
        assert!(
            e.starts_with(
                "system:serviceaccount:a:fe may not run the transform pipeline of namespace b: \
                 it may not call hook transform of the Plugins [\"sanitise\"] there"
            ),
            "{e}"
        );
    }
}
