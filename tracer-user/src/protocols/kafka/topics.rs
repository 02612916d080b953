//! Kafka topic names by topic id, learnt from Metadata responses and shared by every Kafka
//! connection ([`crate::protocols::protocol::Shared`]): Produce v13+ and Fetch v13+ name
//! topics by id only.

use std::collections::{HashMap, VecDeque};

/// A Kafka topic id.
pub type Uuid = [u8; 16];

/// A topic as a message names it: by name, or (Produce v13+, Fetch v13+) by id.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum TopicRef {
    Name(String),
    Id(Uuid),
}

/// Topic ids remembered, over all connections; the oldest are forgotten beyond that.
pub const TOPIC_IDS: usize = 4096;

/// Topic names by id, from Metadata responses: shared by every Kafka connection, bounded.
#[derive(Default)]
pub struct TopicNames {
    names: HashMap<Uuid, String>,
    order: VecDeque<Uuid>,
    /// Ids forgotten for room.
    pub evictions: u64,
}

impl TopicNames {
    pub fn insert(&mut self, id: Uuid, name: String) {
        if self.names.insert(id, name).is_some() {
            return;
        }
        self.order.push_back(id);
        while self.order.len() > TOPIC_IDS {
            if let Some(old) = self.order.pop_front() {
                self.names.remove(&old);
                self.evictions += 1;
            }
        }
    }

    pub fn get(&self, id: &Uuid) -> Option<&str> {
        self.names.get(id).map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The topic's name: its own, the name its id maps to, or the id in hex.
    pub fn name(&self, t: &TopicRef) -> String {
        match t {
            TopicRef::Name(n) => n.clone(),
            TopicRef::Id(id) => {
                self.get(id).map_or_else(|| id.iter().map(|b| format!("{b:02x}")).collect(), str::to_owned)
            }
        }
    }
}
