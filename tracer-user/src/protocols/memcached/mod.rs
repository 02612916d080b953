//! Memcached's text protocol, from the client side: one CLIENT span per command.
//!
//! * **Commands.** Storage (`set`, `add`, `replace`, `append`, `prepend`, `cas`, and their data
//!   blocks), retrieval (`get`, `gets`, `gat`, `gats` — with more than one key the span has
//!   `db.operation.batch.size`), `delete`, `incr`, `decr`, `touch`, the meta commands (`mg`,
//!   `ms`, `md`, `ma`, `mn`, `me`), `stats`, `version`, `flush_all`, `verbosity`. The command
//!   name is `db.operation.name`; keys and values are never kept. A command with `noreply`
//!   gets no answer: its span ends with its write, outcome unknown. A meta command in quiet
//!   mode (flag `q`) is answered only sometimes: the connection is no longer traced, as it is
//!   after any command this parser does not know.
//! * **Replies.** Paired in order. `ERROR`, `CLIENT_ERROR …` and `SERVER_ERROR …` make the
//!   span an error with that word as `db.response.status_code` (never the message); a miss
//!   (`NOT_FOUND`, `EN`, `NF`) is not an error. Retrievals end at `END`, `stats` at `END`, meta
//!   answers with a value after the value.
//! * **Gaps.** A gap inside a data block costs nothing. When replies lose their framing, a read
//!   that ends with `END` while one retrieval waits ends it there; otherwise every call
//!   waiting ends as unknown and replies are ignored until the client writes with nothing
//!   outstanding (after a single lost reply), or the connection stays quiet for the desync
//!   timeout (after pipelined ones). A reply is never paired with another call than its own.

pub mod text;

use self::text::{Reader, TextEvent};
use crate::capture::event::Data;
use crate::protocols::database::{
    self, DbDetail, DbSystem, Outcome, Pending, Step, WriteCtx, detail_mut, last_bytes, new_call,
};
use crate::protocols::exchange::{Exchange, Stamp};
use crate::protocols::protocol::{Cx, Protocol};
use crate::streams::{ConnInfo, EndReason};

/// How a command's reply ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ends {
    /// One line.
    Line,
    /// `VALUE` lines with their blocks, then `END`.
    Values,
    /// `STAT` lines, then `END`.
    Stats,
    /// A meta reply: one line, with a block after `VA`.
    Meta,
}

struct Call {
    ex: Exchange,
    ends: Ends,
    /// A `VA` line was read: its block ends the reply.
    value: bool,
}

/// The Memcached state of one connection.
pub struct Memcached {
    commands: Reader<Stamp>,
    replies: Reader<Stamp>,
    pending: Pending<Call>,
    ctx: WriteCtx,
    /// Not traced any more.
    off: bool,
}

impl Default for Memcached {
    fn default() -> Self {
        Self::new()
    }
}

/// What a command line says: its name, how its reply ends, the data block that follows it,
/// whether it is answered, and how many keys it reads. `None`: not a command this parser knows
/// (or one in quiet mode).
struct Command {
    name: &'static str,
    ends: Ends,
    block: Option<u64>,
    noreply: bool,
    keys: usize,
}

const NAMES: &[&str] = &[
    "set",
    "add",
    "replace",
    "append",
    "prepend",
    "cas",
    "get",
    "gets",
    "gat",
    "gats",
    "delete",
    "incr",
    "decr",
    "touch",
    "mg",
    "ms",
    "md",
    "ma",
    "mn",
    "me",
    "stats",
    "version",
    "flush_all",
    "verbosity",
    "quit",
];

fn command(line: &[u8]) -> Option<Command> {
    let text = std::str::from_utf8(line).ok()?;
    let words: Vec<&str> = text.split(' ').filter(|w| !w.is_empty()).collect();
    let noreply = words.last() == Some(&"noreply");
    let num = |i: usize| words.get(i).and_then(|w| w.parse::<u64>().ok());
    let first = *words.first()?;
    let name = *NAMES.iter().find(|n| **n == first)?;
    let mut c = Command { name, ends: Ends::Line, block: None, noreply, keys: 0 };
    match name {
        "set" | "add" | "replace" | "append" | "prepend" | "cas" => c.block = Some(num(4)?),
        "get" | "gets" => {
            c.ends = Ends::Values;
            c.keys = words.len() - 1;
        }
        "gat" | "gats" => {
            c.ends = Ends::Values;
            c.keys = words.len().saturating_sub(2);
        }
        "stats" => c.ends = Ends::Stats,
        "mg" | "ms" | "md" | "ma" | "mn" | "me" => {
            // Flags are single letters with an optional token; `q` asks for quiet mode.
            if words.iter().skip(2).any(|w| w.starts_with('q')) {
                return None;
            }
            c.ends = Ends::Meta;
            if name == "ms" {
                c.block = Some(num(2)?);
            }
        }
        "quit" => c.noreply = true,
        _ => {}
    }
    Some(c)
}

/// The error word of an error reply line.
fn error_word(line: &[u8]) -> Option<&'static str> {
    ["ERROR", "CLIENT_ERROR", "SERVER_ERROR"]
        .into_iter()
        .find(|w| line == w.as_bytes() || (line.starts_with(w.as_bytes()) && line.get(w.len()) == Some(&b' ')))
}

/// Whether a command line plausibly starts at `b`.
fn command_start(b: &[u8]) -> bool {
    let end = b.iter().position(|&c| c == b' ' || c == b'\r').unwrap_or(b.len());
    NAMES.iter().any(|n| n.as_bytes() == &b[..end])
}

/// The numeric argument at `i` of a reply line.
fn reply_num(line: &[u8], i: usize) -> Option<u64> {
    std::str::from_utf8(line).ok()?.split(' ').nth(i)?.parse().ok()
}

impl Memcached {
    pub fn new() -> Self {
        Self {
            commands: Reader::new(),
            replies: Reader::new(),
            pending: Pending::default(),
            ctx: WriteCtx::default(),
            off: false,
        }
    }

    fn on_command(
        &mut self,
        conn: &ConnInfo,
        line: &[u8],
        first: Stamp,
        last: Stamp,
        reader: &mut Reader<Stamp>,
        cx: &mut Cx<'_>,
    ) {
        let Some(c) = command(line) else {
            cx.stats.parse_errors += 1;
            return self.give_up(cx);
        };
        if let Some(n) = c.block {
            reader.expect_block(n);
        }
        if self.pending.sync == (Step::Lost { pipelined: false }) && self.pending.queue.is_empty() {
            // The one command outstanding when the replies were lost was answered before the
            // client wrote this one: the next reply is this command's.
            self.pending.sync = Step::InStep;
            self.replies.restart();
        }
        let mut detail = DbDetail::new(DbSystem::Memcached);
        detail.operation = Some(c.name.to_owned());
        detail.batch_size = (c.keys > 1).then_some(c.keys as u64);
        let mut ex = new_call(conn, first, self.ctx.take(first), detail);
        ex.request_last = Some(last);
        if c.noreply {
            if c.name != "quit" {
                ex.response_last = Some(last);
                cx.emit(ex);
            }
            return;
        }
        if self.pending.queue.len() >= cx.config.max_in_flight {
            return self.give_up(cx);
        }
        self.pending.push(Call { ex, ends: c.ends, value: false });
    }

    fn on_reply(&mut self, line: &[u8], first: Stamp, last: Stamp, reader: &mut Reader<Stamp>, cx: &mut Cx<'_>) {
        if !self.pending.in_step() {
            return;
        }
        let Some(call) = self.pending.queue.front_mut() else {
            cx.stats.unmatched_responses += 1;
            return;
        };
        call.ex.response_first.get_or_insert(first);
        let outcome = match (call.ends, error_word(line)) {
            (_, Some(word)) => Some(Outcome::Error { code: Some(word.to_owned()) }),
            (Ends::Values, None) if line.starts_with(b"VALUE ") => {
                match reply_num(line, 3) {
                    Some(n) => reader.expect_block(n),
                    None => return self.lose(false, last, cx),
                }
                None
            }
            (Ends::Stats, None) if line.starts_with(b"STAT ") => None,
            (Ends::Values | Ends::Stats, None) if line == b"END" => Some(Outcome::Ok),
            (Ends::Values | Ends::Stats, None) => return self.lose(false, last, cx),
            (Ends::Meta, None) if line.starts_with(b"VA ") => {
                match reply_num(line, 1) {
                    Some(n) => reader.expect_block(n),
                    None => return self.lose(false, last, cx),
                }
                call.value = true;
                None
            }
            (Ends::Meta | Ends::Line, None) => Some(Outcome::Ok),
        };
        if let Some(outcome) = outcome {
            self.end(outcome, last, cx);
        }
    }

    fn end(&mut self, outcome: Outcome, last: Stamp, cx: &mut Cx<'_>) {
        let Some(mut call) = self.pending.queue.pop_front() else { return };
        call.ex.response_last = Some(last);
        detail_mut(&mut call.ex).outcome = outcome;
        cx.emit(call.ex);
    }

    /// Replies were lost (or requests were, `pipelined`): what waits ends as unknown.
    fn lose(&mut self, pipelined: bool, at: Stamp, cx: &mut Cx<'_>) {
        self.pending.lose(pipelined, |mut c| {
            c.ex.response_last = Some(at);
            cx.emit(c.ex);
        });
    }

    fn give_up(&mut self, cx: &mut Cx<'_>) {
        cx.stats.unanswered_requests += self.pending.queue.len() as u64;
        self.pending.queue.clear();
        self.off = true;
    }
}

impl Protocol for Memcached {
    fn on_data(&mut self, conn: &ConnInfo, d: &Data, cx: &mut Cx<'_>) {
        if d.len == 0 || self.off {
            return;
        }
        let stamp = database::stamp(d);
        let len = u64::from(d.len);
        if d.egress {
            self.ctx.on_write(stamp, d.ctx);
            if self.commands.is_lost() && command_start(&d.head) {
                self.commands.restart();
            }
            let mut reader = std::mem::take(&mut self.commands);
            reader.feed(&d.head, &d.tail, len, stamp, &mut |r, ev| match ev {
                TextEvent::Line { line, first, last } if !self.off => self.on_command(conn, &line, first, last, r, cx),
                TextEvent::Lost => {
                    cx.stats.parse_errors += 1;
                    if !self.off {
                        self.lose(true, stamp, cx);
                    }
                }
                _ => {}
            });
            self.commands = reader;
        } else {
            let ends_end = last_bytes(&d.head, &d.tail, len, 5) == Some(b"END\r\n");
            let mut reader = std::mem::take(&mut self.replies);
            let mut lost = false;
            reader.feed(&d.head, &d.tail, len, stamp, &mut |r, ev| match ev {
                TextEvent::Line { line, first, last } if !self.off => self.on_reply(&line, first, last, r, cx),
                TextEvent::Block { last } => {
                    if let Some(c) = self.pending.queue.front()
                        && c.value
                        && self.pending.in_step()
                    {
                        self.end(Outcome::Ok, last, cx);
                    }
                }
                TextEvent::Lost => lost = true,
                _ => {}
            });
            self.replies = reader;
            if lost {
                let one_retrieval = self.pending.in_step()
                    && self.pending.queue.len() == 1
                    && self.pending.queue.front().is_some_and(|c| matches!(c.ends, Ends::Values | Ends::Stats));
                if one_retrieval && ends_end {
                    // Values went by in the gap; the read ends the reply.
                    self.end(Outcome::Ok, stamp, cx);
                    self.replies.restart();
                } else {
                    self.lose(false, stamp, cx);
                }
            }
        }
    }

    fn on_idle(&mut self, _conn: &ConnInfo, idle_ns: u64, cx: &mut Cx<'_>) {
        if !self.pending.in_step() && idle_ns >= cx.config.desync_timeout_ns {
            self.pending.resync(|mut c| {
                c.ex.response_last = None;
                cx.emit(c.ex);
            });
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
        self.pending.queue.iter().map(|c| &c.ex).for_each(f);
    }
}

#[cfg(test)]
mod tests;
