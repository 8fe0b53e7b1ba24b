//! Wire formats of the split device drivers (`xen/include/public/io/`).
//!
//! Front-ends and back-ends in different domains talk through shared pages
//! granted to each other, an event channel, and xenstore. This module tree
//! owns those page layouts, request/response formats and the ring index
//! arithmetic; it performs no I/O and no shared-memory access itself.

#![forbid(unsafe_code)]

pub mod blkif;
pub mod console;
pub mod echo;
pub mod netif;
pub mod ring;
pub mod xenbus;
pub mod xenstore;
