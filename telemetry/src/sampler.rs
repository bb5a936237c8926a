//! `OTEL_TRACES_SAMPLER(_ARG)` for call spans, decided by the SDK's own samplers (so a ratio
//! keeps the same traces as other OpenTelemetry SDKs would for the same trace id).

use opentelemetry::Context;
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId, TraceState,
};
use opentelemetry_sdk::trace::{Sampler as SdkSampler, SamplingDecision, ShouldSample};

#[derive(Debug, Clone)]
pub(crate) struct Sampler(SdkSampler);

impl Sampler {
    pub(crate) fn from_env() -> Self {
        Self::from_vars(
            std::env::var("OTEL_TRACES_SAMPLER").ok().as_deref(),
            std::env::var("OTEL_TRACES_SAMPLER_ARG").ok().as_deref(),
        )
    }

    /// The standard names; anything else (or a missing or bad ratio) is the default,
    /// `parentbased_always_on` with a ratio of 1, as the specification says, with a warning.
    fn from_vars(name: Option<&str>, arg: Option<&str>) -> Self {
        let ratio = || {
            arg.and_then(|a| a.trim().parse::<f64>().ok())
                .filter(|r| (0.0..=1.0).contains(r))
                .unwrap_or_else(|| {
                    tracing::warn!(
                        "OTEL_TRACES_SAMPLER_ARG is not a ratio between 0 and 1; sampling every trace"
                    );
                    1.0
                })
        };
        let parent = |s| SdkSampler::ParentBased(Box::new(s));
        Self(match name.map(str::trim) {
            None | Some("" | "parentbased_always_on") => parent(SdkSampler::AlwaysOn),
            Some("always_on") => SdkSampler::AlwaysOn,
            Some("always_off") => SdkSampler::AlwaysOff,
            Some("parentbased_always_off") => parent(SdkSampler::AlwaysOff),
            Some("traceidratio") => SdkSampler::TraceIdRatioBased(ratio()),
            Some("parentbased_traceidratio") => parent(SdkSampler::TraceIdRatioBased(ratio())),
            Some(other) => {
                tracing::warn!(
                    sampler = other,
                    "OTEL_TRACES_SAMPLER names no sampler Airlock knows; using parentbased_always_on"
                );
                parent(SdkSampler::AlwaysOn)
            }
        })
    }

    /// Whether a span of `trace_id` is sampled, given its remote parent's sampled flag (`None`
    /// for a new trace).
    pub(crate) fn sampled(&self, trace_id: [u8; 16], parent_sampled: Option<bool>) -> bool {
        let trace_id = TraceId::from_bytes(trace_id);
        let cx = match parent_sampled {
            Some(sampled) => Context::new().with_remote_span_context(SpanContext::new(
                trace_id,
                // Any valid id: samplers look only at the flag and the trace id.
                SpanId::from_bytes([1; 8]),
                if sampled {
                    TraceFlags::SAMPLED
                } else {
                    TraceFlags::default()
                },
                true,
                TraceState::NONE,
            )),
            None => Context::new(),
        };
        let r = self
            .0
            .should_sample(Some(&cx), trace_id, "call", &SpanKind::Server, &[], &[]);
        r.decision == SamplingDecision::RecordAndSample
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_follows_the_caller_and_samples_new_traces() {
        let s = Sampler::from_vars(None, None);
        assert!(s.sampled([7; 16], None));
        assert!(s.sampled([7; 16], Some(true)));
        assert!(!s.sampled([7; 16], Some(false)));
    }

    #[test]
    fn a_ratio_of_zero_samples_no_new_trace_but_follows_a_sampled_caller() {
        let s = Sampler::from_vars(Some("parentbased_traceidratio"), Some("0"));
        assert!(!s.sampled([7; 16], None));
        assert!(s.sampled([7; 16], Some(true)));
        let off = Sampler::from_vars(Some("always_off"), None);
        assert!(!off.sampled([7; 16], Some(true)));
    }

    #[test]
    fn unknown_names_and_bad_ratios_fall_back_to_sampling() {
        assert!(Sampler::from_vars(Some("jaeger_remote"), None).sampled([7; 16], None));
        assert!(Sampler::from_vars(Some("traceidratio"), Some("2.5")).sampled([7; 16], None));
    }
}
