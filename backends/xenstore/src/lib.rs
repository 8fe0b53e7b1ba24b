//! The xenstore service core: the role of Xen's `xenstored`, run in the
//! privileged service domain.
//!
//! Xenstore is a small hierarchical database shared by all domains: paths map
//! to byte values, each node carries Xen's permissions (an owner, a default
//! access and per-domain grants), clients watch subtrees for changes, and
//! transactions give a consistent snapshot whose commit fails with `EAGAIN`
//! when something it looked at changed meanwhile. Clients talk xs_wire over
//! a shared ring page (`start_info.store_mfn`, `store_evtchn`): each message
//! is a 16-byte header and up to 4096 bytes of NUL-separated strings.
//!
//! This crate is the transport-free core, tested on the host. The ring
//! transport (written separately) feeds each domain's request bytes to
//! [`Xenstore::receive`] (or whole messages to [`Xenstore::handle`]), copies
//! what [`Xenstore::peek_output`] yields into the response ring, and acts on
//! [`Xenstore::take_actions`] (map and bind a newly introduced domain's ring,
//! unbind a released one). Every byte from a client is hostile: malformed
//! input becomes an `XS_ERROR` reply or, for broken framing, an ignored
//! connection, never a panic.
//!
//! Map of the crate:
//! - [`path`]: path syntax, relative paths, tree arithmetic;
//! - [`perms`]: Xen's permission model and its wire syntax;
//! - [`store`]: the tree itself, with generations and transaction journals;
//! - [`wire`]: message framing, encoding and stream reassembly;
//! - [`conn`]: per-client state and the outgoing queue;
//! - [`Xenstore`]: request dispatch, watches, transactions, domains.

#![cfg_attr(not(test), no_std)]
// No `unsafe` in the library; the host tests' counting allocator
// (`heap_tests.rs`) is the one exception, in test builds only.
#![cfg_attr(not(test), forbid(unsafe_code))]
#![cfg_attr(test, deny(unsafe_code))]
#![warn(missing_docs)]

extern crate alloc;

pub mod conn;
pub mod heap;
mod ops;
pub mod path;
pub mod perms;
mod service;
pub mod store;
pub mod wire;

#[cfg(test)]
mod exhaustion_tests;
#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod heap_tests;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

pub use conn::{ConnId, Connection, Introduction};
pub use heap::HeapGate;
pub use service::{Action, Fed, HandleError, Hold, Xenstore};

use guest_abi::io::xenstore::XENSTORE_REL_PATH_MAX;

/// Per-client quotas. They bind unprivileged clients only; the defaults are
/// Xen's C xenstored's (`quota_*` in its core), and so are the errors a
/// request breaking one is answered with. EQUOTA, which oxenstored uses, is
/// not in xs_wire's error table, so clients could not decode it.
///
/// One is back-pressure rather than an error: a connection with
/// [`outstanding_per_domain`](Self::outstanding_per_domain) replies not yet
/// taken by its transport is not read ([`Xenstore::accepts_input`]): a
/// client that never reads its replies stops being served instead of
/// growing the service's memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Nodes a domain may own (`ENOSPC` beyond).
    pub nodes_per_domain: usize,
    /// Watches per connection (`E2BIG` beyond).
    pub watches_per_domain: usize,
    /// Open transactions per connection (`ENOSPC` beyond).
    pub transactions_per_domain: usize,
    /// Nodes one transaction may touch (`ENOSPC` beyond; the transaction
    /// can then no longer commit).
    pub nodes_per_transaction: usize,
    /// Permission entries per node (`ENOSPC` beyond).
    pub perms_per_node: usize,
    /// Accounted size of a node: 16 bytes, 8 per permission entry, the value
    /// and the NUL-terminated child names (`ENOSPC` beyond).
    pub node_size: usize,
    /// Path length past any `/local/domain/<id>/` prefix (`EINVAL` beyond).
    pub path_len: usize,
    /// Outgoing bytes a connection may have queued before further watch
    /// events for it are dropped (replies are never dropped).
    pub queued_bytes: usize,
    /// Requests of one connection whose replies have not been handed to
    /// the transport yet (xenstored's `outstanding`): at this many the
    /// connection's input is no longer read.
    pub outstanding_per_domain: usize,
    /// Memory one domain may make the service hold (xenstored's hard
    /// `memory` quota): the nodes it owns (path, accounted size and
    /// [`store::NODE_OVERHEAD`] each), its open transactions (their copy
    /// of the store's map, their journal and the nodes they changed), its
    /// watches, its queued output and its partial input. A request that
    /// would need more is refused with `ENOMEM` and a watch event that would
    /// need more is dropped. (Unlike xenstored, a domain at its quota is
    /// still read: it can only free memory by being served.)
    pub memory_per_domain: usize,
    /// Memory all unprivileged domains together may make the service hold
    /// (counted as for [`Limits::memory_per_domain`]): enough domains each
    /// within their own quota must not add up to more than the service
    /// domain has. Beyond it requests are refused with `ENOMEM` and watch
    /// events dropped, as for one domain over its quota.
    pub memory_total: usize,
    /// Heap every unprivileged client must leave free: a request from one
    /// runs only if the heap can give the request's upper bound and still
    /// keep this much (see [`crate::heap`]); otherwise it is answered
    /// `ENOMEM`, or, if even that cannot be afforded, its ring is not read.
    /// What it keeps serves the service domain's own work and its
    /// privileged connections, which only need the bound itself.
    pub heap_reserve: usize,
    /// Further heap kept for light clients: one whose domain makes the
    /// service hold more than [`Limits::light_usage`] must leave this much
    /// on top of [`Limits::heap_reserve`], so clients that flood the store
    /// run short before the ones that use it lightly do.
    pub heap_reserve_light: usize,
    /// Memory (as counted for [`Limits::memory_per_domain`]) up to which a
    /// domain counts as light.
    pub light_usage: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            nodes_per_domain: 1000,
            watches_per_domain: 128,
            transactions_per_domain: 10,
            nodes_per_transaction: 1024,
            perms_per_node: 5,
            node_size: 2048,
            path_len: XENSTORE_REL_PATH_MAX,
            queued_bytes: 256 * 1024,
            outstanding_per_domain: 20,
            memory_per_domain: 2 * 1024 * 1024 + 512 * 1024,
            memory_total: 8 * 1024 * 1024,
            heap_reserve: 256 * 1024,
            heap_reserve_light: 256 * 1024,
            light_usage: 64 * 1024,
        }
    }
}
