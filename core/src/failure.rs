//! What happened to a plugin process on a failed call. The shim sets the kind as the
//! [`FAILURE_METADATA`] trailer of every failed `Invoke`; the router reads it to count timeouts
//! and crashes for breakers and auto-disable without parsing messages (see `plugin.proto`).

/// Metadata (trailer) key on every failed `Invoke`.
pub const FAILURE_METADATA: &str = "airlock-failure";

crate::vocabulary! {
    pub enum FailureKind {
        /// The plugin did not answer within the invocation's deadline; its process was killed.
        Timeout = "timeout",
        /// The call waited for the plugin process longer than its deadline allowed.
        QueueTimeout = "queue-timeout",
        /// The plugin process could not start, exited, or failed its `onLoad`.
        Crash = "crash",
        /// The kernel killed the plugin process at the container's memory limit (a crash whose
        /// cause is known: the limit is too low for the plugin, or the plugin leaks).
        OutOfMemory = "oom",
        /// The plugin process is being restarted after crashes; the call was refused meanwhile.
        Backoff = "backoff",
        /// The plugin answered with an error of its own.
        PluginError = "plugin-error",
        /// The plugin's answer was over the output limit.
        OutputTooLarge = "output-too-large",
        /// The plugin broke the stdio protocol.
        Protocol = "protocol",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_reads_back_from_its_trailer_value() {
        for &k in FailureKind::ALL {
            assert_eq!(FailureKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(FailureKind::parse("Timeout"), None);
    }
}
