//! Block back-end core: serves one front-end's blkif ring (`io/blkif.h`)
//! from a [`Disk`], moving data through the front-end's grants.
//!
//! The service domain owns the real pieces: the mapped ring page (a
//! [`SharedPage`]), the disk, grant copies (`GNTTABOP_copy`) and the event
//! channel. This crate holds the policy in between, tested on the host:
//!
//! - [`BlkBack::process`] drains the request ring, validates every request
//!   completely before any disk or grant access, executes it and answers it
//!   on the ring; it returns whether to send the front-end an event;
//! - [`xenbus`] holds the xenstore side: the nodes the back-end publishes, the
//!   parsing of what the front-end publishes, and the reaction to its state;
//! - [`vdev`] turns a disk's configured name (`xvda`, `hda`, ...) into the
//!   virtual device number the front-end finds under `device/vbd/`.
//!
//! Everything the front-end writes is hostile. A malformed request is
//! answered with `BLKIF_RSP_ERROR` (or `BLKIF_RSP_EOPNOTSUPP` for an
//! operation this back-end does not offer) and the ring keeps going; only a
//! broken ring index ([`Fatal`]) ends the connection.

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

extern crate alloc;

#[cfg(test)]
mod tests;
pub mod vdev;
pub mod xenbus;

use alloc::vec::Vec;
use core::fmt;

use guest_abi::GrantRef;
use guest_abi::io::blkif::{
    BLKIF_MAX_SEGMENTS_PER_REQUEST, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_READ, BLKIF_OP_WRITE,
    BLKIF_OP_WRITE_BARRIER, BLKIF_RING_SIZE, BLKIF_RSP_EOPNOTSUPP, BLKIF_RSP_ERROR, BLKIF_RSP_OKAY,
    BLKIF_SECTORS_PER_PAGE, BlkifRequest, BlkifResponse,
};
use guest_abi::io::ring::{BackRing, RingError, SharedPage};

/// Bytes per sector on the wire and on every [`Disk`].
pub const SECTOR_SIZE: usize = 512;

/// Most requests one [`BlkBack::process`] call handles before it returns with
/// [`Work::more`] set, so that a front-end refilling its ring as fast as it is
/// drained cannot keep the service domain from its other front-ends.
pub const MAX_REQUESTS_PER_CALL: u32 = 2 * BLKIF_RING_SIZE;

/// The staging buffer's full size: the most data one request moves (11
/// pages). It is grown to this once, on the first request that needs data,
/// and never again.
pub const STAGING_MAX: usize = BLKIF_MAX_SEGMENTS_PER_REQUEST * 4096;

/// Why a [`Disk`] operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskError {
    /// The device reported an I/O error.
    Io,
    /// The sector range lies (partly) outside the device.
    OutOfRange,
    /// A write or flush reached a read-only device.
    ReadOnly,
}

impl fmt::Display for DiskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Io => "disk I/O error",
            Self::OutOfRange => "sector range outside the disk",
            Self::ReadOnly => "disk is read-only",
        })
    }
}

/// The storage behind one virtual block device, in 512-byte sectors.
///
/// Buffers passed in are always a whole number of sectors long, and the
/// back-end only asks for ranges that lie within [`sectors`](Self::sectors).
pub trait Disk {
    /// Size of the device in 512-byte sectors.
    fn sectors(&self) -> u64;
    /// Whether the device refuses writes.
    fn read_only(&self) -> bool;
    /// Physical block size in bytes (a multiple of 512), as advertised in
    /// xenstore; defaults to 512.
    fn physical_sector_size(&self) -> u32 {
        512
    }
    /// Reads `buf.len() / 512` sectors starting at `sector` into `buf`.
    ///
    /// # Errors
    /// [`DiskError`] if the device could not deliver the data.
    fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), DiskError>;
    /// Writes `data` (a whole number of sectors) starting at `sector`. When
    /// this returns `Ok`, the back-end tells the front-end the write is done.
    ///
    /// # Errors
    /// [`DiskError`] if the data could not be written.
    fn write(&mut self, sector: u64, data: &[u8]) -> Result<(), DiskError>;
    /// Makes every write that returned before this call durable.
    ///
    /// # Errors
    /// [`DiskError`] if the device could not make them durable.
    fn flush(&mut self) -> Result<(), DiskError>;
}

/// A grant reference that does not (or no longer) lets the back-end reach the
/// front-end's page: unknown, revoked, or without the needed access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadGrant;

impl fmt::Display for BadGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("bad or revoked grant")
    }
}

/// A byte range of one granted page: `len` bytes from `offset`, with
/// `offset + len <= PAGE_SIZE` always.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GrantSpan {
    /// The front-end's grant of the page.
    pub gref: GrantRef,
    /// First byte within the page.
    pub offset: usize,
    /// Bytes to copy.
    pub len: usize,
}

/// Copies between the front-end's granted pages and local memory (in the
/// service domain: `GNTTABOP_copy`).
///
/// The back-end never asks for a range crossing the end of a page. The span
/// methods exist so that an implementation can batch a whole request into one
/// hypercall; their defaults copy span by span.
pub trait GrantIo {
    /// Copies `buf.len()` bytes from the granted page `gref`, starting at
    /// `offset`, into `buf`.
    ///
    /// # Errors
    /// [`BadGrant`] if the grant cannot be read.
    fn read(&mut self, gref: GrantRef, offset: usize, buf: &mut [u8]) -> Result<(), BadGrant>;
    /// Copies `data` into the granted page `gref`, starting at `offset`.
    ///
    /// # Errors
    /// [`BadGrant`] if the grant cannot be written.
    fn write(&mut self, gref: GrantRef, offset: usize, data: &[u8]) -> Result<(), BadGrant>;
    /// Fills `buf` from `spans` in order; `buf.len()` is the spans' total
    /// length.
    ///
    /// # Errors
    /// [`BadGrant`] if any span's grant cannot be read (`buf` is then
    /// partly filled).
    fn gather(&mut self, spans: &[GrantSpan], buf: &mut [u8]) -> Result<(), BadGrant> {
        let mut rest = buf;
        for s in spans {
            let (head, tail) = rest.split_at_mut_checked(s.len).ok_or(BadGrant)?;
            self.read(s.gref, s.offset, head)?;
            rest = tail;
        }
        Ok(())
    }
    /// Copies `data` out to `spans` in order; `data.len()` is the spans'
    /// total length.
    ///
    /// # Errors
    /// [`BadGrant`] if any span's grant cannot be written (earlier spans
    /// may already hold their data).
    fn scatter(&mut self, spans: &[GrantSpan], data: &[u8]) -> Result<(), BadGrant> {
        let mut rest = data;
        for s in spans {
            let (head, tail) = rest.split_at_checked(s.len).ok_or(BadGrant)?;
            self.write(s.gref, s.offset, head)?;
            rest = tail;
        }
        Ok(())
    }
}

/// What the back-end tells the front-end about the device, fixed for the
/// life of the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Size in 512-byte sectors.
    pub sectors: u64,
    /// Writes are refused.
    pub read_only: bool,
    /// Physical block size in bytes.
    pub physical_sector_size: u32,
}

impl DeviceInfo {
    /// The device information of `disk`.
    pub fn of<D: Disk + ?Sized>(disk: &D) -> Self {
        Self {
            sectors: disk.sectors(),
            read_only: disk.read_only(),
            physical_sector_size: disk.physical_sector_size(),
        }
    }
}

/// Running counters of one connection (wrapping).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Requests answered.
    pub requests: u64,
    /// Reads completed.
    pub reads: u64,
    /// Writes completed (barrier writes included).
    pub writes: u64,
    /// Flushes completed (barriers included).
    pub flushes: u64,
    /// Sectors read and delivered to the front-end.
    pub sectors_read: u64,
    /// Sectors written to the disk.
    pub sectors_written: u64,
    /// Requests refused as malformed, out of range or writing a read-only
    /// device.
    pub invalid: u64,
    /// Requests refused with `BLKIF_RSP_EOPNOTSUPP`.
    pub unsupported: u64,
    /// Requests failed on a grant copy.
    pub grant_errors: u64,
    /// Requests failed by the disk.
    pub disk_errors: u64,
    /// Requests failed because the service domain could not allocate their
    /// staging buffer (answered `BLKIF_RSP_ERROR`; nothing panics).
    pub alloc_failures: u64,
}

/// A broken ring: the caller must disconnect the front-end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fatal {
    /// The front-end's request producer index ran past the ring.
    RingOverrun,
    /// A response had no slot. Cannot happen while the back-end is the only
    /// writer of its private indices; reported rather than assumed.
    NoResponseSlot,
}

impl From<RingError> for Fatal {
    fn from(e: RingError) -> Self {
        match e {
            RingError::Overrun => Self::RingOverrun,
        }
    }
}

impl Fatal {
    /// What happened, for the log.
    #[must_use]
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::RingOverrun => "front-end's request producer index ran past the ring",
            Self::NoResponseSlot => "no ring slot for a response",
        }
    }
}

impl fmt::Display for Fatal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The outcome of one [`BlkBack::process`] call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Work {
    /// Send the front-end an event: it asked to hear of these responses.
    pub notify: bool,
    /// Requests answered by this call.
    pub handled: u32,
    /// The call stopped at [`MAX_REQUESTS_PER_CALL`] without the final check
    /// for requests: call `process` again soon, without waiting for an event.
    pub more: bool,
    /// The call stopped because the heap had no room for the staging
    /// buffer ([`BlkBack::process_gated`]): the requests wait in the ring;
    /// call again once memory may have been freed.
    pub held: bool,
}

/// The back-end of one connected front-end: its ring and device information.
pub struct BlkBack<P: SharedPage> {
    ring: BackRing<P, BlkifRequest, BlkifResponse>,
    info: DeviceInfo,
    stats: Stats,
    /// Reused staging buffer for one request's data (at most 44 KiB).
    buf: Vec<u8>,
}

/// A request that passed validation: what to do, and nothing left to check.
enum Plan {
    Read(Transfer),
    Write(Transfer),
    /// A barrier write: write, then flush, then answer.
    WriteFlush(Transfer),
    Flush,
}

/// The data part of a validated read or write.
struct Transfer {
    sector: u64,
    spans: [GrantSpan; BLKIF_MAX_SEGMENTS_PER_REQUEST],
    count: usize,
    bytes: usize,
}

impl Transfer {
    fn spans(&self) -> &[GrantSpan] {
        self.spans.get(..self.count).unwrap_or(&[])
    }
}

/// Why a request is refused before anything is done.
enum Refusal {
    Invalid,
    Unsupported,
}

/// Why an accepted request failed.
enum Failure {
    Grant,
    Disk,
    NoMemory,
}

impl From<BadGrant> for Failure {
    fn from(_: BadGrant) -> Self {
        Self::Grant
    }
}

impl From<DiskError> for Failure {
    fn from(_: DiskError) -> Self {
        Self::Disk
    }
}

/// Checks a request against the protocol and the device, copying its
/// segments into a [`Plan`]. Never touches the disk or grants.
fn plan(req: &BlkifRequest, info: &DeviceInfo) -> Result<Plan, Refusal> {
    let writable = || {
        if info.read_only {
            Err(Refusal::Invalid)
        } else {
            Ok(())
        }
    };
    match req.operation {
        BLKIF_OP_READ => Ok(Plan::Read(transfer(req, info)?)),
        BLKIF_OP_WRITE => {
            writable()?;
            Ok(Plan::Write(transfer(req, info)?))
        }
        BLKIF_OP_WRITE_BARRIER if req.nr_segments == 0 => Ok(Plan::Flush),
        BLKIF_OP_WRITE_BARRIER => {
            writable()?;
            Ok(Plan::WriteFlush(transfer(req, info)?))
        }
        // A flush carries no data; a segment count beyond what any request
        // may hold is refused (as Linux's blkback does).
        BLKIF_OP_FLUSH_DISKCACHE
            if usize::from(req.nr_segments) > BLKIF_MAX_SEGMENTS_PER_REQUEST =>
        {
            Err(Refusal::Invalid)
        }
        BLKIF_OP_FLUSH_DISKCACHE => Ok(Plan::Flush),
        _ => Err(Refusal::Unsupported),
    }
}

/// Validates the segments and sector range of a read or write.
fn transfer(req: &BlkifRequest, info: &DeviceInfo) -> Result<Transfer, Refusal> {
    let count = usize::from(req.nr_segments);
    if count == 0 || count > BLKIF_MAX_SEGMENTS_PER_REQUEST {
        return Err(Refusal::Invalid);
    }
    let mut spans = [GrantSpan::default(); BLKIF_MAX_SEGMENTS_PER_REQUEST];
    let mut sectors: usize = 0;
    for (span, seg) in spans.iter_mut().zip(&req.seg).take(count) {
        if seg.first_sect > seg.last_sect || seg.last_sect >= BLKIF_SECTORS_PER_PAGE {
            return Err(Refusal::Invalid);
        }
        // At most 8 sectors per segment and 11 segments: no overflow.
        let n = usize::from(seg.last_sect - seg.first_sect) + 1;
        *span = GrantSpan {
            gref: GrantRef(seg.gref),
            offset: usize::from(seg.first_sect) * SECTOR_SIZE,
            len: n * SECTOR_SIZE,
        };
        sectors += n;
    }
    let total = u64::try_from(sectors).map_err(|_| Refusal::Invalid)?;
    let end = req
        .sector_number
        .checked_add(total)
        .ok_or(Refusal::Invalid)?;
    if end > info.sectors {
        return Err(Refusal::Invalid);
    }
    Ok(Transfer {
        sector: req.sector_number,
        spans,
        count,
        bytes: sectors * SECTOR_SIZE,
    })
}

/// Sizes the staging buffer for `x`, reusing its allocation.
fn staging<'a>(buf: &'a mut Vec<u8>, x: &Transfer) -> Result<&'a mut [u8], Failure> {
    // Grown (zeroed) once to its full size (11 pages), never cleared again: every byte of the slice handed out is
    // overwritten (by the disk read or the gather) before anything is
    // copied out of it, and a failure on the way copies nothing out. The
    // growth is a fallible allocation: a service domain short of memory
    // fails this request, it does not panic.
    if buf.len() < x.bytes {
        let full = STAGING_MAX.max(x.bytes);
        buf.try_reserve_exact(full - buf.len())
            .map_err(|_| Failure::NoMemory)?;
        buf.resize(full, 0);
    }
    buf.get_mut(..x.bytes).ok_or(Failure::NoMemory)
}

/// Reads the disk segment by segment, in disk order, then copies the whole
/// request to the front-end's pages.
fn do_read<D: Disk + ?Sized, G: GrantIo + ?Sized>(
    buf: &mut Vec<u8>,
    x: &Transfer,
    disk: &mut D,
    grants: &mut G,
) -> Result<(), Failure> {
    // The segments name consecutive sectors: one disk read for all of
    // them, then one scatter into the front-end's pages.
    let data = staging(buf, x)?;
    disk.read(x.sector, data)?;
    grants.scatter(x.spans(), data)?;
    Ok(())
}

/// Copies all of the request's data out of the front-end's pages, and only
/// then writes it to the disk: a bad grant anywhere writes nothing.
fn do_write<D: Disk + ?Sized, G: GrantIo + ?Sized>(
    buf: &mut Vec<u8>,
    x: &Transfer,
    disk: &mut D,
    grants: &mut G,
) -> Result<(), Failure> {
    let data = staging(buf, x)?;
    grants.gather(x.spans(), data)?;
    disk.write(x.sector, data)?;
    Ok(())
}

impl<P: SharedPage> BlkBack<P> {
    /// Attaches to the front-end's initialised ring page, serving a device
    /// described by `info` (see [`DeviceInfo::of`]).
    pub fn new(page: P, info: DeviceInfo) -> Self {
        Self {
            ring: BackRing::new(page),
            info,
            stats: Stats::default(),
            buf: Vec::new(),
        }
    }

    /// The device information requests are checked against.
    #[must_use]
    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    /// The connection's counters.
    #[must_use]
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The ring.
    #[must_use]
    pub fn ring(&self) -> &BackRing<P, BlkifRequest, BlkifResponse> {
        &self.ring
    }

    /// Memory this connection holds for requests: its one staging buffer,
    /// never more than the largest request (11 pages), however many
    /// requests the front-end publishes or leaves unanswered.
    #[must_use]
    pub fn buffer_bytes(&self) -> usize {
        self.buf.capacity()
    }

    /// Serves every request the front-end has published, in ring order, and
    /// publishes one response per request (same `id` and `operation`).
    ///
    /// Before returning it asks to be notified of the next request and looks
    /// once more (`RING_FINAL_CHECK_FOR_REQUESTS`), so a request published
    /// meanwhile is served now rather than missed; a caller may therefore
    /// sleep until the next event unless [`Work::more`] is set. A write is
    /// answered only after [`Disk::write`] returned, a flush or barrier only
    /// after [`Disk::flush`] returned.
    ///
    /// # Errors
    /// [`Fatal`] if the ring indices are broken: disconnect the front-end.
    /// Every problem with a request itself is answered on the ring instead.
    pub fn process<D: Disk + ?Sized, G: GrantIo + ?Sized>(
        &mut self,
        disk: &mut D,
        grants: &mut G,
    ) -> Result<Work, Fatal> {
        self.process_gated(disk, grants, &|_| true)
    }

    /// [`BlkBack::process`], taking a request from the ring only if it can
    /// be served without an allocation the heap has no room for: until the
    /// staging buffer has its full size ([`STAGING_MAX`]), `room(bytes)`
    /// must say the heap can give that buffer. If it cannot, no request is
    /// taken: they wait in the ring (back-pressure) and [`Work::held`] is
    /// set. Once the buffer is grown, serving allocates nothing.
    ///
    /// # Errors
    /// As [`BlkBack::process`].
    pub fn process_gated<D: Disk + ?Sized, G: GrantIo + ?Sized>(
        &mut self,
        disk: &mut D,
        grants: &mut G,
        room: &dyn Fn(usize) -> bool,
    ) -> Result<Work, Fatal> {
        let mut work = Work::default();
        loop {
            while work.handled < MAX_REQUESTS_PER_CALL {
                if self.buf.len() < STAGING_MAX
                    && self.ring.unconsumed_requests()? > 0
                    && !room(STAGING_MAX)
                {
                    work.held = true;
                    work.notify |= self.ring.push_responses_and_check_notify();
                    return Ok(work);
                }
                let Some(req) = self.ring.consume_request()? else {
                    break;
                };
                let status = self.serve(&req, disk, grants);
                let rsp = BlkifResponse {
                    id: req.id,
                    operation: req.operation,
                    status,
                    ..BlkifResponse::default()
                };
                self.ring
                    .push_response(&rsp)
                    .map_err(|_| Fatal::NoResponseSlot)?;
                self.stats.requests = self.stats.requests.wrapping_add(1);
                work.handled += 1;
            }
            work.notify |= self.ring.push_responses_and_check_notify();
            if work.handled >= MAX_REQUESTS_PER_CALL {
                work.more = true;
                return Ok(work);
            }
            if !self.ring.final_check_for_requests() {
                return Ok(work);
            }
        }
    }

    /// Validates and executes one request (already copied out of the ring),
    /// returning its `BLKIF_RSP_*` status.
    fn serve<D: Disk + ?Sized, G: GrantIo + ?Sized>(
        &mut self,
        req: &BlkifRequest,
        disk: &mut D,
        grants: &mut G,
    ) -> i16 {
        let s = &mut self.stats;
        let plan = match plan(req, &self.info) {
            Ok(p) => p,
            Err(Refusal::Invalid) => {
                s.invalid = s.invalid.wrapping_add(1);
                return BLKIF_RSP_ERROR;
            }
            Err(Refusal::Unsupported) => {
                s.unsupported = s.unsupported.wrapping_add(1);
                return BLKIF_RSP_EOPNOTSUPP;
            }
        };
        let buf = &mut self.buf;
        let result = match &plan {
            Plan::Read(x) => do_read(buf, x, disk, grants),
            Plan::Write(x) => do_write(buf, x, disk, grants),
            Plan::WriteFlush(x) => do_write(buf, x, disk, grants).and_then(|()| Ok(disk.flush()?)),
            Plan::Flush => disk.flush().map_err(Failure::from),
        };
        match result {
            Ok(()) => {
                let sectors = |x: &Transfer| (x.bytes / SECTOR_SIZE) as u64;
                match &plan {
                    Plan::Read(x) => {
                        s.reads = s.reads.wrapping_add(1);
                        s.sectors_read = s.sectors_read.wrapping_add(sectors(x));
                    }
                    Plan::Write(x) | Plan::WriteFlush(x) => {
                        s.writes = s.writes.wrapping_add(1);
                        s.sectors_written = s.sectors_written.wrapping_add(sectors(x));
                    }
                    Plan::Flush => {}
                }
                if matches!(plan, Plan::WriteFlush(_) | Plan::Flush) {
                    s.flushes = s.flushes.wrapping_add(1);
                }
                BLKIF_RSP_OKAY
            }
            Err(Failure::Grant) => {
                s.grant_errors = s.grant_errors.wrapping_add(1);
                BLKIF_RSP_ERROR
            }
            Err(Failure::Disk) => {
                s.disk_errors = s.disk_errors.wrapping_add(1);
                BLKIF_RSP_ERROR
            }
            Err(Failure::NoMemory) => {
                s.alloc_failures = s.alloc_failures.wrapping_add(1);
                BLKIF_RSP_ERROR
            }
        }
    }
}
