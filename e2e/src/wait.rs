//! Bounded waits for something the cluster should do eventually: look every half second, fail
//! after a deadline saying what was awaited and what was seen last.

use std::fmt::Debug;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};

/// How often a wait looks again.
pub const EVERY: Duration = Duration::from_millis(500);

/// Looks with `look` until `done` accepts what it saw, and returns that. An error of `look` ends
/// the wait at once; after `within`, the wait fails with `what` and the last thing seen.
pub async fn until<S: Debug>(
    what: &str,
    within: Duration,
    mut look: impl AsyncFnMut() -> Result<S>,
    done: impl Fn(&S) -> bool,
) -> Result<S> {
    poll(what, within, async || {
        let seen = look().await?;
        Ok(if done(&seen) { Ok(seen) } else { Err(seen) })
    })
    .await
}

/// Looks with `look` until it finds something, and returns it. An error of `look` ends the wait at
/// once; after `within`, the wait fails with `what`.
pub async fn found<T>(
    what: &str,
    within: Duration,
    mut look: impl AsyncFnMut() -> Result<Option<T>>,
) -> Result<T> {
    poll(what, within, async || Ok(look().await?.ok_or("nothing"))).await
}

/// The loop of both: `Ok` ends the wait, `Err` is what was seen instead.
async fn poll<T, S: Debug>(
    what: &str,
    within: Duration,
    mut look: impl AsyncFnMut() -> Result<Result<T, S>>,
) -> Result<T> {
    let deadline = Instant::now() + within;
    loop {
        let seen = match look()
            .await
            .with_context(|| format!("waiting for {what}"))?
        {
            Ok(value) => return Ok(value),
            Err(seen) => seen,
        };
        ensure!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}; last seen: {seen:?}"
        );
        tokio::time::sleep(EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn until_returns_what_it_waited_for() -> Result<()> {
        let mut n = 0;
        let seen = until(
            "n to reach 3",
            Duration::from_secs(5),
            async || {
                n += 1;
                Ok(n)
            },
            |n| *n == 3,
        )
        .await?;
        ensure!(seen == 3, "{seen}");
        Ok(())
    }

    #[tokio::test]
    async fn a_timeout_says_what_was_awaited_and_seen() -> Result<()> {
        let outcome = until(
            "the impossible",
            Duration::ZERO,
            async || Ok(7),
            |n| *n == 8,
        )
        .await;
        ensure_failed_saying(outcome, &["waiting for the impossible", "last seen: 7"])
    }

    #[tokio::test]
    async fn an_error_ends_the_wait_with_what_was_awaited() -> Result<()> {
        let outcome = found::<()>("a thing", Duration::from_secs(60), async || {
            anyhow::bail!("the API server is gone")
        })
        .await;
        ensure_failed_saying(outcome, &["waiting for a thing", "the API server is gone"])
    }

    #[tokio::test]
    async fn found_returns_the_first_thing_found() -> Result<()> {
        let mut n = 0;
        let thing = found("the second look", Duration::from_secs(5), async || {
            n += 1;
            Ok((n == 2).then_some("it"))
        })
        .await?;
        ensure!(thing == "it" && n == 2, "{thing} after {n} looks");
        Ok(())
    }

    /// Fails unless `outcome` is an error whose text, causes included, says each of `parts`.
    fn ensure_failed_saying<T>(outcome: Result<T>, parts: &[&str]) -> Result<()> {
        let Err(err) = outcome else {
            anyhow::bail!("the wait succeeded but must fail");
        };
        let text = format!("{err:#}");
        ensure!(parts.iter().all(|p| text.contains(p)), "{text}");
        Ok(())
    }
}
