//! The operator is no deputy for a Plugin's HTTP bundle URL (issue 12, point 7): a tenant writes
//! the URL, the operator fetches it from inside the cluster. It must not reach the metadata
//! endpoint or other addresses that are not globally reachable, must not speak plain HTTP to hosts
//! the admin did not list, must not follow a redirect, and must not copy what a server answered
//! into the Plugin's status. A correctly configured plugin in the same namespace stays Active.
//!
//! `e2e/helm-install.sh` lets the node address serve bundles over plain HTTP (the chart values
//! bundleHttp.insecureHosts and bundleHttp.allowedCidrs), as an admin would for an in-cluster
//! bundle server; everything else is the chart's default.

use std::time::Duration;

use airlock_crds::Plugin;
use airlock_e2e::plugins::{active, condition, refused, wait_plugin};
use airlock_e2e::sandbox::{Sandbox, in_sandbox};
use anyhow::{Result, ensure};
use kube::Api;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Serves `response` (a whole HTTP response) to every request on the node address until the
/// returned task is aborted.
async fn serve(response: &'static str) -> Result<(String, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind("198.19.255.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let task = tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let _ = conn.read(&mut buf).await;
                let _ = conn.write_all(response.as_bytes()).await;
                let _ = conn.shutdown().await;
            });
        }
    });
    Ok((base, task))
}

/// The hello Plugin `name` whose bundle is downloaded from `url`.
async fn apply_with_url(s: &Sandbox, name: &str, url: &str) -> Result<()> {
    let mut plugin = s.hello(name)?;
    plugin["spec"]["bundle"] = json!({"source": {"http": {"url": url}}});
    s.apply(&plugin).await
}

#[tokio::test]
async fn a_bundle_url_cannot_make_the_operator_a_deputy() -> Result<()> {
    in_sandbox("deputy", &["log"], async |s: &Sandbox| {
        s.with_hello_bundle().await?;
        s.apply(&s.hello("bystander")?).await?;
        let api: Api<Plugin> = s.ns.api();

        // The cloud metadata endpoint (link-local), even over https.
        apply_with_url(s, "metadata", "https://169.254.169.254/latest/meta-data/b.tar.gz").await?;
        let message = refused(&api, "metadata", "BundleSourceRefused").await?;
        ensure!(
            message.contains("169.254.169.254") && message.contains("not globally reachable"),
            "the refusal names the address and why: {message}"
        );
        // The API server on the node's loopback.
        apply_with_url(s, "loopback", "https://127.0.0.1:6443/api").await?;
        refused(&api, "loopback", "BundleSourceRefused").await?;
        // Plain HTTP to a host the admin did not list.
        apply_with_url(s, "plain", "http://bundles.example.com/b.tar.gz").await?;
        let message = refused(&api, "plain", "BundleSourceRefused").await?;
        ensure!(message.contains("https://"), "{message}");

        // A listed server that redirects to the metadata endpoint: not followed.
        let (redirector, r) = serve(
            "HTTP/1.1 302 Found\r\nLocation: http://169.254.169.254/latest/meta-data/\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
        .await?;
        apply_with_url(s, "redirect", &format!("{redirector}/b.tar.gz")).await?;
        let message = refused(&api, "redirect", "BundleUnreadable").await?;
        r.abort();
        ensure!(
            message.contains("redirect") && !message.contains("169.254"),
            "a redirect is refused without echoing where it pointed: {message}"
        );

        // A server answering something that is not a bundle: the status does not carry its bytes.
        let (leaky, l) = serve(
            "HTTP/1.1 200 OK\r\nContent-Length: 38\r\nConnection: close\r\n\r\nINTERNAL-ONLY db_password=hunter2 ok\r\n",
        )
        .await?;
        apply_with_url(s, "leaky", &format!("{leaky}/b.tar.gz")).await?;
        let p = wait_plugin(&api, "leaky", "Verified=False", |p| {
            condition(p, "Verified").is_some_and(|c| c.status == "False")
        })
        .await?;
        l.abort();
        let status = serde_json::to_string(&p.status)?;
        ensure!(
            !status.contains("hunter2") && !status.contains("INTERNAL-ONLY"),
            "the Plugin's status repeats what the server answered: {status}"
        );

        // Meanwhile the correctly configured plugin is Active and nothing above ran.
        wait_plugin(&api, "bystander", "phase Active", active).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        for name in ["metadata", "loopback", "plain", "redirect", "leaky"] {
            let p = api.get(name).await?;
            ensure!(!active(&p), "{name} became Active: {:?}", p.status);
        }
        Ok(())
    })
    .await
}
