//! The one machine-readable line the agent logs when it stops (the benchmark and the tests read
//! it): every counter that says what was lost, and where.

use std::fmt;

use crate::export::ExportStats;
use crate::kernel::census::Census;
use crate::kernel::loader::KernelCounters;

use super::pipeline::PipelineStats;

/// What the agent counted from start to stop.
pub struct Summary<'a> {
    pub kernel: KernelCounters,
    pub decode_errors: u64,
    pub export: ExportStats,
    pub pipeline: PipelineStats,
    pub process_evictions: u64,
    pub census: &'a Census,
}

impl fmt::Display for Summary<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (k, e, p, c) = (&self.kernel, &self.export, &self.pipeline, self.census);
        write!(
            f,
            "stopped: kernel_events={} kernel_lost={} not_http={} decode_errors={} \
             spans_exported={} spans_dropped={} spans_failed={} spans_rejected={} export_failures={} \
             parse_errors={} unmatched_responses={} unanswered_requests={} connection_evictions={} \
             process_evictions={} correlation_evictions={} kernel_evictions={} kernel_refused={} \
             goroutine_evictions={} grpc_streams_without_call={} grpc_unreadable_addresses={} \
             grpc_servers_unpaired={} grpc_streams_left_to_uprobes={} spans_sampled_out={} \
             tail_traces_error={} tail_spans_error={} tail_traces_latency={} tail_spans_latency={} \
             tail_traces_head={} tail_spans_head={} tail_traces_sampled_out={} tail_decided_early={} \
             message_links={} message_evictions={} go_context_parents={} go_context_ended={} \
             go_context_evictions={}",
            k.events,
            k.lost,
            k.not_http,
            self.decode_errors,
            e.exported,
            e.dropped_queue_full + e.dropped_closed,
            e.spans_failed,
            e.spans_rejected,
            e.export_failures,
            p.protocols.parse_errors,
            p.protocols.unmatched_responses,
            p.protocols.unanswered_requests,
            p.streams.evictions,
            self.process_evictions,
            p.correlator.evictions,
            c.evicted(),
            c.refused(),
            c.goroutines_evicted(),
            k.grpc_no_call,
            k.grpc_no_addr,
            k.grpc_unpaired,
            p.grpc_left_to_uprobes,
            e.sampled_out,
            e.tail.traces_error,
            e.tail.spans_error,
            e.tail.traces_latency,
            e.tail.spans_latency,
            e.tail.traces_head,
            e.tail.spans_head,
            e.tail.traces_sampled_out,
            e.tail.decided_early,
            p.correlator.message_links,
            p.correlator.message_evictions,
            k.go_ctx_parent,
            k.go_ctx_ended,
            c.go_contexts_evicted()
        )
    }
}
