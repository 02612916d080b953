//! What a database call keeps, and its span after OpenTelemetry's database conventions.

use crate::model::{Attr, SpanStatus};
use crate::protocols::shape::{MetricLabels, Shape};

/// `db.system.name`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DbSystem {
    Postgres,
    Redis,
    Mysql,
    Mariadb,
    Memcached,
}

impl DbSystem {
    pub fn name(self) -> &'static str {
        match self {
            Self::Postgres => "postgresql",
            Self::Redis => "redis",
            Self::Mysql => "mysql",
            Self::Mariadb => "mariadb",
            Self::Memcached => "memcached",
        }
    }
}

/// How a call ended.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Outcome {
    /// Its reply was lost (in a capture gap, or the connection ended first): neither success
    /// nor failure is known.
    #[default]
    Unknown,
    Ok,
    /// The server answered with an error: SQLSTATE, the MySQL error code, the Redis error
    /// prefix or the Memcached error word, when given.
    Error {
        code: Option<String>,
    },
}

/// One database call. Never holds a value of the user's data: `query` has every literal
/// replaced by `?`, and Redis and Memcached keep the command name only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DbDetail {
    pub system: DbSystem,
    /// `db.operation.name`: the SQL statement's keyword, or the Redis or Memcached command.
    pub operation: Option<String>,
    /// `db.collection.name`: the table of a simple statement.
    pub collection: Option<String>,
    /// `db.namespace`: the PostgreSQL or MySQL database, the Redis database index.
    pub namespace: Option<String>,
    /// `db.query.text`, sanitised.
    pub query: Option<String>,
    /// `db.operation.batch.size`: keys of a Memcached multi-key read (two or more).
    pub batch_size: Option<u64>,
    pub outcome: Outcome,
}

impl DbDetail {
    pub fn new(system: DbSystem) -> Self {
        Self {
            system,
            operation: None,
            collection: None,
            namespace: None,
            query: None,
            batch_size: None,
            outcome: Outcome::Unknown,
        }
    }

    /// The span name: `{operation} {collection}`, the operation alone, or the system.
    pub fn name(&self) -> String {
        match (&self.operation, &self.collection) {
            (Some(op), Some(c)) => format!("{op} {c}"),
            (Some(op), None) => op.clone(),
            _ => self.system.name().to_owned(),
        }
    }

    pub fn shape(&self) -> Shape {
        let mut attrs = vec![Attr::str("db.system.name", self.system.name())];
        if let Some(ns) = &self.namespace {
            attrs.push(Attr::str("db.namespace", ns.as_str()));
        }
        if let Some(op) = &self.operation {
            attrs.push(Attr::str("db.operation.name", op.as_str()));
        }
        if let Some(c) = &self.collection {
            attrs.push(Attr::str("db.collection.name", c.as_str()));
        }
        if let Some(q) = &self.query {
            attrs.push(Attr::str("db.query.text", q.as_str()));
        }
        if let Some(n) = self.batch_size {
            attrs.push(Attr::int("db.operation.batch.size", n as i64));
        }
        let status = match &self.outcome {
            Outcome::Error { code } => {
                let code = code.clone().unwrap_or_else(|| "_OTHER".to_owned());
                attrs.push(Attr::str("db.response.status_code", code.as_str()));
                attrs.push(Attr::str("error.type", code.as_str()));
                SpanStatus::Error(code)
            }
            Outcome::Ok | Outcome::Unknown => SpanStatus::Unset,
        };
        Shape { name: self.name(), attrs, status }
    }

    pub fn metric(&self) -> MetricLabels {
        MetricLabels::Db {
            system: self.system.name(),
            operation: self.operation.clone(),
            error_type: match &self.outcome {
                Outcome::Error { code } => Some(code.clone().unwrap_or_else(|| "_OTHER".to_owned())),
                _ => None,
            },
        }
    }
}
