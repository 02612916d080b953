//! PostgreSQL (protocol 3), from the client side: one CLIENT span per simple query (`Q`) and
//! per Execute of the extended protocol.
//!
//! * **Startup.** The StartupMessage's `database` (else `user`) parameter is `db.namespace`. An
//!   SSLRequest or GSSENCRequest answered `N` goes on in plain text; answered `S` or `G`, the
//!   connection is encrypted and no longer traced.
//! * **Extended protocol.** Parse names a statement (the unnamed one, or a prepared statement
//!   reused by name across calls), Bind binds a statement to a portal, Execute runs a portal:
//!   the span of an Execute carries its statement's sanitised text ([`database::sql`]). Messages up to a
//!   Sync form a group the server answers up to ReadyForQuery; any number of groups may be in
//!   flight (pipelining, batches).
//! * **Replies.** Within a group each CommandComplete, EmptyQueryResponse, PortalSuspended or
//!   ErrorResponse ends the next Execute; an error ends it with its SQLSTATE as
//!   `db.response.status_code` (an error in Parse or Bind is reported on the Execute that
//!   follows, which never runs), and the Executes the server then skips up to the Sync end as
//!   unknown. A simple query ends at its ReadyForQuery, as an error if any of its statements
//!   failed.
//! * **Gaps.** A gap inside a message costs nothing (lengths are known). When replies lose
//!   their framing, every call waiting ends as unknown and replies are ignored until the stream
//!   is provably in step again: a read that ends with a ReadyForQuery when at most one group
//!   was sent since, or, if more were (pipelining), a quiet connection. Requests that lose
//!   their framing make the count of groups unknown: the same holds. A reply is never paired
//!   with another call than its own.
//!
//! Nothing from a row, a parameter or an error message is kept.

pub mod wire;

use std::collections::{HashMap, VecDeque};

use tracer_common::classify::{PG_GSSENC_REQUEST, PG_PROTOCOL_3, PG_SSL_REQUEST};

use self::wire::{Message, Reader, WireEvent, cstr};
use crate::capture::event::Data;
use crate::protocols::database::sql::{Sql, sanitize};
use crate::protocols::database::{
    self, DbDetail, DbSystem, Outcome, Pending, Step, WriteCtx, detail_mut, last_bytes, new_call,
};
use crate::protocols::exchange::{Exchange, Stamp};
use crate::protocols::protocol::{Cx, Protocol};
use crate::streams::{ConnInfo, EndReason};

/// Prepared statements and portals remembered per connection; past that the table starts over.
const MAX_STATEMENTS: usize = 1024;

fn keep_frontend(typ: u8) -> usize {
    match typ {
        0 => 2048,
        b'Q' | b'P' => 4096,
        b'B' => 256,
        b'E' | b'C' => 128,
        _ => 0,
    }
}

fn keep_backend(typ: u8) -> usize {
    match typ {
        b'E' => 1024,
        b'Z' => 1,
        _ => 0,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum GroupKind {
    /// Startup and authentication, up to the first ReadyForQuery.
    Startup,
    /// An SSLRequest or GSSENCRequest, answered by one byte.
    Encryption,
    /// A simple query.
    Simple,
    /// Extended-protocol messages up to a Sync.
    Extended,
}

/// What one ReadyForQuery (or bare answer) ends.
struct Group {
    kind: GroupKind,
    /// Calls not yet answered, oldest first.
    calls: VecDeque<Exchange>,
    /// First SQLSTATE of a simple query's statements; for an extended group, that one failed.
    error: Option<Option<String>>,
    /// The Sync was written.
    closed: bool,
    /// The group's last Parse (its statement and the write it started in): a group that only
    /// prepares and fails (pgx's statement cache) reports the failure as a call of its own.
    parse: Option<(Option<Sql>, Stamp)>,
}

impl Group {
    fn new(kind: GroupKind) -> Self {
        Self { kind, calls: VecDeque::new(), error: None, closed: kind != GroupKind::Extended, parse: None }
    }
}

/// The PostgreSQL state of one connection.
pub struct Postgres {
    frontend: Reader<Stamp>,
    backend: Reader<Stamp>,
    pending: Pending<Group>,
    statements: HashMap<Vec<u8>, Option<Sql>>,
    portals: HashMap<Vec<u8>, Option<Sql>>,
    database: Option<String>,
    ctx: WriteCtx,
    /// The first message written since the last call.
    segment: Option<Stamp>,
    /// Encrypted (or otherwise given up): not traced.
    off: bool,
}

impl Default for Postgres {
    fn default() -> Self {
        Self::new()
    }
}

/// The SQLSTATE of an ErrorResponse body (its `C` field).
pub fn sqlstate(body: &[u8]) -> Option<String> {
    let mut rest = body;
    while let Some((&field, after)) = rest.split_first() {
        if field == 0 {
            break;
        }
        let (value, next) = cstr(after);
        if field == b'C' {
            return (value.len() == 5 && value.iter().all(u8::is_ascii_alphanumeric))
                .then(|| String::from_utf8_lossy(value).into_owned());
        }
        rest = next;
    }
    None
}

/// Whether a typed frontend message plausibly starts at `b`.
fn frontend_start(b: &[u8]) -> bool {
    b.len() >= 5
        && b"QPBDECSHFXdcfp".contains(&b[0])
        && (4..1 << 30).contains(&u32::from_be_bytes([b[1], b[2], b[3], b[4]]))
}

/// Whether a transfer ends with a ReadyForQuery.
fn ends_ready(d: &Data) -> bool {
    last_bytes(&d.head, &d.tail, u64::from(d.len), 6)
        .is_some_and(|b| b[..5] == [b'Z', 0, 0, 0, 5] && matches!(b[5], b'I' | b'T' | b'E'))
}

impl Postgres {
    pub fn new() -> Self {
        Self {
            frontend: Reader::new(keep_frontend, true),
            backend: Reader::new(keep_backend, false),
            pending: Pending::default(),
            statements: HashMap::new(),
            portals: HashMap::new(),
            database: None,
            ctx: WriteCtx::default(),
            segment: None,
            off: false,
        }
    }

    fn call(&mut self, conn: &ConnInfo, msg: &Message<Stamp>, sql: Option<Sql>) -> Exchange {
        let first = self.segment.take().unwrap_or(msg.first);
        let mut detail = DbDetail::new(DbSystem::Postgres);
        detail.namespace = self.database.clone();
        if let Some(q) = sql {
            detail.operation = q.operation;
            detail.collection = q.collection;
            detail.query = (!q.text.is_empty()).then_some(q.text);
        }
        let mut ex = new_call(conn, first, self.ctx.take(first), detail);
        ex.request_last = Some(msg.last);
        ex
    }

    /// The extended group being written (a new one after a Sync).
    fn open_group(&mut self) -> &mut Group {
        if !self.pending.queue.back().is_some_and(|g| g.kind == GroupKind::Extended && !g.closed) {
            self.pending.push(Group::new(GroupKind::Extended));
        }
        self.pending.queue.back_mut().expect("just pushed")
    }

    fn on_frontend(&mut self, conn: &ConnInfo, msg: Message<Stamp>, cx: &mut Cx<'_>) {
        let body = msg.body.as_slice();
        match msg.typ {
            0 if body.len() >= 4 => {
                let code = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
                if code == PG_PROTOCOL_3 {
                    let mut params = &body[4..];
                    let (mut database, mut user) = (None, None);
                    while !params.is_empty() && params[0] != 0 {
                        let (k, rest) = cstr(params);
                        let (v, rest) = cstr(rest);
                        let v = Some(String::from_utf8_lossy(v).into_owned()).filter(|v| !v.is_empty());
                        match k {
                            b"database" => database = v,
                            b"user" => user = v,
                            _ => {}
                        }
                        params = rest;
                    }
                    self.database = database.or(user);
                    self.pending.push(Group::new(GroupKind::Startup));
                } else if code == PG_SSL_REQUEST || code == PG_GSSENC_REQUEST {
                    self.pending.push(Group::new(GroupKind::Encryption));
                    self.backend.expect_bare_byte();
                }
            }
            b'Q' => {
                let (text, _) = cstr(body);
                let sql = sanitize(&String::from_utf8_lossy(text));
                let ex = self.call(conn, &msg, Some(sql));
                let mut g = Group::new(GroupKind::Simple);
                g.calls.push_back(ex);
                self.push_group(g, cx);
            }
            b'P' => {
                self.segment.get_or_insert(msg.first);
                let (name, rest) = cstr(body);
                let (text, _) = cstr(rest);
                if self.statements.len() >= MAX_STATEMENTS {
                    self.statements.clear();
                }
                let sql = sanitize(&String::from_utf8_lossy(text));
                self.statements.insert(name.to_vec(), Some(sql.clone()));
                self.open_group().parse = Some((Some(sql), msg.first));
            }
            b'B' => {
                self.segment.get_or_insert(msg.first);
                let (portal, rest) = cstr(body);
                let (statement, _) = cstr(rest);
                let sql = self.statements.get(statement).cloned().flatten();
                if self.portals.len() >= MAX_STATEMENTS {
                    self.portals.clear();
                }
                self.portals.insert(portal.to_vec(), sql);
            }
            b'E' => {
                let (portal, _) = cstr(body);
                let sql = self.portals.get(portal).cloned().flatten();
                let ex = self.call(conn, &msg, sql);
                if self.pending.queue.len() >= cx.config.max_in_flight {
                    return self.give_up(cx);
                }
                self.open_group().calls.push_back(ex);
            }
            b'S' => {
                self.segment = None;
                self.open_group().closed = true;
            }
            b'C' => {
                let (name, _) = cstr(body.get(1..).unwrap_or_default());
                match body.first() {
                    Some(b'S') => self.statements.remove(name),
                    Some(b'P') => self.portals.remove(name),
                    _ => None,
                };
            }
            _ => {
                self.segment.get_or_insert(msg.first);
            }
        }
    }

    fn push_group(&mut self, g: Group, cx: &mut Cx<'_>) {
        if self.pending.queue.len() >= cx.config.max_in_flight {
            return self.give_up(cx);
        }
        self.pending.push(g);
    }

    fn on_backend(&mut self, conn: &ConnInfo, msg: Message<Stamp>, cx: &mut Cx<'_>) {
        if !self.pending.in_step() {
            return;
        }
        let Some(g) = self.pending.queue.front_mut() else {
            if msg.typ == b'Z' {
                cx.stats.unmatched_responses += 1;
            }
            return;
        };
        match (g.kind, msg.typ) {
            (GroupKind::Encryption, answer) => {
                self.pending.queue.pop_front();
                if answer == b'N' {
                    self.frontend.expect_untyped();
                } else {
                    // Encrypted from here on.
                    self.give_up(cx);
                }
            }
            (GroupKind::Startup, b'E') => {
                // The server refused the connection (and closes it).
                self.pending.queue.pop_front();
            }
            (GroupKind::Simple, b'E') => {
                g.error.get_or_insert(sqlstate(&msg.body));
            }
            (GroupKind::Extended, b'E') => {
                let first_error = g.error.is_none();
                g.error = Some(None);
                let outcome = Outcome::Error { code: sqlstate(&msg.body) };
                if let Some(ex) = g.calls.pop_front() {
                    end(ex, outcome, &msg, cx);
                } else if let Some((sql, first)) = g.parse.take().filter(|_| first_error) {
                    // Only a prepare, and it failed: the statement the client tried is a call.
                    let mut detail = DbDetail::new(DbSystem::Postgres);
                    detail.namespace = self.database.clone();
                    if let Some(q) = sql {
                        detail.operation = q.operation;
                        detail.collection = q.collection;
                        detail.query = (!q.text.is_empty()).then_some(q.text);
                    }
                    let ex = new_call(conn, first, self.ctx.take(first), detail);
                    end(ex, outcome, &msg, cx);
                }
            }
            (GroupKind::Extended, b'C' | b'I' | b's') => {
                if let Some(ex) = g.calls.pop_front() {
                    end(ex, Outcome::Ok, &msg, cx);
                }
            }
            (_, b'Z') => {
                let g = self.pending.queue.pop_front().expect("front exists");
                for ex in g.calls {
                    let outcome = match (g.kind, &g.error) {
                        (GroupKind::Simple, Some(code)) => Outcome::Error { code: code.clone() },
                        (GroupKind::Simple, None) => Outcome::Ok,
                        // Skipped after an earlier error of the group, or unanswered.
                        _ => Outcome::Unknown,
                    };
                    end(ex, outcome, &msg, cx);
                }
            }
            _ => {}
        }
    }

    /// Replies were lost (or requests were, `pipelined`): what waits ends as unknown.
    fn lose(&mut self, pipelined: bool, at: Option<Stamp>, cx: &mut Cx<'_>) {
        self.pending.lose(pipelined, |g| end_unknown(g, at, cx));
    }

    fn give_up(&mut self, cx: &mut Cx<'_>) {
        cx.stats.unanswered_requests += self.pending.queue.iter().map(|g| g.calls.len() as u64).sum::<u64>();
        self.pending.queue.clear();
        self.off = true;
    }

    fn drop_waiting(&mut self) -> u64 {
        let n = self.pending.queue.iter().map(|g| g.calls.len() as u64).sum();
        self.pending.queue.clear();
        n
    }
}

fn end(mut ex: Exchange, outcome: Outcome, msg: &Message<Stamp>, cx: &mut Cx<'_>) {
    ex.response_first = Some(msg.first);
    ex.response_last = Some(msg.last);
    detail_mut(&mut ex).outcome = outcome;
    cx.emit(ex);
}

fn end_unknown(g: Group, at: Option<Stamp>, cx: &mut Cx<'_>) {
    for mut ex in g.calls {
        ex.response_last = at;
        cx.emit(ex);
    }
}

impl Protocol for Postgres {
    fn on_data(&mut self, conn: &ConnInfo, d: &Data, cx: &mut Cx<'_>) {
        if d.len == 0 || self.off {
            return;
        }
        let stamp = database::stamp(d);
        let len = u64::from(d.len);
        let mut evs = Vec::new();
        if d.egress {
            self.ctx.on_write(stamp, d.ctx);
            if self.frontend.is_lost() && frontend_start(&d.head) {
                self.frontend.restart();
            }
            self.frontend.feed(&d.head, &d.tail, len, stamp, &mut evs);
            for ev in evs {
                match ev {
                    WireEvent::Message(m) => self.on_frontend(conn, m, cx),
                    WireEvent::Lost => {
                        cx.stats.parse_errors += 1;
                        self.lose(true, None, cx);
                    }
                }
                if self.off {
                    return;
                }
            }
        } else {
            self.backend.feed(&d.head, &d.tail, len, stamp, &mut evs);
            for ev in evs {
                match ev {
                    WireEvent::Message(m) => self.on_backend(conn, m, cx),
                    WireEvent::Lost => self.lose(false, Some(stamp), cx),
                }
                if self.off {
                    return;
                }
            }
            if self.pending.sync == (Step::Lost { pipelined: false }) && ends_ready(d) {
                // At most one group was sent since the loss, and the server is now ready: its
                // reply ended here. Back in step from the next read.
                self.pending.resync(|g| end_unknown(g, Some(stamp), cx));
                if self.backend.is_lost() {
                    self.backend.restart();
                }
            }
        }
    }

    fn on_idle(&mut self, _conn: &ConnInfo, idle_ns: u64, cx: &mut Cx<'_>) {
        if !self.pending.in_step() && idle_ns >= cx.config.desync_timeout_ns {
            self.pending.resync(|g| end_unknown(g, None, cx));
            if self.backend.is_lost() {
                self.backend.restart();
            }
        }
        if idle_ns >= cx.config.exchange_timeout_ns {
            cx.stats.expired_requests += self.drop_waiting();
        }
    }

    fn on_end(&mut self, _conn: &ConnInfo, reason: EndReason, cx: &mut Cx<'_>) {
        let n = self.drop_waiting();
        database::count_dropped(reason, n, cx);
    }

    fn for_each_in_flight<'a>(&'a self, f: &mut dyn FnMut(&'a Exchange)) {
        self.pending.queue.iter().flat_map(|g| g.calls.iter()).for_each(f);
    }
}

#[cfg(test)]
mod tests;
