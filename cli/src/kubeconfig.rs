//! The cluster as the caller's kubeconfig reaches it: its current context, and that context's
//! namespace as the default for commands given NAME without a namespace (as kubectl does).

use kube::Client;

/// A client of the kubeconfig's cluster and its context's namespace. The error is the reason,
/// for the caller's own error (which says what to check).
pub async fn client() -> Result<(Client, String), String> {
    let config = kube::Config::infer().await.map_err(|e| e.to_string())?;
    let namespace = config.default_namespace.clone();
    let client = Client::try_from(config).map_err(|e| e.to_string())?;
    Ok((client, namespace))
}

/// The kubeconfig context's namespace without connecting; `default` without a kubeconfig (a
/// caller that reaches the router by its address may have none).
pub async fn namespace() -> String {
    match kube::Config::infer().await {
        Ok(config) => config.default_namespace,
        Err(_) => "default".into(),
    }
}
