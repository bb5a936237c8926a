//! The shim's spans, exported by the router (the wire format is `airlock_proto::trace::relay`).
//!
//! The value comes from a pod that runs untrusted code, so the router believes little of it: the
//! trace id and the parent are the router's own, the names are fixed, at most two spans are read,
//! and their times are clamped into the router's own call.

use std::time::SystemTime;

use airlock_proto::trace::TraceContext;
use airlock_proto::trace::relay::Measured;
use opentelemetry::KeyValue;
use opentelemetry::trace::SpanKind;

use crate::CallSpan;

/// The router's view of one call to a shim: its call span and when it ran.
#[derive(Debug, Clone)]
pub struct RouterCall {
    pub context: TraceContext,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<KeyValue>,
    pub error: Option<String>,
}

/// The spans to export for the shim of `call`: the shim's (a child of the router's call span)
/// and the plugin process's (a child of the shim's), their times inside the router's call.
pub fn spans(call: &RouterCall, shim: Measured, plugin: Option<Measured>) -> Vec<CallSpan> {
    // The router's own ids cannot be taken: a span that names itself as its parent, or two
    // spans with one id, would be a cycle in the backend.
    if shim.span_id == call.context.span_id
        || plugin.is_some_and(|p| p.span_id == call.context.span_id || p.span_id == shim.span_id)
    {
        return Vec::new();
    }
    // Bounds built with max/min, never `clamp` on untrusted values (it panics when lo > hi).
    let within = |t: SystemTime, lo: SystemTime, hi: SystemTime| t.max(lo).min(hi.max(lo));
    let clamp = |t: SystemTime| within(t, call.start, call.end);
    let shim_ctx = TraceContext {
        span_id: shim.span_id,
        ..call.context
    };
    let mut out = vec![CallSpan {
        name: "shim.invoke",
        kind: SpanKind::Server,
        context: shim_ctx,
        parent: Some(call.context.span_id),
        parent_is_remote: true,
        start: clamp(shim.start),
        end: clamp(shim.end),
        attributes: call.attributes.clone(),
        error: call.error.clone(),
    }];
    if let Some(p) = plugin {
        let (start, end) = (clamp(shim.start), clamp(shim.end));
        out.push(CallSpan {
            name: "plugin.invoke",
            kind: SpanKind::Internal,
            context: TraceContext {
                span_id: p.span_id,
                ..call.context
            },
            parent: Some(shim.span_id),
            parent_is_remote: false,
            // Inside the shim's span too.
            start: within(p.start, start, end),
            end: within(p.end, start, end),
            attributes: call.attributes.clone(),
            error: None,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(us: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_micros(us)
    }

    /// A router call of `context` from 10 ms to 20 ms after the epoch.
    fn call_from(context: TraceContext) -> RouterCall {
        RouterCall {
            context,
            start: at(10_000),
            end: at(20_000),
            attributes: vec![],
            error: None,
        }
    }

    #[test]
    fn relayed_spans_are_children_of_the_routers_call_inside_its_time() {
        let call = RouterCall {
            context: TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
                .unwrap(),
            start: at(10_000),
            end: at(20_000),
            attributes: vec![],
            error: None,
        };
        // A shim whose clock is off (or that lies) cannot stretch the trace.
        let shim = Measured {
            span_id: [0xab; 8],
            start: at(1),
            end: at(99_000_000),
        };
        let plugin = Measured {
            span_id: [0x0c; 8],
            start: at(12_000),
            end: at(15_000),
        };
        let spans = spans(&call, shim, Some(plugin));
        assert_eq!(spans.len(), 2);
        assert_eq!(spans[0].context.trace_id, call.context.trace_id);
        assert_eq!(spans[0].parent, Some(call.context.span_id));
        assert_eq!((spans[0].start, spans[0].end), (at(10_000), at(20_000)));
        assert_eq!(spans[1].parent, Some([0xab; 8]));
        assert_eq!(spans[1].context.trace_id, call.context.trace_id);
        assert_eq!((spans[1].start, spans[1].end), (at(12_000), at(15_000)));
    }

    /// Review H1: a reversed span (start after end) used to panic in `clamp` and, with
    /// `panic = "abort"`, take the router down for every tenant. Whatever the times, no panic,
    /// and every span stays inside the router's call.
    #[test]
    fn reversed_or_wild_times_never_panic() {
        let call = call_from(TraceContext::root());
        let times = [
            0,
            5_000,
            10_000,
            12_000,
            15_000,
            20_000,
            30_000,
            u64::MAX / 4,
        ];
        for &a in &times {
            for &b in &times {
                for &c in &times {
                    for &d in &times {
                        let shim = Measured {
                            span_id: [0xab; 8],
                            start: at(a),
                            end: at(b),
                        };
                        let plugin = Measured {
                            span_id: [0x0c; 8],
                            start: at(c),
                            end: at(d),
                        };
                        for s in spans(&call, shim, Some(plugin)) {
                            assert!(
                                call.start <= s.start && s.start <= call.end,
                                "{a} {b} {c} {d}"
                            );
                            assert!(call.start <= s.end && s.end <= call.end, "{a} {b} {c} {d}");
                        }
                    }
                }
            }
        }
    }

    /// Review L1: a shim cannot reuse the router's span id or give both spans one id.
    #[test]
    fn a_shim_cannot_take_the_routers_span_id() {
        let call = call_from(TraceContext::root());
        let own = call.context.span_id;
        let m = |id| Measured {
            span_id: id,
            start: at(11_000),
            end: at(12_000),
        };
        assert!(spans(&call, m(own), None).is_empty());
        assert!(spans(&call, m([1; 8]), Some(m(own))).is_empty());
        assert!(spans(&call, m([1; 8]), Some(m([1; 8]))).is_empty());
        assert_eq!(spans(&call, m([1; 8]), Some(m([2; 8]))).len(), 2);
    }
}
