//! Redis (RESP2 and RESP3), from the client side: one CLIENT span per command.
//!
//! Commands and replies are read by two [`resp::Resp`] readers and paired in order, so
//! pipelines (N commands, then N replies) and transactions (MULTI, queued commands, EXEC) give
//! one span per command. An error reply (`-ERR …`, `-WRONGTYPE …`, RESP3 blob errors) makes the
//! span an error with its prefix as `db.response.status_code`; EXEC is an error when a command
//! of the transaction failed. RESP3 push data is not a reply. SUBSCRIBE and MONITOR turn the
//! connection into a stream of pushed messages: it is no longer traced.
//!
//! Only the command name is kept (`db.operation.name`, with the subcommand of container
//! commands such as `CLIENT SETINFO`), never an argument; `SELECT`'s index becomes
//! `db.namespace` for the commands that follow it.
//!
//! **Gaps.** When replies lose their framing (a gap over an array's element header), every
//! command waiting ends with an unknown outcome and replies are ignored until the stream is
//! provably back in step: the client writes its next command after the reply was lost with
//! nothing else outstanding, or, if it had pipelined, the connection stays quiet for the desync
//! timeout. Commands whose framing is lost count as lost replies too (how many replies are owed
//! is then unknown). No reply is ever paired with another command than its own.

pub mod resp;

use self::resp::{Resp, RespEvent, Side, Value};
use crate::capture::event::Data;
use crate::protocols::database::{self, DbDetail, DbSystem, Outcome, Pending, Step, WriteCtx, detail_mut, new_call};
use crate::protocols::exchange::{Exchange, Stamp};
use crate::protocols::protocol::{Cx, Protocol};
use crate::streams::{ConnInfo, EndReason};

/// Commands whose second word is a subcommand (part of the operation name).
const CONTAINERS: &[&str] = &[
    "ACL", "CLIENT", "CLUSTER", "COMMAND", "CONFIG", "FUNCTION", "LATENCY", "MEMORY", "MODULE", "OBJECT", "PUBSUB",
    "SCRIPT", "SLOWLOG", "XGROUP", "XINFO",
];
/// Commands after which the server pushes messages instead of replying.
const STREAMING: &[&str] = &["SUBSCRIBE", "PSUBSCRIBE", "SSUBSCRIBE", "MONITOR"];

/// The Redis state of one connection.
pub struct Redis {
    commands: Resp<Stamp>,
    replies: Resp<Stamp>,
    pending: Pending<Exchange>,
    ctx: WriteCtx,
    /// The database index chosen by the last SELECT.
    db: Option<String>,
    /// Subscribed or monitoring: replies no longer answer commands.
    streaming: bool,
}

impl Default for Redis {
    fn default() -> Self {
        Self::new()
    }
}

/// The operation name of a command: its name upper-cased (with the subcommand of a container
/// command), or `None` when it is not a plausible command name.
fn operation(name: &[u8], arg1: Option<&[u8]>) -> Option<String> {
    if name.is_empty() || !name.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.' | b'|')) {
        return None;
    }
    let op = String::from_utf8_lossy(name).to_ascii_uppercase();
    match arg1 {
        Some(sub)
            if CONTAINERS.contains(&op.as_str())
                && !sub.is_empty()
                && sub.iter().all(|c| c.is_ascii_alphabetic() || matches!(c, b'-' | b'_')) =>
        {
            Some(format!("{op} {}", String::from_utf8_lossy(sub).to_ascii_uppercase()))
        }
        _ => Some(op),
    }
}

impl Redis {
    pub fn new() -> Self {
        Self {
            commands: Resp::new(Side::Commands),
            replies: Resp::new(Side::Replies),
            pending: Pending::default(),
            ctx: WriteCtx::default(),
            db: None,
            streaming: false,
        }
    }

    fn on_command(&mut self, conn: &ConnInfo, name: &[u8], arg1: Option<&[u8]>, first: Stamp, cx: &mut Cx<'_>) {
        let op = operation(name, arg1);
        let mut detail = DbDetail::new(DbSystem::Redis);
        detail.operation = Some(op.clone().unwrap_or_else(|| "_OTHER".to_owned()));
        detail.namespace = self.db.clone();
        let index = arg1.filter(|a| !a.is_empty() && a.len() <= 4 && a.iter().all(u8::is_ascii_digit));
        if let (Some("SELECT"), Some(idx)) = (op.as_deref(), index) {
            self.db = Some(String::from_utf8_lossy(idx).into_owned());
        }
        let ex = new_call(conn, first, self.ctx.take(first), detail);
        if op.as_deref().is_some_and(|o| STREAMING.contains(&o)) {
            // The server pushes from now on: no reply can be paired any more.
            self.streaming = true;
            self.give_up(cx);
            return;
        }
        if self.pending.sync == (Step::Lost { pipelined: false }) && self.pending.queue.is_empty() {
            // The one command outstanding when the replies were lost was answered before the
            // client wrote this one: the next reply is this command's.
            self.pending.sync = Step::InStep;
            self.replies.restart();
        }
        if self.pending.queue.len() >= cx.config.max_in_flight {
            self.give_up(cx);
            return;
        }
        self.pending.push(ex);
    }

    fn on_reply(&mut self, value: Value, first: Stamp, last: Stamp, cx: &mut Cx<'_>) {
        let outcome = match value {
            Value::Push | Value::Command { .. } => return,
            Value::Error { prefix } => Outcome::Error { code: Some(prefix) },
            Value::Reply { nested_error: Some(e) } => Outcome::Error { code: Some(e) },
            Value::Reply { nested_error: None } => Outcome::Ok,
        };
        if !self.pending.in_step() {
            return;
        }
        let Some(mut ex) = self.pending.queue.pop_front() else {
            cx.stats.unmatched_responses += 1;
            return;
        };
        ex.response_first = Some(first);
        ex.response_last = Some(last);
        detail_mut(&mut ex).outcome = outcome;
        cx.emit(ex);
    }

    /// Replies were lost: what waits ends as unknown at `at`.
    fn lose(&mut self, pipelined: bool, at: Stamp, cx: &mut Cx<'_>) {
        self.pending.lose(pipelined, |mut ex| {
            ex.response_last = Some(at);
            cx.emit(ex);
        });
    }

    fn give_up(&mut self, cx: &mut Cx<'_>) {
        cx.stats.unanswered_requests += self.pending.queue.len() as u64;
        self.pending.queue.clear();
        self.streaming = true;
    }
}

impl Protocol for Redis {
    fn on_data(&mut self, conn: &ConnInfo, d: &Data, cx: &mut Cx<'_>) {
        if d.len == 0 || self.streaming {
            return;
        }
        let stamp = database::stamp(d);
        let mut evs = Vec::new();
        if d.egress {
            self.ctx.on_write(stamp, d.ctx);
            if self.commands.is_lost() && d.head.len() >= 2 && d.head[0] == b'*' && d.head[1].is_ascii_digit() {
                self.commands.restart();
            }
            self.commands.feed(&d.head, &d.tail, u64::from(d.len), stamp, &mut evs);
            for ev in evs {
                match ev {
                    RespEvent::Value { value: Value::Command { name, arg1, .. }, first, .. } => {
                        self.on_command(conn, &name, arg1.as_deref(), first, cx);
                        if self.streaming {
                            return;
                        }
                    }
                    RespEvent::Value { .. } => cx.stats.parse_errors += 1,
                    RespEvent::Lost => {
                        cx.stats.parse_errors += 1;
                        self.lose(true, stamp, cx);
                    }
                }
            }
        } else {
            self.replies.feed(&d.head, &d.tail, u64::from(d.len), stamp, &mut evs);
            for ev in evs {
                match ev {
                    RespEvent::Value { value, first, last } => self.on_reply(value, first, last, cx),
                    RespEvent::Lost => self.lose(false, stamp, cx),
                }
            }
        }
    }

    fn on_idle(&mut self, _conn: &ConnInfo, idle_ns: u64, cx: &mut Cx<'_>) {
        if !self.pending.in_step() && idle_ns >= cx.config.desync_timeout_ns {
            // Quiet: every reply owed has come. Back in step.
            self.pending.resync(|ex| cx.emit(ex));
            self.replies.restart();
        }
        if idle_ns >= cx.config.exchange_timeout_ns {
            cx.stats.expired_requests += self.pending.queue.len() as u64;
            self.pending.queue.clear();
        }
    }

    fn on_end(&mut self, _conn: &ConnInfo, reason: EndReason, cx: &mut Cx<'_>) {
        let n = self.pending.queue.len() as u64;
        self.pending.queue.clear();
        database::count_dropped(reason, n, cx);
    }

    fn for_each_in_flight<'a>(&'a self, f: &mut dyn FnMut(&'a Exchange)) {
        self.pending.queue.iter().for_each(f);
    }
}

#[cfg(test)]
mod tests;
