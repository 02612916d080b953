//! MySQL and MariaDB (client/server protocol 4.1 and later), from the client side: one CLIENT
//! span per COM_QUERY and per COM_STMT_EXECUTE.
//!
//! * **Handshake.** The server's greeting names the server (`MariaDB` in its version makes
//!   `db.system.name` `mariadb`); the client's HandshakeResponse41 names the database
//!   (`db.namespace`), which COM_INIT_DB changes. A client that asks for TLS (an SSLRequest)
//!   encrypts the rest: the connection is no longer traced. Authentication runs until the
//!   server's OK or ERR.
//! * **Commands.** COM_QUERY carries its SQL (sanitised, [`database::sql`] in the MySQL dialect;
//!   query attributes, when a client sends some, hide the text). COM_STMT_PREPARE names a
//!   statement: its id, from the server's answer, maps to the sanitised text, and each
//!   COM_STMT_EXECUTE of it is a span with that text (MariaDB's id −1, "the statement just
//!   prepared", too). A prepare that fails is a span of its own; one that succeeds is not.
//!   COM_STMT_CLOSE, COM_STMT_SEND_LONG_DATA and COM_QUIT get no answer; COM_PING,
//!   COM_INIT_DB, COM_RESET_CONNECTION and the like get one packet and are not spans.
//!   COM_CHANGE_USER authenticates again. Any other command ends tracing of the connection.
//! * **Replies.** OK, ERR (its error code is `db.response.status_code`), or a result set:
//!   column count, column definitions (left out when MariaDB's metadata cache says the client
//!   has them), rows, and a terminator (an EOF packet, or an OK packet headed 0xFE with
//!   CLIENT_DEPRECATE_EOF — told apart by their length, so the capability need not be known); a terminator or OK with SERVER_MORE_RESULTS_EXISTS is followed by the
//!   next result (multi-statements, stored procedures). LOCAL INFILE requests wait for the
//!   final OK or ERR.
//! * **Gaps.** A gap inside a packet costs nothing. A gap over packet headers (many rows in one
//!   read) loses the framing of replies: when that read ends with a final terminator and one
//!   call waits, the call ends there (successfully) and the reader starts over at the next
//!   read; otherwise the call ends as unknown and replies are ignored until the client writes
//!   its next command with nothing outstanding (the protocol has one command in flight), or,
//!   if it had pipelined, the connection stays quiet for the desync timeout. A reply is never
//!   paired with another call than its own.
//!
//! Nothing from a row, a parameter or an error message is kept.

pub mod wire;

use std::collections::HashMap;

use self::wire::{MAX_PACKET, Packet, Reader, WireEvent, cstr, lenenc};
use crate::capture::event::Data;
use crate::protocols::database::sql::{Dialect, Sql, sanitize_as};
use crate::protocols::database::{
    self, DbDetail, DbSystem, Outcome, Pending, Step, WriteCtx, detail_mut, last_bytes, new_call,
};
use crate::protocols::exchange::{Exchange, Stamp};
use crate::protocols::protocol::{Cx, Protocol};
use crate::streams::{ConnInfo, EndReason};

/// Prepared statements remembered per connection; past that the table starts over.
const MAX_STATEMENTS: usize = 1024;
/// Bytes kept of a client packet (the SQL of a query or prepare) and of a server packet.
const KEEP_CLIENT: usize = 4096;
const KEEP_SERVER: usize = 128;

const COM_QUIT: u8 = 0x01;
const COM_INIT_DB: u8 = 0x02;
const COM_QUERY: u8 = 0x03;
const COM_CHANGE_USER: u8 = 0x11;
const COM_STMT_PREPARE: u8 = 0x16;
const COM_STMT_EXECUTE: u8 = 0x17;
const COM_STMT_SEND_LONG_DATA: u8 = 0x18;
const COM_STMT_CLOSE: u8 = 0x19;
/// Commands answered by a single OK, ERR, EOF or string packet: COM_STATISTICS (0x09),
/// COM_PROCESS_KILL (0x0c), COM_DEBUG (0x0d), COM_PING (0x0e), COM_STMT_RESET (0x1a),
/// COM_SET_OPTION (0x1b), COM_RESET_CONNECTION (0x1f), and COM_INIT_DB.
const ONE_PACKET: &[u8] = &[0x02, 0x09, 0x0c, 0x0d, 0x0e, 0x1a, 0x1b, 0x1f];

const CLIENT_CONNECT_WITH_DB: u32 = 0x0000_0008;
const CLIENT_SSL: u32 = 0x0000_0800;
const CLIENT_SECURE_CONNECTION: u32 = 0x0000_8000;
const CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA: u32 = 0x0020_0000;
const SERVER_MORE_RESULTS_EXISTS: u16 = 0x0008;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Nothing seen yet: a greeting starts the handshake, a command says the connection is
    /// older than the agent.
    Start,
    /// The greeting was read; the client's HandshakeResponse comes next.
    Greeted,
    /// Authentication: server packets until OK or ERR.
    Auth,
    Ready,
    /// Encrypted, failed or not understood: not traced.
    Off,
}

/// Where a reply stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reply {
    /// The first packet of a result (or of the next one).
    First,
    /// Column definitions still to come.
    Columns(u64),
    /// After the column definitions: an EOF packet (without CLIENT_DEPRECATE_EOF), or rows.
    AfterColumns,
    Rows,
    /// LOCAL INFILE: the client sends a file; the server's OK or ERR ends the call.
    Infile,
    /// A prepare's answer: the OK packet.
    PrepareOk,
    /// A prepare's parameter and column definitions: `left` of the current list, `then` of
    /// the next; `eof`: a list just ended, so an EOF packet may come (without
    /// CLIENT_DEPRECATE_EOF).
    Defs {
        left: u64,
        then: u64,
        eof: bool,
    },
    /// One packet answers.
    One,
}

/// What a server packet did to the call it answers.
#[derive(Debug, PartialEq)]
enum Next {
    /// More of the reply is to come.
    More,
    /// The reply is complete.
    Done(Outcome),
    /// The call's reply had ended already (a prepare's last list without an EOF packet): the
    /// packet answers the next call.
    NotMine,
}

/// Prepared statements of a connection.
#[derive(Default)]
struct Statements {
    map: HashMap<u32, Option<Sql>>,
    /// The statement of the last successful prepare (MariaDB's statement id −1).
    last: Option<u32>,
}

/// A command waiting for its reply.
struct Call {
    cmd: u8,
    reply: Reply,
    /// The span, for COM_QUERY and COM_STMT_EXECUTE (and a prepare, until it succeeds).
    ex: Option<Exchange>,
    /// A prepare's statement; COM_INIT_DB's database.
    sql: Option<Sql>,
    schema: Option<String>,
}

/// The MySQL state of one connection.
pub struct Mysql {
    client: Reader<Stamp>,
    server: Reader<Stamp>,
    phase: Phase,
    system: DbSystem,
    pending: Pending<Call>,
    statements: Statements,
    database: Option<String>,
    ctx: WriteCtx,
}

impl Default for Mysql {
    fn default() -> Self {
        Self::new()
    }
}

/// The error code of an ERR packet (`0xFF`, code, …).
fn error_code(body: &[u8]) -> Option<String> {
    (body.len() >= 3).then(|| u16::from_le_bytes([body[1], body[2]]).to_string())
}

/// Status flags of a terminator: an EOF packet (5 bytes: 0xFE, warnings, status) or an OK
/// packet (header, affected rows, last insert id, status, warnings).
fn status_flags(p: &Packet<Stamp>) -> Option<u16> {
    let b = p.body.as_slice();
    if p.len == 5 {
        return b.get(3..5).map(|s| u16::from_le_bytes([s[0], s[1]]));
    }
    let (_, n1) = lenenc(b.get(1..)?)?;
    let (_, n2) = lenenc(b.get(1 + n1..)?)?;
    b.get(1 + n1 + n2..3 + n1 + n2).map(|s| u16::from_le_bytes([s[0], s[1]]))
}

fn more_results(p: &Packet<Stamp>) -> bool {
    status_flags(p).is_some_and(|s| s & SERVER_MORE_RESULTS_EXISTS != 0)
}

/// A terminator of a result's rows: 0xFE and not a row (a row that starts with 0xFE is at
/// least 2^24 bytes long).
fn is_terminator(p: &Packet<Stamp>) -> bool {
    p.body.first() == Some(&0xfe) && p.len < u64::from(MAX_PACKET)
}

/// Whether a read ends with the final terminator of a result: an EOF packet, or an OK packet
/// headed 0xFE with no rows affected, no insert id and no info, without more results to come.
fn ends_result(d: &Data) -> bool {
    let last = |n| last_bytes(&d.head, &d.tail, u64::from(d.len), n);
    let no_more = |status: u16| status & SERVER_MORE_RESULTS_EXISTS == 0;
    last(9).is_some_and(|b| b[..3] == [5, 0, 0] && b[4] == 0xfe && no_more(u16::from_le_bytes([b[7], b[8]])))
        || last(11).is_some_and(|b| {
            b[..3] == [7, 0, 0] && b[4..7] == [0xfe, 0, 0] && no_more(u16::from_le_bytes([b[7], b[8]]))
        })
}

/// Whether a client packet plausibly starts at `b`: sequence 0 and a command this parser
/// follows.
fn command_start(b: &[u8]) -> bool {
    b.len() >= 5
        && b[3] == 0
        && u32::from_le_bytes([b[0], b[1], b[2], 0]) >= 1
        && (matches!(b[4], COM_QUIT | COM_QUERY | COM_STMT_PREPARE | COM_STMT_EXECUTE | COM_STMT_CLOSE)
            || ONE_PACKET.contains(&b[4]))
}

/// The SQL of a COM_QUERY body (after the command byte). With query attributes the text
/// follows a parameter count and a set count (1); attributes themselves hide the text.
fn query_text(body: &[u8]) -> Option<Sql> {
    let mut text = body;
    if text.first().is_some_and(|&c| c < 0x20 && c != b'\t' && c != b'\n' && c != b'\r') {
        match text {
            [0, 1, rest @ ..] => text = rest,
            _ => return None,
        }
    }
    Some(sanitize_as(&String::from_utf8_lossy(text), Dialect::Mysql))
}

impl Mysql {
    pub fn new() -> Self {
        Self {
            client: Reader::new(KEEP_CLIENT),
            server: Reader::new(KEEP_SERVER),
            phase: Phase::Start,
            system: DbSystem::Mysql,
            pending: Pending::default(),
            statements: Statements::default(),
            database: None,
            ctx: WriteCtx::default(),
        }
    }

    fn call(&mut self, conn: &ConnInfo, p: &Packet<Stamp>, sql: Option<Sql>) -> Exchange {
        let mut detail = DbDetail::new(self.system);
        detail.namespace = self.database.clone();
        if let Some(q) = sql {
            detail.operation = q.operation;
            detail.collection = q.collection;
            detail.query = (!q.text.is_empty()).then_some(q.text);
        }
        let mut ex = new_call(conn, p.first, self.ctx.take(p.first), detail);
        ex.request_last = Some(p.last);
        ex
    }

    fn push(&mut self, call: Call, cx: &mut Cx<'_>) {
        if self.pending.queue.len() >= cx.config.max_in_flight {
            return self.give_up(cx);
        }
        self.pending.push(call);
    }

    fn handshake_response(&mut self, p: &Packet<Stamp>) {
        let b = p.body.as_slice();
        if b.len() < 32 {
            self.phase = Phase::Off;
            return;
        }
        let caps = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        if caps & CLIENT_SSL != 0 && p.len == 32 {
            // An SSLRequest: TLS from here on.
            self.phase = Phase::Off;
            return;
        }
        self.phase = Phase::Auth;
        let (_user, rest) = cstr(&b[32..]);
        let auth_len = if caps & CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA != 0 {
            // A length past what any packet holds (up to 2^64 - 1 on the wire) finds no database.
            lenenc(rest).and_then(|(n, k)| usize::try_from(n).ok()?.checked_add(k))
        } else if caps & CLIENT_SECURE_CONNECTION != 0 {
            rest.first().map(|&n| n as usize + 1)
        } else {
            Some(cstr(rest).0.len() + 1)
        };
        if caps & CLIENT_CONNECT_WITH_DB != 0
            && let Some(db) = auth_len.and_then(|n| rest.get(n..))
        {
            let (db, _) = cstr(db);
            self.database = (!db.is_empty()).then(|| String::from_utf8_lossy(db).into_owned());
        }
    }

    fn on_client(&mut self, conn: &ConnInfo, p: Packet<Stamp>, cx: &mut Cx<'_>) {
        match self.phase {
            Phase::Greeted => return self.handshake_response(&p),
            Phase::Auth | Phase::Off => return,
            Phase::Start => self.phase = Phase::Ready,
            Phase::Ready => {}
        }
        if self.pending.queue.back().is_some_and(|c| c.reply == Reply::Infile) {
            // The file's contents.
            return;
        }
        let Some(&cmd) = p.body.first() else { return };
        if p.seq != 0 {
            cx.stats.parse_errors += 1;
            return;
        }
        while self.pending.queue.front().is_some_and(|c| c.reply == (Reply::Defs { left: 0, then: 0, eof: true })) {
            // A prepare's reply without a last EOF packet (CLIENT_DEPRECATE_EOF): the client
            // read it all before it wrote this command.
            self.pending.queue.pop_front();
        }
        if self.pending.sync == (Step::Lost { pipelined: false }) && self.pending.queue.is_empty() {
            // The one command outstanding when its reply was lost was answered before the
            // client wrote this one: the next reply is this command's.
            self.pending.sync = Step::InStep;
            self.server.restart();
        }
        let body = &p.body[1..];
        let call = |reply, ex, sql, schema| Call { cmd, reply, ex, sql, schema };
        match cmd {
            COM_QUERY => {
                let sql = query_text(body);
                let ex = self.call(conn, &p, sql);
                self.push(call(Reply::First, Some(ex), None, None), cx);
            }
            COM_STMT_PREPARE => {
                let sql = sanitize_as(&String::from_utf8_lossy(body), Dialect::Mysql);
                let ex = self.call(conn, &p, Some(sql.clone()));
                self.push(call(Reply::PrepareOk, Some(ex), Some(sql), None), cx);
            }
            COM_STMT_EXECUTE if body.len() >= 4 => {
                let mut id = u32::from_le_bytes([body[0], body[1], body[2], body[3]]);
                if id == u32::MAX {
                    id = self.statements.last.unwrap_or(id);
                }
                let sql = self.statements.map.get(&id).cloned().flatten();
                let ex = self.call(conn, &p, sql);
                self.push(call(Reply::First, Some(ex), None, None), cx);
            }
            COM_STMT_CLOSE if body.len() >= 4 => {
                self.statements.map.remove(&u32::from_le_bytes([body[0], body[1], body[2], body[3]]));
            }
            COM_STMT_SEND_LONG_DATA | COM_QUIT => {}
            COM_CHANGE_USER => {
                self.pending.resync(|c| end_unknown(c, None, cx));
                self.phase = Phase::Auth;
            }
            COM_INIT_DB => {
                let schema = String::from_utf8_lossy(body).into_owned();
                self.push(call(Reply::One, None, None, Some(schema)), cx);
            }
            c if ONE_PACKET.contains(&c) => self.push(call(Reply::One, None, None, None), cx),
            _ => {
                // Replication, or a command this parser does not follow.
                cx.stats.parse_errors += 1;
                self.give_up(cx);
            }
        }
    }

    fn on_server(&mut self, p: Packet<Stamp>, cx: &mut Cx<'_>) {
        let head = p.body.first().copied();
        match self.phase {
            Phase::Start if p.seq == 0 && head == Some(10) => {
                let (version, _) = cstr(&p.body[1..]);
                if version.windows(7).any(|w| w == b"MariaDB") {
                    self.system = DbSystem::Mariadb;
                }
                self.phase = Phase::Greeted;
                return;
            }
            Phase::Auth => {
                match head {
                    Some(0x00) => self.phase = Phase::Ready,
                    Some(0xff) => self.phase = Phase::Off,
                    _ => {}
                }
                return;
            }
            Phase::Ready => {}
            _ => return,
        }
        if !self.pending.in_step() {
            return;
        }
        loop {
            let Some(call) = self.pending.queue.front_mut() else {
                cx.stats.unmatched_responses += 1;
                return;
            };
            match advance(call, &p, &mut self.statements) {
                Next::More => return,
                Next::Done(outcome) => {
                    let mut call = self.pending.queue.pop_front().expect("front exists");
                    if outcome == Outcome::Ok && call.cmd == COM_INIT_DB {
                        self.database = call.schema.take();
                    }
                    return end(call, outcome, &p, cx);
                }
                Next::NotMine => {
                    // A prepare whose last list had no EOF packet ended before this packet.
                    self.pending.queue.pop_front();
                }
            }
        }
    }

    /// Replies were lost (or requests were, `pipelined`): what waits ends as unknown.
    fn lose(&mut self, pipelined: bool, at: Option<Stamp>, cx: &mut Cx<'_>) {
        self.pending.lose(pipelined, |c| end_unknown(c, at, cx));
    }

    fn give_up(&mut self, cx: &mut Cx<'_>) {
        cx.stats.unanswered_requests += self.drop_waiting();
        self.phase = Phase::Off;
    }

    fn drop_waiting(&mut self) -> u64 {
        let n = self.pending.queue.iter().filter(|c| c.ex.is_some()).count() as u64;
        self.pending.queue.clear();
        n
    }
}

/// The next packet `p` of `call`'s reply.
fn advance(call: &mut Call, p: &Packet<Stamp>, statements: &mut Statements) -> Next {
    let head = p.body.first().copied();
    let ok_or_more = |call: &mut Call| {
        if more_results(p) {
            call.reply = Reply::First;
            Next::More
        } else {
            Next::Done(Outcome::Ok)
        }
    };
    let more = |call: &mut Call, r| {
        call.reply = r;
        Next::More
    };
    match (call.reply, head) {
        (Reply::Defs { left, then, eof: true }, _) => {
            if head == Some(0xfe) && p.len == 5 {
                // The list's EOF packet.
                return if then == 0 {
                    Next::Done(Outcome::Ok)
                } else {
                    more(call, Reply::Defs { left, then, eof: false })
                };
            }
            if then == 0 {
                return Next::NotMine;
            }
            // CLIENT_DEPRECATE_EOF: this is the next list's first definition.
            more(call, Reply::Defs { left: then - 1, then: 0, eof: then == 1 })
        }
        (Reply::Defs { left: 0, then, .. }, _) => {
            more(call, Reply::Defs { left: then.saturating_sub(1), then: 0, eof: then <= 1 })
        }
        (Reply::Defs { left, then, .. }, _) => more(call, Reply::Defs { left: left - 1, then, eof: left == 1 }),
        (_, Some(0xff)) => Next::Done(Outcome::Error { code: error_code(&p.body) }),
        (Reply::One, _) => Next::Done(Outcome::Ok),
        (Reply::First, Some(0x00)) => ok_or_more(call),
        (Reply::First | Reply::Rows, Some(0xfe)) if is_terminator(p) => ok_or_more(call),
        (Reply::First, Some(0xfb)) => more(call, Reply::Infile),
        (Reply::First, _) => match lenenc(&p.body) {
            Some((n, k)) if n > 0 => {
                // MariaDB's metadata cache (MARIADB_CLIENT_CACHE_METADATA): a byte after the
                // count, 0 when the column definitions are not sent again.
                let cached = p.len == k as u64 + 1 && p.body.get(k) == Some(&0);
                more(call, if cached { Reply::AfterColumns } else { Reply::Columns(n) })
            }
            _ => Next::Done(Outcome::Unknown),
        },
        (Reply::Columns(n), _) => more(call, if n > 1 { Reply::Columns(n - 1) } else { Reply::AfterColumns }),
        (Reply::AfterColumns, Some(0xfe)) if p.len == 5 => more(call, Reply::Rows),
        // CLIENT_DEPRECATE_EOF and no rows: this OK packet ends the result.
        (Reply::AfterColumns, Some(0xfe)) if is_terminator(p) => ok_or_more(call),
        (Reply::AfterColumns | Reply::Rows, _) => more(call, Reply::Rows),
        (Reply::Infile, Some(0x00)) => Next::Done(Outcome::Ok),
        (Reply::Infile, _) => Next::More,
        (Reply::PrepareOk, Some(0x00)) if p.body.len() >= 9 => {
            let b = &p.body;
            let id = u32::from_le_bytes([b[1], b[2], b[3], b[4]]);
            let columns = u64::from(u16::from_le_bytes([b[5], b[6]]));
            let params = u64::from(u16::from_le_bytes([b[7], b[8]]));
            if statements.map.len() >= MAX_STATEMENTS {
                statements.map.clear();
            }
            statements.map.insert(id, call.sql.take());
            statements.last = Some(id);
            // A successful prepare is not a span.
            call.ex = None;
            match (params, columns) {
                (0, 0) => Next::Done(Outcome::Ok),
                (0, c) | (c, 0) => more(call, Reply::Defs { left: c, then: 0, eof: false }),
                (p, c) => more(call, Reply::Defs { left: p, then: c, eof: false }),
            }
        }
        (Reply::PrepareOk, _) => Next::Done(Outcome::Unknown),
    }
}

fn end(call: Call, outcome: Outcome, p: &Packet<Stamp>, cx: &mut Cx<'_>) {
    let Some(mut ex) = call.ex else { return };
    ex.response_first = Some(p.first);
    ex.response_last = Some(p.last);
    detail_mut(&mut ex).outcome = outcome;
    cx.emit(ex);
}

fn end_unknown(call: Call, at: Option<Stamp>, cx: &mut Cx<'_>) {
    if let Some(mut ex) = call.ex {
        ex.response_last = at;
        cx.emit(ex);
    }
}

impl Protocol for Mysql {
    fn on_data(&mut self, conn: &ConnInfo, d: &Data, cx: &mut Cx<'_>) {
        if d.len == 0 || self.phase == Phase::Off {
            return;
        }
        let stamp = database::stamp(d);
        let len = u64::from(d.len);
        let mut evs = Vec::new();
        if d.egress {
            self.ctx.on_write(stamp, d.ctx);
            if self.client.is_lost() && command_start(&d.head) {
                self.client.restart();
            }
            self.client.feed(&d.head, &d.tail, len, stamp, &mut evs);
            for ev in evs {
                match ev {
                    WireEvent::Packet(p) => self.on_client(conn, p, cx),
                    WireEvent::Lost => {
                        cx.stats.parse_errors += 1;
                        self.lose(true, None, cx);
                    }
                }
                if self.phase == Phase::Off {
                    return;
                }
            }
        } else {
            self.server.feed(&d.head, &d.tail, len, stamp, &mut evs);
            for ev in evs {
                match ev {
                    WireEvent::Packet(p) => self.on_server(p, cx),
                    WireEvent::Lost => {
                        let one_result = self.pending.queue.len() == 1
                            && self.pending.in_step()
                            && matches!(
                                self.pending.queue.front().map(|c| c.reply),
                                Some(Reply::Columns(_) | Reply::AfterColumns | Reply::Rows)
                            );
                        if one_result && ends_result(d) {
                            // Rows went by in the gap; the read ends the result.
                            let call = self.pending.queue.pop_front().expect("one waits");
                            if let Some(mut ex) = call.ex {
                                ex.response_last = Some(stamp);
                                ex.response_first.get_or_insert(stamp);
                                detail_mut(&mut ex).outcome = Outcome::Ok;
                                cx.emit(ex);
                            }
                            self.server.restart();
                            return;
                        }
                        self.lose(false, Some(stamp), cx);
                    }
                }
                if self.phase == Phase::Off {
                    return;
                }
            }
        }
    }

    fn on_idle(&mut self, _conn: &ConnInfo, idle_ns: u64, cx: &mut Cx<'_>) {
        if !self.pending.in_step() && idle_ns >= cx.config.desync_timeout_ns {
            self.pending.resync(|c| end_unknown(c, None, cx));
            if self.server.is_lost() {
                self.server.restart();
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
        self.pending.queue.iter().filter_map(|c| c.ex.as_ref()).for_each(f);
    }
}

#[cfg(test)]
mod tests;
