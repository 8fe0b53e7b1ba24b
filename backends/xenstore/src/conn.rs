//! Per-client state: one connection for each domain the service talks to.
//!
//! A [`Connection`] knows its domain id and whether it is privileged, holds
//! the client's watches and open transactions, the reassembler for its
//! incoming byte stream and the queue of outgoing messages (replies and watch
//! events) waiting for room in its ring. The queue can be drained whole
//! message by whole message or in arbitrary byte amounts, as a 1 KiB ring
//! requires. A connection that broke the framing protocol is marked ignored,
//! as xenstored does, and is served no more.

use alloc::collections::{BTreeMap, VecDeque};
use alloc::string::String;
use alloc::vec::Vec;

use guest_abi::DomId;

use crate::store::Store;
use crate::wire::Reassembler;

/// Identifies a connection for the lifetime of the service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub(crate) u32);

impl ConnId {
    /// The raw number.
    #[must_use]
    pub const fn raw(self) -> u32 {
        self.0
    }
}

/// The ring a domain was introduced with (from `start_info` or INTRODUCE).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Introduction {
    /// Machine frame of the domain's xenstore ring page.
    pub mfn: u64,
    /// The domain's unbound event channel for the store.
    pub evtchn: u32,
}

/// A registered watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Watch {
    /// Canonical watched path (absolute or special).
    pub path: String,
    /// The client's token, echoed in every event.
    pub token: Vec<u8>,
    /// Bytes to strip from event paths for a watch set with a relative path.
    pub relative_prefix: usize,
}

/// An open transaction: a private copy of the store with a journal.
#[derive(Clone, Debug)]
pub(crate) struct Transaction {
    /// The copy, journaling every access.
    pub store: Store,
    /// Set when an operation broke a quota: the transaction cannot commit.
    pub failed: bool,
    /// What the copy of the store's map cost when it was taken.
    pub copy_cost: usize,
}

impl Transaction {
    /// Memory the transaction holds beyond the shared store.
    pub fn bytes(&self) -> usize {
        self.copy_cost
            .saturating_add(self.store.journal().map_or(0, crate::store::Journal::bytes))
    }
}

/// One queued outgoing message.
#[derive(Clone, Debug)]
struct Outgoing {
    bytes: Vec<u8>,
    watch_event: bool,
}

/// Outgoing messages of one connection.
#[derive(Clone, Debug, Default)]
pub(crate) struct OutQueue {
    msgs: VecDeque<Outgoing>,
    /// Bytes of the head message already handed out.
    head_sent: usize,
    /// Bytes queued and not yet handed out.
    bytes: usize,
    /// Replies (not watch events) queued and not yet completely handed out.
    replies: usize,
}

impl OutQueue {
    /// Makes room for one more message without allocating later: `false`
    /// if the heap has no room for the queue to grow.
    pub fn reserve_slot(&mut self) -> bool {
        self.msgs.try_reserve(1).is_ok()
    }

    /// Bytes the queue's own array would take if it had to grow by one
    /// slot now (0 if it has room).
    pub fn growth_bytes(&self) -> usize {
        if self.msgs.len() < self.msgs.capacity() {
            0
        } else {
            (self.msgs.capacity() + 1)
                .saturating_mul(2)
                .saturating_mul(core::mem::size_of::<Outgoing>())
        }
    }

    /// Queue a reply. Call [`OutQueue::reserve_slot`] first: the push then
    /// does not allocate.
    pub fn push_reply(&mut self, bytes: Vec<u8>) {
        self.bytes += bytes.len();
        self.replies += 1;
        self.msgs.push_back(Outgoing {
            bytes,
            watch_event: false,
        });
    }

    /// Queue a watch event unless an identical one is already waiting.
    /// Returns whether it was queued.
    pub fn push_event(&mut self, bytes: Vec<u8>, dedup: bool) -> bool {
        if dedup && self.msgs.iter().any(|m| m.watch_event && m.bytes == bytes) {
            return false;
        }
        // Fallible growth: a service short of memory drops the event (as it
        // does past the quotas) instead of failing.
        if !self.reserve_slot() {
            return false;
        }
        self.bytes += bytes.len();
        self.msgs.push_back(Outgoing {
            bytes,
            watch_event: true,
        });
        true
    }

    pub fn peek(&self) -> Option<&[u8]> {
        self.msgs
            .front()
            .map(|m| m.bytes.get(self.head_sent..).unwrap_or(&[]))
    }

    pub fn advance(&mut self, mut n: usize) {
        while n > 0 {
            let Some(head) = self.msgs.front() else { break };
            let left = head.bytes.len().saturating_sub(self.head_sent);
            let step = n.min(left);
            self.head_sent += step;
            self.bytes = self.bytes.saturating_sub(step);
            n -= step;
            if self.head_sent >= head.bytes.len() {
                if let Some(done) = self.msgs.pop_front()
                    && !done.watch_event
                {
                    self.replies = self.replies.saturating_sub(1);
                }
                self.head_sent = 0;
            }
        }
    }

    pub fn pop(&mut self) -> Option<Vec<u8>> {
        let m = self.msgs.pop_front()?;
        if !m.watch_event {
            self.replies = self.replies.saturating_sub(1);
        }
        let sent = core::mem::take(&mut self.head_sent);
        self.bytes = self
            .bytes
            .saturating_sub(m.bytes.len().saturating_sub(sent));
        Some(m.bytes)
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn len(&self) -> usize {
        self.msgs.len()
    }

    pub fn replies(&self) -> usize {
        self.replies
    }
}

/// A client of the store.
#[derive(Clone, Debug)]
pub struct Connection {
    pub(crate) id: ConnId,
    pub(crate) domid: u16,
    pub(crate) privileged: bool,
    pub(crate) introduction: Option<Introduction>,
    pub(crate) watches: Vec<Watch>,
    /// Memory the watches hold (paths, tokens and overhead).
    pub(crate) watch_bytes: usize,
    pub(crate) transactions: BTreeMap<u32, Transaction>,
    pub(crate) next_tx_id: u32,
    pub(crate) out: OutQueue,
    pub(crate) input: Reassembler,
    pub(crate) ignored: bool,
    /// Requests answered `ENOMEM` because the heap had no room for them.
    pub(crate) heap_refusals: u64,
}

impl Connection {
    pub(crate) fn new(id: ConnId, domid: u16, privileged: bool) -> Self {
        Self {
            id,
            domid,
            privileged,
            introduction: None,
            watches: Vec::new(),
            watch_bytes: 0,
            transactions: BTreeMap::new(),
            next_tx_id: 1,
            out: OutQueue::default(),
            input: Reassembler::new(),
            ignored: false,
            heap_refusals: 0,
        }
    }

    /// This connection's id.
    #[must_use]
    pub fn id(&self) -> ConnId {
        self.id
    }

    /// The domain on the other end.
    #[must_use]
    pub fn domid(&self) -> DomId {
        DomId(self.domid)
    }

    /// Whether the client may do anything (Xen's dom0 and tools).
    #[must_use]
    pub fn is_privileged(&self) -> bool {
        self.privileged
    }

    /// The ring this domain was introduced with, if it was introduced.
    #[must_use]
    pub fn introduction(&self) -> Option<Introduction> {
        self.introduction
    }

    /// Number of registered watches.
    #[must_use]
    pub fn watch_count(&self) -> usize {
        self.watches.len()
    }

    /// Number of open transactions.
    #[must_use]
    pub fn transaction_count(&self) -> usize {
        self.transactions.len()
    }

    /// Outgoing bytes not yet handed to the transport.
    #[must_use]
    pub fn queued_bytes(&self) -> usize {
        self.out.bytes()
    }

    /// Outgoing messages not yet completely handed to the transport.
    #[must_use]
    pub fn queued_messages(&self) -> usize {
        self.out.len()
    }

    /// Requests whose replies are not yet completely handed to the
    /// transport (xenstored's outstanding requests).
    #[must_use]
    pub fn outstanding(&self) -> usize {
        self.out.replies()
    }

    /// Requests answered `ENOMEM` because the service's heap had no room
    /// for what they could allocate (not counting the memory quotas).
    #[must_use]
    pub fn heap_refusals(&self) -> u64 {
        self.heap_refusals
    }

    /// Whether the connection broke the protocol and is no longer served.
    #[must_use]
    pub fn is_ignored(&self) -> bool {
        self.ignored
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn partial_draining() {
        let mut q = OutQueue::default();
        q.push_reply(vec![1, 2, 3]);
        q.push_reply(vec![4, 5]);
        assert_eq!(q.bytes(), 5);
        assert_eq!(q.peek(), Some(&[1, 2, 3][..]));
        q.advance(2);
        assert_eq!(q.peek(), Some(&[3][..]));
        assert_eq!(q.bytes(), 3);
        q.advance(2);
        assert_eq!(q.peek(), Some(&[5][..]));
        q.advance(100);
        assert_eq!(q.peek(), None);
        assert_eq!((q.bytes(), q.len()), (0, 0));
    }

    #[test]
    fn pop_accounts_for_partial_head() {
        let mut q = OutQueue::default();
        q.push_reply(vec![1, 2, 3]);
        q.push_reply(vec![4]);
        q.advance(1);
        assert_eq!(q.pop(), Some(vec![1, 2, 3]));
        assert_eq!(q.bytes(), 1);
        assert_eq!(q.peek(), Some(&[4][..]));
    }

    #[test]
    fn identical_pending_events_are_merged() {
        let mut q = OutQueue::default();
        assert!(q.push_event(vec![9], true));
        assert!(!q.push_event(vec![9], true));
        assert!(q.push_event(vec![9], false));
        q.push_reply(vec![9]);
        assert_eq!(q.len(), 3);
    }
}
