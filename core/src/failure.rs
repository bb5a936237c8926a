//! What happened to a plugin process on a failed call. The shim sets the kind as the
//! [`FAILURE_METADATA`] trailer of every failed `Invoke`; the router reads it to count timeouts
//! and crashes for breakers and auto-disable without parsing messages (see `plugin.proto`).

use std::fmt;

/// Metadata (trailer) key on every failed `Invoke`.
pub const FAILURE_METADATA: &str = "airlock-failure";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// The plugin did not answer within the invocation's deadline; its process was killed.
    Timeout,
    /// The call waited for the plugin process longer than its deadline allowed.
    QueueTimeout,
    /// The plugin process could not start, exited, or failed its `onLoad`.
    Crash,
    /// The plugin process is being restarted after crashes; the call was refused meanwhile.
    Backoff,
    /// The plugin answered with an error of its own.
    PluginError,
    /// The plugin's answer was over the output limit.
    OutputTooLarge,
    /// The plugin broke the stdio protocol.
    Protocol,
}

impl FailureKind {
    /// Every kind.
    pub const ALL: [FailureKind; 7] = [
        Self::Timeout,
        Self::QueueTimeout,
        Self::Crash,
        Self::Backoff,
        Self::PluginError,
        Self::OutputTooLarge,
        Self::Protocol,
    ];

    /// The trailer value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::QueueTimeout => "queue-timeout",
            Self::Crash => "crash",
            Self::Backoff => "backoff",
            Self::PluginError => "plugin-error",
            Self::OutputTooLarge => "output-too-large",
            Self::Protocol => "protocol",
        }
    }

    /// The kind a trailer value names; `None` for a value this Airlock does not know (a newer shim).
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == text)
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_reads_back_from_its_trailer_value() {
        for k in FailureKind::ALL {
            assert_eq!(FailureKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(FailureKind::parse("Timeout"), None);
    }
}
