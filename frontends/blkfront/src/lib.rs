//! Block front-end core: the guest side of the `blkif` split driver.
//!
//! [`BlkFront`] turns reads, writes and flushes of whole 512-byte sectors in
//! the guest's own pages into `blkif` requests on a one-page shared ring,
//! granting each data page to the back-end for exactly as long as the request
//! is in flight. [`BlkFront::poll`] collects the back-end's responses and
//! matches each one to the request it answers.
//!
//! Everything the back-end writes (ring indices, response ids, operations,
//! statuses, xenstore values) is treated as untrusted: a bad value is
//! reported as an error, never a panic. Shared memory and grant tables are
//! reached only through [`SharedPage`] and [`Grants`], which the guest kernel
//! implements, so this crate is plain safe code tested on the host.
//!
//! [`xenbus`] holds the xenstore negotiation helpers.

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

extern crate alloc;

pub mod device;
#[cfg(test)]
mod tests;
pub mod xenbus;

use alloc::vec::Vec;

use guest_abi::io::blkif::{
    BLKIF_MAX_SEGMENTS_PER_REQUEST, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_READ, BLKIF_OP_WRITE,
    BLKIF_OP_WRITE_BARRIER, BLKIF_RSP_OKAY, BLKIF_SECTOR_SIZE, BLKIF_SECTORS_PER_PAGE,
    BlkifRequestSegment, VDISK_READONLY,
};
pub use guest_abi::io::blkif::{BlkifRequest, BlkifResponse};
pub use guest_abi::io::ring::{FrontRing, RingError, SharedPage};

/// Segments in one request.
pub const MAX_SEGMENTS: usize = BLKIF_MAX_SEGMENTS_PER_REQUEST;

/// The front end of a block ring.
pub type BlkFrontRing<P> = FrontRing<P, BlkifRequest, BlkifResponse>;

/// Why the grant table refused an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrantError {
    /// No free grant entry is left.
    Exhausted,
    /// The back-end still has the granted frame mapped; try again later.
    InUse,
    /// The reference names no grant of ours.
    BadRef,
}

/// The guest's grant table, as the front-end needs it. The implementation
/// knows which domain the back-end runs in.
pub trait Grants {
    /// Grants the back-end access to our frame `gfn` (read-only if
    /// `readonly`) and returns the grant reference to put in a request.
    ///
    /// # Errors
    /// Whatever the grant table reports, typically [`GrantError::Exhausted`].
    fn grant(&mut self, gfn: u64, readonly: bool) -> Result<u32, GrantError>;
    /// Revokes grant `gref`.
    ///
    /// # Errors
    /// [`GrantError::InUse`] while the back-end still maps the frame.
    fn end(&mut self, gref: u32) -> Result<(), GrantError>;
}

/// What the back-end told us about the disk (see [`xenbus::parse_backend`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Size of the disk in 512-byte sectors.
    pub sectors: u64,
    /// `VDISK_*` flags.
    pub info: u32,
    /// The back-end offered `feature-flush-cache`.
    pub flush_cache: bool,
    /// The back-end offered `feature-barrier`.
    pub barrier: bool,
}

impl DeviceInfo {
    /// Whether the disk refuses writes (`VDISK_READONLY`).
    #[must_use]
    pub fn read_only(&self) -> bool {
        self.info & VDISK_READONLY != 0
    }

    /// The operation a flush is sent as: `FLUSH_DISKCACHE` if offered, else
    /// `WRITE_BARRIER`, else none.
    #[must_use]
    pub fn flush_operation(&self) -> Option<u8> {
        if self.flush_cache {
            Some(BLKIF_OP_FLUSH_DISKCACHE)
        } else if self.barrier {
            Some(BLKIF_OP_WRITE_BARRIER)
        } else {
            None
        }
    }
}

/// A run of sectors inside one of our pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// The page (guest frame number).
    pub gfn: u64,
    /// First sector within the page (0..=7).
    pub first_sect: u8,
    /// Last sector within the page, inclusive (`first_sect..=7`).
    pub last_sect: u8,
}

impl Segment {
    /// The whole page.
    #[must_use]
    pub fn page(gfn: u64) -> Self {
        Self {
            gfn,
            first_sect: 0,
            last_sect: BLKIF_SECTORS_PER_PAGE - 1,
        }
    }

    /// Sectors covered, or `None` if the bounds are invalid.
    #[must_use]
    pub fn sectors(&self) -> Option<u64> {
        (self.first_sect <= self.last_sect && self.last_sect < BLKIF_SECTORS_PER_PAGE)
            .then(|| u64::from(self.last_sect - self.first_sect) + 1)
    }
}

/// Why a request was refused or the ring failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// A read or write named no segment.
    NoSegments,
    /// More than [`MAX_SEGMENTS`] segments (the count given).
    TooManySegments(usize),
    /// Segment at this index has `first_sect > last_sect` or `last_sect > 7`.
    BadSegment(usize),
    /// The sector range runs past the end of the disk.
    BeyondEnd,
    /// A write to a read-only disk.
    ReadOnly,
    /// The back-end offers no way to flush.
    NotSupported,
    /// No ring slot or request id is free; wait for completions.
    RingFull,
    /// The grant table refused; grants made for the request were ended.
    Grant(GrantError),
    /// The back-end corrupted the ring; it must be torn down. Once seen,
    /// every later call fails the same way.
    Ring(RingError),
    /// [`plan_io`]: the length is zero or not a multiple of 512.
    BadLength,
    /// [`plan_io`]: too few pages for the length.
    BufferTooSmall,
}

/// A finished request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    /// The caller's tag given at submission.
    pub tag: u64,
    /// The `BLKIF_OP_*` of the request.
    pub operation: u8,
    /// The back-end's `BLKIF_RSP_*` status, unchecked.
    pub status: i16,
}

impl Completion {
    /// Whether the back-end reported success.
    #[must_use]
    pub fn is_ok(&self) -> bool {
        self.status == BLKIF_RSP_OKAY
    }
}

/// A response that matched no request; it was ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtocolError {
    /// The id is not that of a request in flight (never issued, already
    /// completed, or from a previous use of the slot).
    UnknownId(u64),
    /// The id is in flight but the operation differs; the request stays in
    /// flight.
    WrongOperation {
        /// The response's id.
        id: u64,
        /// The request's operation.
        expected: u8,
        /// The response's operation.
        got: u8,
    },
}

/// Protocol errors kept for [`BlkFront::take_protocol_errors`]; later ones
/// are only counted.
const MAX_KEPT_ERRORS: usize = 32;

/// One request in flight.
#[derive(Clone, Copy, Debug, Default)]
struct Shadow {
    /// Bumped on each use of the slot; the upper half of the request id.
    generation: u32,
    active: bool,
    operation: u8,
    nr_grefs: u8,
    grefs: [u32; MAX_SEGMENTS],
    tag: u64,
}

/// The block front-end: the request ring, the disk's parameters and the
/// requests in flight.
///
/// A request id is `generation << 32 | slot`, where `slot` indexes a shadow
/// table as large as the ring and `generation` changes on every reuse of the
/// slot, so a late or repeated response cannot complete a newer request.
pub struct BlkFront<P, G> {
    ring: BlkFrontRing<P>,
    grants: G,
    info: DeviceInfo,
    handle: u16,
    shadow: Vec<Shadow>,
    free_ids: Vec<u32>,
    /// Grants whose `end` failed (still mapped); retried on every poll.
    stuck: Vec<u32>,
    errors: Vec<ProtocolError>,
    error_count: u64,
    broken: Option<RingError>,
}

impl<P: SharedPage, G: Grants> BlkFront<P, G> {
    /// A front-end over a freshly initialised ring ([`FrontRing::init`]),
    /// for the disk the back-end described as `info`; `handle` is the
    /// virtual device number from the device's xenstore path.
    pub fn new(ring: BlkFrontRing<P>, grants: G, info: DeviceInfo, handle: u16) -> Self {
        let size = BlkFrontRing::<P>::SIZE;
        Self {
            ring,
            grants,
            info,
            handle,
            shadow: alloc::vec![Shadow::default(); size as usize],
            free_ids: (0..size).rev().collect(),
            stuck: Vec::new(),
            errors: Vec::new(),
            error_count: 0,
            broken: None,
        }
    }

    /// The disk's parameters.
    #[must_use]
    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    /// The ring.
    #[must_use]
    pub fn ring(&self) -> &BlkFrontRing<P> {
        &self.ring
    }

    /// The grant table.
    #[must_use]
    pub fn grants(&self) -> &G {
        &self.grants
    }

    /// Requests that can be submitted now.
    #[must_use]
    pub fn free_slots(&self) -> usize {
        if self.broken.is_some() {
            return 0;
        }
        (self.ring.free_requests() as usize).min(self.free_ids.len())
    }

    /// Requests submitted and not yet completed.
    #[must_use]
    pub fn in_flight(&self) -> usize {
        self.shadow.len() - self.free_ids.len()
    }

    /// Grants held by requests in flight.
    #[must_use]
    pub fn grants_in_flight(&self) -> usize {
        self.shadow
            .iter()
            .filter(|s| s.active)
            .map(|s| usize::from(s.nr_grefs))
            .sum()
    }

    /// Grants whose revocation failed because the back-end still maps them;
    /// [`poll`](Self::poll) retries them.
    #[must_use]
    pub fn stuck_grants(&self) -> &[u32] {
        &self.stuck
    }

    /// Takes the protocol errors seen since the last call (at most 32 are
    /// kept; [`protocol_error_count`](Self::protocol_error_count) counts all).
    pub fn take_protocol_errors(&mut self) -> Vec<ProtocolError> {
        core::mem::take(&mut self.errors)
    }

    /// Protocol errors seen since creation.
    #[must_use]
    pub fn protocol_error_count(&self) -> u64 {
        self.error_count
    }

    /// Reads `segments` starting at disk sector `sector` into our pages.
    /// Returns whether the back-end must be notified.
    ///
    /// # Errors
    /// Invalid segments or range, a full ring, a grant failure or a broken
    /// ring; nothing is left behind.
    pub fn submit_read(
        &mut self,
        sector: u64,
        segments: &[Segment],
        tag: u64,
    ) -> Result<bool, Error> {
        self.submit_rw(BLKIF_OP_READ, sector, segments, tag)
    }

    /// Writes our pages named by `segments` to the disk from sector
    /// `sector`. Returns whether the back-end must be notified.
    ///
    /// # Errors
    /// As [`submit_read`](Self::submit_read), and [`Error::ReadOnly`].
    pub fn submit_write(
        &mut self,
        sector: u64,
        segments: &[Segment],
        tag: u64,
    ) -> Result<bool, Error> {
        if self.info.read_only() {
            return Err(Error::ReadOnly);
        }
        self.submit_rw(BLKIF_OP_WRITE, sector, segments, tag)
    }

    /// Asks the back-end to make completed writes durable, with the
    /// operation [`DeviceInfo::flush_operation`] picks and no segments.
    /// Returns whether the back-end must be notified.
    ///
    /// # Errors
    /// [`Error::NotSupported`] if the back-end offered neither feature; a
    /// full or broken ring.
    pub fn submit_flush(&mut self, tag: u64) -> Result<bool, Error> {
        let op = self.info.flush_operation().ok_or(Error::NotSupported)?;
        self.submit(op, 0, &[], tag)
    }

    fn submit_rw(
        &mut self,
        op: u8,
        sector: u64,
        segments: &[Segment],
        tag: u64,
    ) -> Result<bool, Error> {
        if segments.is_empty() {
            return Err(Error::NoSegments);
        }
        if segments.len() > MAX_SEGMENTS {
            return Err(Error::TooManySegments(segments.len()));
        }
        let mut count = 0u64;
        for (i, seg) in segments.iter().enumerate() {
            count += seg.sectors().ok_or(Error::BadSegment(i))?;
        }
        match sector.checked_add(count) {
            Some(end) if end <= self.info.sectors => {}
            _ => return Err(Error::BeyondEnd),
        }
        self.submit(op, sector, segments, tag)
    }

    /// Allocates an id, grants the pages and publishes the request.
    fn submit(
        &mut self,
        op: u8,
        sector: u64,
        segments: &[Segment],
        tag: u64,
    ) -> Result<bool, Error> {
        if let Some(e) = self.broken {
            return Err(Error::Ring(e));
        }
        if self.free_slots() == 0 {
            return Err(Error::RingFull);
        }
        // The back-end writes into our pages for a read, only reads for a write.
        let readonly = op != BLKIF_OP_READ;
        let mut req = BlkifRequest {
            operation: op,
            nr_segments: segments.len() as u8,
            handle: self.handle,
            sector_number: sector,
            ..BlkifRequest::default()
        };
        for (i, seg) in segments.iter().enumerate() {
            match self.grants.grant(seg.gfn, readonly) {
                Ok(gref) => {
                    req.seg[i] = BlkifRequestSegment {
                        gref,
                        first_sect: seg.first_sect,
                        last_sect: seg.last_sect,
                        _pad: 0,
                    };
                }
                Err(e) => {
                    for s in &req.seg[..i] {
                        self.end_grant(s.gref);
                    }
                    return Err(Error::Grant(e));
                }
            }
        }
        // Cannot fail: free_slots() was checked above.
        let slot = self.free_ids.pop().ok_or(Error::RingFull)?;
        let entry = &mut self.shadow[slot as usize];
        entry.generation = entry.generation.wrapping_add(1);
        entry.active = true;
        entry.operation = op;
        entry.nr_grefs = req.nr_segments;
        for (dst, src) in entry.grefs.iter_mut().zip(&req.seg) {
            *dst = src.gref;
        }
        entry.tag = tag;
        req.id = (u64::from(entry.generation) << 32) | u64::from(slot);
        if self.ring.push_request(&req).is_err() {
            // Unreachable after the free_slots() check; undo anyway.
            self.release(slot);
            return Err(Error::RingFull);
        }
        Ok(self.ring.push_requests_and_check_notify())
    }

    /// Ends a grant, parking it on the stuck list if the back-end still maps it.
    fn end_grant(&mut self, gref: u32) {
        if self.grants.end(gref).is_err() {
            self.stuck.push(gref);
        }
    }

    /// Frees shadow slot `slot`, ending its grants.
    fn release(&mut self, slot: u32) {
        let entry = core::mem::take(&mut self.shadow[slot as usize]);
        self.shadow[slot as usize].generation = entry.generation;
        for &gref in &entry.grefs[..usize::from(entry.nr_grefs)] {
            self.end_grant(gref);
        }
        self.free_ids.push(slot);
    }

    fn protocol_error(&mut self, e: ProtocolError) {
        self.error_count += 1;
        if self.errors.len() < MAX_KEPT_ERRORS {
            self.errors.push(e);
        }
    }

    /// Consumes every response the back-end has published, re-arming the
    /// response event before returning so that none is missed, and returns
    /// the completed requests. Responses that match no request in flight are
    /// recorded as [`ProtocolError`]s and ignored. Grants that could not be
    /// ended earlier are retried first.
    ///
    /// # Errors
    /// [`Error::Ring`] if the back-end's producer index is implausible. If
    /// some responses were consumed before that was noticed, they are
    /// returned and the error comes from the next call.
    pub fn poll(&mut self) -> Result<Vec<Completion>, Error> {
        if let Some(e) = self.broken {
            return Err(Error::Ring(e));
        }
        let stuck = core::mem::take(&mut self.stuck);
        for gref in stuck {
            self.end_grant(gref);
        }
        let mut done = Vec::new();
        loop {
            match self.ring.consume_response() {
                Ok(Some(rsp)) => {
                    if let Some(c) = self.complete(&rsp) {
                        done.push(c);
                    }
                }
                Ok(None) => {
                    if !self.ring.final_check_for_responses() {
                        break;
                    }
                }
                Err(e) => {
                    self.broken = Some(e);
                    if done.is_empty() {
                        return Err(Error::Ring(e));
                    }
                    break;
                }
            }
        }
        Ok(done)
    }

    /// Matches one response to its shadow entry and retires it.
    fn complete(&mut self, rsp: &BlkifResponse) -> Option<Completion> {
        let slot = (rsp.id & 0xffff_ffff) as u32;
        let generation = (rsp.id >> 32) as u32;
        let entry = match self.shadow.get(slot as usize) {
            Some(e) if e.active && e.generation == generation => *e,
            _ => {
                self.protocol_error(ProtocolError::UnknownId(rsp.id));
                return None;
            }
        };
        if entry.operation != rsp.operation {
            self.protocol_error(ProtocolError::WrongOperation {
                id: rsp.id,
                expected: entry.operation,
                got: rsp.operation,
            });
            return None;
        }
        self.release(slot);
        Some(Completion {
            tag: entry.tag,
            operation: entry.operation,
            status: rsp.status,
        })
    }
}

/// One request of a [`plan_io`] plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IoChunk {
    /// First disk sector.
    pub sector: u64,
    /// Segments, 1..=11 of them.
    pub segments: Vec<Segment>,
}

/// Splits a transfer of `len_bytes` between disk sector `sector` and a
/// buffer made of the pages `buffer_gfns` (starting at the beginning of the
/// first) into requests of at most 11 segments, one segment per page.
///
/// # Errors
/// [`Error::BadLength`] if `len_bytes` is zero or not a multiple of 512;
/// [`Error::BufferTooSmall`] if the pages cannot hold it.
pub fn plan_io(sector: u64, len_bytes: u64, buffer_gfns: &[u64]) -> Result<Vec<IoChunk>, Error> {
    if len_bytes == 0 || !len_bytes.is_multiple_of(BLKIF_SECTOR_SIZE) {
        return Err(Error::BadLength);
    }
    let per_page = u64::from(BLKIF_SECTORS_PER_PAGE);
    let total = len_bytes / BLKIF_SECTOR_SIZE;
    let pages = total.div_ceil(per_page);
    if pages > buffer_gfns.len() as u64 {
        return Err(Error::BufferTooSmall);
    }
    let mut chunks = Vec::new();
    let mut left = total;
    let mut next = sector;
    for gfns in buffer_gfns[..pages as usize].chunks(MAX_SEGMENTS) {
        let chunk_sector = next;
        let segments = gfns
            .iter()
            .map(|&gfn| {
                let n = left.min(per_page);
                left -= n;
                next = next.wrapping_add(n);
                // n is 1..=8, so this fits a u8.
                Segment {
                    gfn,
                    first_sect: 0,
                    last_sect: (n - 1) as u8,
                }
            })
            .collect();
        chunks.push(IoChunk {
            sector: chunk_sector,
            segments,
        });
    }
    Ok(chunks)
}
