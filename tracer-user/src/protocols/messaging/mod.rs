//! What the messaging protocols ([`super::nats`], [`super::amqp`], [`super::kafka`]) share: the
//! detail of a message and its span ([`detail`]), and the exchange that carries it.

pub mod detail;

pub use self::detail::{Batch, Destination, MessagingDetail, MessagingSystem, Operation};

use crate::capture::event::KernelCtx;
use crate::model::SpanKind;
use crate::protocols::exchange::{Detail, Exchange, Ids, Pairing, Stamp};
use crate::streams::ConnInfo;

/// The exchange of a message (or of a call that fetches one: `basic.get`) whose first byte
/// went by in `first`, with the context the kernel gave that transfer (none for a delivery).
pub fn new_message(
    conn: &ConnInfo,
    kind: SpanKind,
    first: Stamp,
    ctx: Option<KernelCtx>,
    detail: MessagingDetail,
) -> Exchange {
    let ids = Ids::new(kind, None, ctx.as_ref());
    // Nothing pairs a message: a publish (or a fetch) is linked by the kernel's context, a
    // delivery has no other side on this host that the agent could know for certain.
    let mut ex = Exchange::on_conn(conn, kind, first, ids, ctx, Pairing::Kernel, Detail::Messaging(detail));
    ex.request_last = Some(first);
    ex
}

/// The messaging detail of an exchange a messaging parser made.
pub fn detail_mut(ex: &mut Exchange) -> &mut MessagingDetail {
    match &mut ex.detail {
        Detail::Messaging(d) => d,
        _ => unreachable!("messaging parsers hold messaging exchanges only"),
    }
}
