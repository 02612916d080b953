//! What the messaging protocols keep of a message sent or received, and its span after
//! OpenTelemetry's messaging conventions. Never a payload or a header.

use crate::model::{Attr, SpanStatus};
use crate::protocols::shape::{MetricLabels, Shape};

/// `messaging.system`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessagingSystem {
    Nats,
    /// AMQP 0-9-1.
    Rabbitmq,
    Kafka,
}

impl MessagingSystem {
    pub fn name(self) -> &'static str {
        match self {
            Self::Nats => "nats",
            Self::Rabbitmq => "rabbitmq",
            Self::Kafka => "kafka",
        }
    }
}

/// What the traced client did with the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// It published the message (a PRODUCER span): `messaging.operation.type` `send`,
    /// `messaging.operation.name` `publish`.
    Publish,
    /// The broker delivered the message to it (a CONSUMER span): `receive` for both.
    Receive,
    /// It sent messages to the broker and waits for their acknowledgement (a PRODUCER span,
    /// Kafka's Produce): `send` for both.
    Send,
}

impl Operation {
    /// `messaging.operation.name`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Publish => "publish",
            Self::Receive => "receive",
            Self::Send => "send",
        }
    }

    /// `messaging.operation.type`.
    pub fn kind(self) -> &'static str {
        match self {
            Self::Publish | Self::Send => "send",
            Self::Receive => "receive",
        }
    }
}

/// Where a message went: a named destination, or a temporary one (a reply inbox) that is
/// never exported by name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    /// `messaging.destination.name`.
    Named(String),
    /// `messaging.destination.temporary`, with the destination's template when it has a known
    /// one (`messaging.destination.template`, which then names the span).
    Temporary { template: Option<&'static str> },
}

/// One message sent or received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessagingDetail {
    pub system: MessagingSystem,
    pub operation: Operation,
    pub destination: Destination,
    /// `messaging.consumer.group.name`: the queue group of the subscription a message was
    /// delivered to.
    pub group: Option<String>,
    /// `messaging.destination.subscription.name`: the subscription (a RabbitMQ consumer's
    /// queue) a message was delivered through.
    pub subscription: Option<String>,
    /// `messaging.message.body.size`: the payload's bytes (without headers); `None` when no
    /// message came (an empty `basic.get`).
    pub body_size: Option<u64>,
    /// `messaging.rabbitmq.destination.routing_key`.
    pub routing_key: Option<String>,
    /// `messaging.rabbitmq.message.delivery_tag`.
    pub delivery_tag: Option<u64>,
    /// Where a partitioned log put the messages (Kafka): partition, first offset, count.
    pub batch: Option<Batch>,
    /// `error.type`: why the broker refused the message or the call (its error's name).
    pub error: Option<String>,
}

/// Messages of one partition of a partitioned log (Kafka): the partition, the offset of the
/// first message (once the broker said it) and how many messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Batch {
    /// `messaging.destination.partition.id`.
    pub partition: i32,
    /// `messaging.kafka.offset`.
    pub offset: Option<i64>,
    /// `messaging.batch.message_count`.
    pub message_count: u64,
}

impl MessagingDetail {
    pub fn new(system: MessagingSystem, operation: Operation, destination: Destination) -> Self {
        Self {
            system,
            operation,
            destination,
            group: None,
            subscription: None,
            body_size: None,
            routing_key: None,
            delivery_tag: None,
            batch: None,
            error: None,
        }
    }

    /// `{operation} {destination}`, the template for a temporary destination, or the
    /// operation alone.
    pub fn name(&self) -> String {
        let op = self.operation.name();
        match &self.destination {
            Destination::Named(d) => format!("{op} {d}"),
            Destination::Temporary { template: Some(t) } => format!("{op} {t}"),
            Destination::Temporary { template: None } => op.to_owned(),
        }
    }

    pub fn shape(&self) -> Shape {
        let mut attrs = vec![
            Attr::str("messaging.system", self.system.name()),
            Attr::str("messaging.operation.name", self.operation.name()),
            Attr::str("messaging.operation.type", self.operation.kind()),
        ];
        match &self.destination {
            Destination::Named(d) => attrs.push(Attr::str("messaging.destination.name", d.as_str())),
            Destination::Temporary { template } => {
                attrs.push(Attr::bool("messaging.destination.temporary", true));
                if let Some(t) = template {
                    attrs.push(Attr::str("messaging.destination.template", *t));
                }
            }
        }
        if let Some(g) = &self.group {
            attrs.push(Attr::str("messaging.consumer.group.name", g.as_str()));
        }
        if let Some(sub) = &self.subscription {
            attrs.push(Attr::str("messaging.destination.subscription.name", sub.as_str()));
        }
        if let Some(n) = self.body_size {
            attrs.push(Attr::int("messaging.message.body.size", i64::try_from(n).unwrap_or(i64::MAX)));
        }
        if let Some(k) = &self.routing_key {
            attrs.push(Attr::str("messaging.rabbitmq.destination.routing_key", k.as_str()));
        }
        if let Some(t) = self.delivery_tag {
            attrs.push(Attr::int("messaging.rabbitmq.message.delivery_tag", i64::try_from(t).unwrap_or(i64::MAX)));
        }
        if let Some(b) = &self.batch {
            attrs.push(Attr::str("messaging.destination.partition.id", b.partition.to_string()));
            if let Some(o) = b.offset {
                attrs.push(Attr::int("messaging.kafka.offset", o));
            }
            attrs.push(Attr::int("messaging.batch.message_count", i64::try_from(b.message_count).unwrap_or(i64::MAX)));
        }
        let status = match &self.error {
            Some(e) => {
                attrs.push(Attr::str("error.type", e.as_str()));
                SpanStatus::Error(e.clone())
            }
            None => SpanStatus::Unset,
        };
        Shape { name: self.name(), attrs, status }
    }

    pub fn metric(&self) -> MetricLabels {
        MetricLabels::Messaging {
            system: self.system.name(),
            operation: self.operation.name(),
            operation_type: self.operation.kind(),
            error_type: self.error.clone(),
        }
    }
}
