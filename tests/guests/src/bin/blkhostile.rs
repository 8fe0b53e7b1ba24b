//! blkhostile: a block front-end that breaks the blkif protocol on purpose,
//! to show that the back-end in the service domain answers every bad
//! request on the ring and keeps serving, and that only a broken ring index
//! ends the connection (and only this one: another guest's disk I/O, in the
//! same scenario, goes on).
//!
//! It connects like blkclient (xenstore, grant table, xenbus handshake) but
//! keeps the raw ring ([`FrontRing`]) instead of `BlkDevice`, which would
//! refuse to send anything invalid. Then, one case after another, each
//! followed by a valid write and read-back that must succeed:
//!
//! 1. garbage: unknown operations, 0/12/200 segments, `last_sect` 8 and 9,
//!    `first_sect > last_sect`, a bad segment after a good one, and two
//!    full rings of random requests whose expected status is computed from
//!    the protocol;
//! 2. sectors outside the disk: at its size, straddling its end, near
//!    `u64::MAX` (the sum overflows); the last sector itself is readable;
//! 3. bad grant references: never granted, granted to another domain,
//!    beyond the grant table, read-only for a read, one bad among good ones
//!    (nothing may be written);
//! 4. revoked grants: revoked before publishing, and revoked right after
//!    publishing (the disk must match whichever status came back);
//! 5. a request rewritten in its ring slot after being published and
//!    notified: exactly one response, for an id we used, and the disk holds
//!    one whole version (see [`rewrite_case`]);
//! 6. last, a producer index 1000 past the ring: the back-end must drop
//!    this front-end (no response, ever again).
//!
//! `other=N` on the command line names the domain the "granted to another
//! domain" reference is granted to (the well-behaved guest).
#![no_std]
#![no_main]

extern crate alloc;

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, Ordering};
use pv_guest_kernel::{DomId, GrantRef};

use blkfront::device::Buffer;
use blkfront::{BlkifRequest, BlkifResponse, FrontRing, SharedPage};
use guest_abi::io::blkif::{
    BLKIF_OP_DISCARD, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_INDIRECT, BLKIF_OP_READ,
    BLKIF_OP_RESERVED_1, BLKIF_OP_WRITE, BLKIF_OP_WRITE_BARRIER, BLKIF_RING_SIZE,
    BLKIF_RSP_EOPNOTSUPP, BLKIF_RSP_ERROR, BLKIF_RSP_OKAY, BlkifRequestSegment,
};
use pv_guest_kernel::page::{self, MappedPage};
use pv_guest_kernel::xenbus::{self as xb, Store, XenbusState};
use pv_guest_kernel::xenstore::NO_TX;
use pv_guest_kernel::{StartInfo, events, gnttab, println, test::Reporter, time, xenstore};

type Ring = FrontRing<MappedPage, BlkifRequest, BlkifResponse>;

/// Byte offsets in the shared ring page (`io/ring.h`).
const REQ_PROD: usize = 0;
const RSP_PROD: usize = 8;
const ENTRIES: usize = 64;
const ENTRY_SIZE: usize = 112;

const MS: u64 = 1_000_000;
/// How long a request may take to be answered before we call it lost.
const ANSWER_NS: u64 = 30_000 * MS;
/// Where the valid "still alive" write and read go.
const ALIVE_SECTOR: u64 = 2048;
/// Where the rewrite case writes.
const REWRITE_SECTOR: u64 = 4096;
/// Where the multi-segment and revocation cases check that nothing was written.
const GUARD_SECTOR: u64 = 6144;

/// Set by the ring's event channel.
static EVENT: AtomicBool = AtomicBool::new(false);

fn on_event(_port: pv_guest_kernel::Port) {
    EVENT.store(true, Ordering::SeqCst);
}

/// Byte `i` of a page filled for `seed`: never all-zero, different per seed.
fn pattern(seed: u64, i: usize) -> u8 {
    ((i as u64)
        .wrapping_mul(7)
        .wrapping_add(seed.wrapping_mul(13))
        % 251) as u8
        | 1
}

/// xorshift64*: reproducible garbage.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
}

/// A read or write request over `(gref, first_sect, last_sect)` segments;
/// `nr_segments` is the number given, whatever it is.
fn req(op: u8, sector: u64, segs: &[(u32, u8, u8)]) -> BlkifRequest {
    let mut r = BlkifRequest {
        operation: op,
        nr_segments: segs.len() as u8,
        sector_number: sector,
        ..BlkifRequest::default()
    };
    for (dst, &(gref, first_sect, last_sect)) in r.seg.iter_mut().zip(segs) {
        *dst = BlkifRequestSegment {
            gref,
            first_sect,
            last_sect,
            _pad: 0,
        };
    }
    r
}

/// The wire bytes of a request (`blkif_request_t`, little-endian).
fn wire(r: &BlkifRequest) -> [u8; ENTRY_SIZE] {
    let mut b = [0u8; ENTRY_SIZE];
    b[0] = r.operation;
    b[1] = r.nr_segments;
    b[2..4].copy_from_slice(&r.handle.to_le_bytes());
    b[4..8].copy_from_slice(&r._pad.to_le_bytes());
    b[8..16].copy_from_slice(&r.id.to_le_bytes());
    b[16..24].copy_from_slice(&r.sector_number.to_le_bytes());
    for (i, s) in r.seg.iter().enumerate() {
        let o = 24 + 8 * i;
        b[o..o + 4].copy_from_slice(&s.gref.to_le_bytes());
        b[o + 4] = s.first_sect;
        b[o + 5] = s.last_sect;
        b[o + 6..o + 8].copy_from_slice(&s._pad.to_le_bytes());
    }
    b
}

/// The status this back-end must give a request whose sector lies beyond
/// any disk (bit 63 set), as `blkif.h` and blkback's documentation define
/// it. (A flush here ignores its segment count; Linux's blkback would
/// refuse one with more than 11.)
fn expected_status(r: &BlkifRequest) -> i16 {
    match r.operation {
        // No segment count or range can make these valid that far out.
        BLKIF_OP_READ | BLKIF_OP_WRITE => BLKIF_RSP_ERROR,
        // A barrier without data is a flush; with data, a write (refused).
        BLKIF_OP_WRITE_BARRIER if r.nr_segments == 0 => BLKIF_RSP_OKAY,
        BLKIF_OP_WRITE_BARRIER => BLKIF_RSP_ERROR,
        // A flush carries no data: its segments are not looked at, but a
        // count beyond 11 is refused.
        BLKIF_OP_FLUSH_DISKCACHE if usize::from(r.nr_segments) > 11 => BLKIF_RSP_ERROR,
        BLKIF_OP_FLUSH_DISKCACHE => BLKIF_RSP_OKAY,
        _ => BLKIF_RSP_EOPNOTSUPP,
    }
}

fn status_name(s: i16) -> &'static str {
    match s {
        BLKIF_RSP_OKAY => "OKAY",
        BLKIF_RSP_ERROR => "ERROR",
        BLKIF_RSP_EOPNOTSUPP => "EOPNOTSUPP",
        _ => "?",
    }
}

/// One request of a batch, the step that reports it and the status the
/// back-end must give it.
struct Ask {
    step: String,
    req: BlkifRequest,
    want: i16,
}

fn ask(step: &str, req: BlkifRequest, want: i16) -> Ask {
    Ask {
        step: String::from(step),
        req,
        want,
    }
}

/// The misbehaving front-end: the raw ring, its event channel and the
/// pages it grants.
struct Hostile {
    ring: Ring,
    ring_ref: u32,
    port: u32,
    backend: u16,
    handle: u16,
    sectors: u64,
    next_id: u64,
    /// Data pages: 0 = valid write source, 1 = read target, 2 = junk (0xEE)
    /// for refused writes, 3/4 = the two versions of the rewrite case,
    /// 5 = guard data, 6 = the page whose grant gets revoked.
    pages: Buffer,
    frames: Vec<u64>,
    /// Lasting grants of pages 0..=5 (read-only except page 1).
    grefs: [u32; 6],
    seed: u64,
}

impl Hostile {
    fn page(&self, i: usize) -> &[u8] {
        &self.pages.bytes()[i * 4096..(i + 1) * 4096]
    }

    fn fill(&mut self, i: usize, seed: u64) {
        for (k, b) in self.pages.bytes_mut()[i * 4096..(i + 1) * 4096]
            .iter_mut()
            .enumerate()
        {
            *b = pattern(seed, k);
        }
    }

    fn holds(&self, i: usize, seed: u64) -> bool {
        self.page(i)
            .iter()
            .enumerate()
            .all(|(k, &b)| b == pattern(seed, k))
    }

    fn fresh_id(&mut self) -> u64 {
        self.next_id += 1;
        0xB10C_0000_0000_0000 | self.next_id
    }

    /// The slot's byte offset for free-running index `idx`.
    fn slot(idx: u32) -> usize {
        ENTRIES + (idx % BLKIF_RING_SIZE) as usize * ENTRY_SIZE
    }

    /// Publishes what was pushed and always notifies (whatever `req_event`
    /// says: a hostile front-end kicks as it likes).
    fn publish(&mut self) {
        let _ = self.ring.push_requests_and_check_notify();
        let _ = events::send(pv_guest_kernel::Port(self.port));
    }

    /// Waits (blocking on the event channel, bounded by `timeout`) until `n`
    /// responses were consumed. `Err` if the back-end's `rsp_prod` is
    /// implausible, which includes more responses than requests.
    fn collect(&mut self, n: usize, timeout: u64) -> Result<Vec<BlkifResponse>, String> {
        let deadline = time::now_ns() + timeout;
        let mut out = Vec::new();
        while out.len() < n {
            match self.ring.consume_response() {
                Ok(Some(r)) => {
                    out.push(r);
                    continue;
                }
                Ok(None) => {}
                Err(e) => return Err(format!("ring broken after {} responses: {e}", out.len())),
            }
            if time::now_ns() >= deadline {
                break;
            }
            let _ = guest_abi::hypercall::set_timer_op(deadline);
            events::disable();
            if EVENT.swap(false, Ordering::SeqCst)
                || self.ring.final_check_for_responses()
                || time::now_ns() >= deadline
            {
                events::enable();
                continue;
            }
            // Re-enables delivery atomically: no event is lost.
            let _ = guest_abi::hypercall::sched_block();
        }
        Ok(out)
    }

    /// Sends `reqs` in one go (ids replaced by fresh ones) and returns the
    /// answers, which must come in order, one per request, each echoing its
    /// request's id and operation.
    fn batch(&mut self, reqs: &[BlkifRequest]) -> Result<Vec<BlkifResponse>, String> {
        let mut sent = Vec::new();
        for r in reqs {
            let mut r = *r;
            r.id = self.fresh_id();
            r.handle = self.handle;
            self.ring.push_request(&r).map_err(|e| format!("{e}"))?;
            sent.push(r);
        }
        self.publish();
        let start = time::now_ns();
        let got = self.collect(sent.len(), ANSWER_NS)?;
        if got.len() < sent.len() {
            return Err(format!(
                "{} of {} responses within {} s",
                got.len(),
                sent.len(),
                ANSWER_NS / 1_000_000_000
            ));
        }
        for (q, a) in sent.iter().zip(&got) {
            if a.id != q.id || a.operation != q.operation {
                return Err(format!(
                    "response {a:?} does not answer id {:#x} op {}",
                    q.id, q.operation
                ));
            }
        }
        println!(
            "blkhostile: {} requests answered in {} ms",
            sent.len(),
            (time::now_ns() - start) / MS
        );
        Ok(got)
    }

    /// A batch where each request is a step that must get its status;
    /// returns the statuses (`None` for all if the batch failed).
    fn expect(&mut self, t: &mut Reporter, asks: &[Ask]) -> Option<Vec<i16>> {
        let reqs: Vec<BlkifRequest> = asks.iter().map(|a| a.req).collect();
        match self.batch(&reqs) {
            Ok(got) => {
                for (a, r) in asks.iter().zip(&got) {
                    println!(
                        "blkhostile: {}: back-end answered {} ({})",
                        a.step,
                        r.status,
                        status_name(r.status)
                    );
                    t.check(
                        &a.step,
                        r.status == a.want,
                        format_args!(
                            "status {} ({}), expected {} ({})",
                            r.status,
                            status_name(r.status),
                            a.want,
                            status_name(a.want)
                        ),
                    );
                }
                Some(got.iter().map(|r| r.status).collect())
            }
            Err(e) => {
                for a in asks {
                    t.fail(&a.step, format_args!("{e}"));
                }
                None
            }
        }
    }

    /// Writing page `i` (granted as `grefs[i]`) to 8 sectors at `sector`.
    fn write_of(&self, i: usize, sector: u64) -> BlkifRequest {
        req(BLKIF_OP_WRITE, sector, &[(self.grefs[i], 0, 7)])
    }

    /// Reading 8 sectors at `sector` into page 1.
    fn read_of(&self, sector: u64) -> BlkifRequest {
        req(BLKIF_OP_READ, sector, &[(self.grefs[1], 0, 7)])
    }

    /// Reads 8 sectors at `sector` into page 1; whether it was answered OKAY.
    fn read_back(&mut self, sector: u64) -> bool {
        let r = self.read_of(sector);
        matches!(self.batch(&[r]).as_deref(), Ok([a]) if a.status == BLKIF_RSP_OKAY)
    }

    /// The proof of service: a fresh pattern written and read back with
    /// valid requests, and no response left over from earlier.
    fn alive(&mut self, t: &mut Reporter, step: &str) {
        self.seed += 1;
        let seed = self.seed;
        self.fill(0, seed);
        let stray = self.ring.unconsumed_responses();
        let (w, r) = (self.write_of(0, ALIVE_SECTOR), self.read_of(ALIVE_SECTOR));
        let got = self.batch(&[w, r]);
        let statuses: Option<Vec<i16>> = got
            .as_ref()
            .ok()
            .map(|v| v.iter().map(|a| a.status).collect());
        let same = self.page(1) == self.page(0);
        t.check(
            step,
            stray == Ok(0)
                && statuses.as_deref() == Some(&[BLKIF_RSP_OKAY, BLKIF_RSP_OKAY])
                && same,
            format_args!("left over {stray:?}, answers {got:?}, read back intact {same}"),
        );
    }
}

/// Connects to the first virtual disk like `BlkDevice::connect`, but keeps
/// the raw ring. Returns the ring, its grant, the port, the back-end's
/// domain, the device handle, the disk size, our device directory and the
/// back-end's.
#[allow(clippy::type_complexity)]
fn connect(xs: &mut impl Store) -> Result<(Ring, u32, u32, u16, u16, u64, String, String), String> {
    let dev = xb::frontend_devices(xs, "vbd")
        .map_err(|e| format!("{e:?}"))?
        .into_iter()
        .next()
        .ok_or("no vbd")?;
    let peer = xb::read_backend(xs, &dev.dir).map_err(|e| format!("backend: {e:?}"))?;
    xb::wait_for_state(xs, &peer.path, XenbusState::InitWait)
        .map_err(|e| format!("InitWait: {e:?}"))?;
    let (page, mfn) = page::alloc_shared().map_err(|e| format!("ring page: {e:?}"))?;
    let ring = Ring::init(page);
    let ring_ref = gnttab::grant_access(peer.domid, mfn, false)
        .map(|g| g.0)
        .map_err(|e| format!("ring grant: {e:?}"))?;
    let port = events::alloc_unbound(peer.domid, on_event)
        .map(|p| p.0)
        .map_err(|e| format!("port: {e:?}"))?;
    let entries = blkfront::xenbus::frontend_entries(ring_ref, port);
    let nodes: Vec<(&str, &str)> = entries.iter().map(|(k, v)| (*k, v.as_str())).collect();
    xb::write_nodes(xs, &dev.dir, &nodes).map_err(|e| format!("nodes: {e:?}"))?;
    xb::switch_state(xs, &dev.dir, XenbusState::Initialised)
        .map_err(|e| format!("Initialised: {e:?}"))?;
    xb::wait_for_state(xs, &peer.path, XenbusState::Connected)
        .map_err(|e| format!("Connected: {e:?}"))?;
    let sectors = xs
        .read(NO_TX, &xb::join(&peer.path, "sectors"))
        .map_err(|e| format!("sectors: {e:?}"))?;
    let sectors: u64 = core::str::from_utf8(&sectors)
        .ok()
        .and_then(|s| s.trim_end_matches('\0').trim().parse().ok())
        .ok_or("sectors unreadable")?;
    xb::switch_state(xs, &dev.dir, XenbusState::Connected)
        .map_err(|e| format!("Connected: {e:?}"))?;
    let handle = dev.devid.parse::<u16>().unwrap_or(0);
    Ok((
        ring,
        ring_ref,
        port,
        peer.domid.0,
        handle,
        sectors,
        dev.dir,
        peer.path,
    ))
}

fn main(si: &'static StartInfo) {
    let mut t = Reporter::new();
    events::init().expect("events");
    time::init().expect("timer");
    gnttab::init(1).expect("grant table");
    let other: u16 = scenario_guests::arg(si, "other")
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let mut xs = xenstore::connect().expect("xenstore");
    let (ring, ring_ref, port, backend, handle, sectors, fe_dir, be_path) = match connect(&mut xs) {
        Ok(c) => c,
        Err(e) => {
            t.fail("connect", format_args!("{e}"));
            t.finish()
        }
    };
    events::enable();
    t.check(
        "connected",
        sectors >= 8192 && gnttab::in_use(GrantRef(ring_ref)),
        format_args!(
            "{sectors} sectors, ring mapped by the back-end: {}",
            gnttab::in_use(GrantRef(ring_ref))
        ),
    );
    println!(
        "blkhostile: raw ring connected to domain {backend}, {sectors} sectors, event channel {port}"
    );

    let pages = Buffer::new(7).expect("pages");
    let frames = pages.frames().expect("frames");
    let mut grefs = [0u32; 6];
    for (i, g) in grefs.iter_mut().enumerate() {
        *g = gnttab::grant_access(DomId(backend), frames[i], i != 1)
            .expect("grant")
            .0;
    }
    let mut h = Hostile {
        ring,
        ring_ref,
        port,
        backend,
        handle,
        sectors,
        next_id: 0,
        pages,
        frames,
        grefs,
        seed: 0,
    };
    for b in h.pages.bytes_mut()[2 * 4096..3 * 4096].iter_mut() {
        *b = 0xEE;
    }
    h.alive(&mut t, "alive-at-start");
    garbage(&mut t, &mut h);
    h.alive(&mut t, "alive-after-garbage");
    out_of_range(&mut t, &mut h);
    h.alive(&mut t, "alive-after-out-of-range");
    bad_grants(&mut t, &mut h, other);
    h.alive(&mut t, "alive-after-bad-grants");
    revoked(&mut t, &mut h);
    h.alive(&mut t, "alive-after-revoked");
    rewrite_case(&mut t, &mut h);
    h.alive(&mut t, "alive-after-rewrite");
    overrun(&mut t, &mut h, &mut xs, &fe_dir, &be_path);
    t.finish()
}

/// Writes guard data (page 5, seed `seed`) at `sector`, sends `bad` (which
/// must be refused) and reads the sectors back: they must still hold the
/// guard data.
fn nothing_written(
    t: &mut Reporter,
    h: &mut Hostile,
    step: &str,
    seed: u64,
    sector: u64,
    bad: BlkifRequest,
) {
    h.fill(5, seed);
    let reqs = [h.write_of(5, sector), bad, h.read_of(sector)];
    let got = h.batch(&reqs);
    let statuses: Option<Vec<i16>> = got
        .as_ref()
        .ok()
        .map(|v| v.iter().map(|a| a.status).collect());
    let intact = h.page(1) == h.page(5);
    if let Some(s) = &statuses {
        println!(
            "blkhostile: {step}: back-end answered {} ({}); guard data intact: {intact}",
            s[1],
            status_name(s[1])
        );
    }
    t.check(
        step,
        statuses.as_deref() == Some(&[BLKIF_RSP_OKAY, BLKIF_RSP_ERROR, BLKIF_RSP_OKAY]) && intact,
        format_args!("answers {got:?}, guard data intact {intact}"),
    );
}

/// Case 1: requests no back-end can execute, then whole rings of random
/// ones.
fn garbage(t: &mut Reporter, h: &mut Hostile) {
    let g = h.grefs[1];
    let one = [(g, 0u8, 7u8)];
    let mut asks = Vec::new();
    for (op, name) in [
        (BLKIF_OP_RESERVED_1, "garbage-op-reserved"),
        (BLKIF_OP_DISCARD, "garbage-op-discard"),
        (BLKIF_OP_INDIRECT, "garbage-op-indirect"),
        (7, "garbage-op-7"),
        (0x80, "garbage-op-128"),
        (0xff, "garbage-op-255"),
    ] {
        asks.push(ask(name, req(op, ALIVE_SECTOR, &one), BLKIF_RSP_EOPNOTSUPP));
    }
    asks.push(ask(
        "garbage-read-0-segments",
        req(BLKIF_OP_READ, ALIVE_SECTOR, &[]),
        BLKIF_RSP_ERROR,
    ));
    asks.push(ask(
        "garbage-write-0-segments",
        req(BLKIF_OP_WRITE, ALIVE_SECTOR, &[]),
        BLKIF_RSP_ERROR,
    ));
    for (n, name) in [
        (200u8, "garbage-read-200-segments"),
        (12, "garbage-read-12-segments"),
    ] {
        let mut r = req(BLKIF_OP_READ, ALIVE_SECTOR, &one);
        r.nr_segments = n;
        asks.push(ask(name, r, BLKIF_RSP_ERROR));
    }
    asks.push(ask(
        "garbage-last-sect-9",
        req(BLKIF_OP_READ, ALIVE_SECTOR, &[(g, 0, 9)]),
        BLKIF_RSP_ERROR,
    ));
    asks.push(ask(
        "garbage-last-sect-8",
        req(BLKIF_OP_READ, ALIVE_SECTOR, &[(g, 0, 8)]),
        BLKIF_RSP_ERROR,
    ));
    asks.push(ask(
        "garbage-first-after-last",
        req(BLKIF_OP_READ, ALIVE_SECTOR, &[(g, 5, 2)]),
        BLKIF_RSP_ERROR,
    ));
    let mut r = req(BLKIF_OP_WRITE_BARRIER, GUARD_SECTOR, &[(h.grefs[2], 0, 7)]);
    r.nr_segments = 200;
    asks.push(ask("garbage-barrier-200-segments", r, BLKIF_RSP_ERROR));
    h.expect(t, &asks);

    // A write whose second segment is invalid writes nothing, not even its
    // valid first segment.
    let bad = req(
        BLKIF_OP_WRITE,
        GUARD_SECTOR,
        &[(h.grefs[2], 0, 7), (h.grefs[2], 0, 9)],
    );
    nothing_written(
        t,
        h,
        "garbage-second-segment-bad-wrote-nothing",
        0x5A,
        GUARD_SECTOR,
        bad,
    );

    // Two full rings of random requests (every byte random but the sector,
    // which has bit 63 set so nothing can reach the disk), answered in
    // order, each with its id and operation echoed and the status the
    // protocol gives it.
    let mut rng = Rng(0x6A09_E667_F3BC_C908);
    let mut tally = [0u32; 3];
    for batch in 0..2 {
        let step = if batch == 0 {
            "garbage-random-ring-1"
        } else {
            "garbage-random-ring-2"
        };
        let mut sent = Vec::new();
        for k in 0..BLKIF_RING_SIZE {
            let operation = if k % 2 == 0 {
                rng.byte() % 8
            } else {
                rng.byte()
            };
            let mut r = BlkifRequest {
                operation,
                ..Default::default()
            };
            r.nr_segments = match rng.byte() % 4 {
                0 => 0,
                1 => 1 + rng.byte() % 11,
                _ => rng.byte(),
            };
            r.handle = rng.next() as u16;
            r._pad = rng.next() as u32;
            r.id = rng.next();
            r.sector_number = rng.next() | 1 << 63;
            for s in r.seg.iter_mut() {
                let v = rng.next();
                *s = BlkifRequestSegment {
                    gref: v as u32,
                    first_sect: (v >> 32) as u8 % 10,
                    last_sect: (v >> 40) as u8 % 10,
                    _pad: (v >> 48) as u16,
                };
            }
            // Mostly through the typed ring; every fourth one written byte
            // by byte over a placeholder, as raw memory.
            let idx = h.ring.req_prod_pvt();
            let pushed = if k % 4 == 3 {
                h.ring.push_request(&BlkifRequest::default())
            } else {
                h.ring.push_request(&r)
            };
            if pushed.is_err() {
                t.fail(step, format_args!("ring full at {k}"));
                return;
            }
            if k % 4 == 3 {
                h.ring.page().write_bytes(Hostile::slot(idx), &wire(&r));
            }
            sent.push(r);
        }
        h.publish();
        match h.collect(sent.len(), ANSWER_NS) {
            Ok(got) if got.len() == sent.len() => {
                let bad = sent.iter().zip(&got).position(|(q, a)| {
                    a.id != q.id || a.operation != q.operation || a.status != expected_status(q)
                });
                for a in &got {
                    match a.status {
                        BLKIF_RSP_OKAY => tally[0] += 1,
                        BLKIF_RSP_ERROR => tally[1] += 1,
                        _ => tally[2] += 1,
                    }
                }
                match bad {
                    None => t.ok(step),
                    Some(i) => t.fail(
                        step,
                        format_args!(
                            "request {:?} answered {:?}, expected status {}",
                            sent[i],
                            got[i],
                            expected_status(&sent[i])
                        ),
                    ),
                }
            }
            Ok(got) => t.fail(
                step,
                format_args!("{} of {} responses", got.len(), sent.len()),
            ),
            Err(e) => t.fail(step, format_args!("{e}")),
        }
    }
    println!(
        "blkhostile: random requests answered OKAY {}, ERROR {}, EOPNOTSUPP {}",
        tally[0], tally[1], tally[2]
    );
}

/// Case 2: sector ranges outside the disk, for reads and writes (writes of
/// the 0xEE page; the scenario checks the image: nothing lands past the
/// end of this guest's slice).
fn out_of_range(t: &mut Reporter, h: &mut Hostile) {
    let n = h.sectors;
    let (rd, wr) = (h.grefs[1], h.grefs[2]);
    let mut asks = Vec::new();
    for (name, sector, (f, l)) in [
        ("range-at-size", n, (0u8, 7u8)),
        ("range-straddling-end", n - 4, (0, 7)),
        ("range-u64max-3", u64::MAX - 3, (0, 7)),
        ("range-u64max-3-4-sectors", u64::MAX - 3, (4, 7)),
        ("range-u64max", u64::MAX, (7, 7)),
    ] {
        asks.push(ask(
            &format!("{name}-read"),
            req(BLKIF_OP_READ, sector, &[(rd, f, l)]),
            BLKIF_RSP_ERROR,
        ));
        asks.push(ask(
            &format!("{name}-write"),
            req(BLKIF_OP_WRITE, sector, &[(wr, f, l)]),
            BLKIF_RSP_ERROR,
        ));
    }
    // Eleven segments of 8 sectors from 80 before the end: 8 too many.
    asks.push(ask(
        "range-11-segments-past-end-write",
        req(BLKIF_OP_WRITE, n - 80, &[(wr, 0, 7); 11]),
        BLKIF_RSP_ERROR,
    ));
    // The last sector itself is there (and, never written, reads as zero).
    asks.push(ask(
        "range-last-sector-read",
        req(BLKIF_OP_READ, n - 1, &[(rd, 0, 0)]),
        BLKIF_RSP_OKAY,
    ));
    if h.expect(t, &asks)
        .is_some_and(|s| s.last() == Some(&BLKIF_RSP_OKAY))
    {
        let zero = h.page(1)[..512].iter().all(|&b| b == 0);
        t.check(
            "range-last-sector-untouched",
            zero,
            format_args!("the last sector holds data"),
        );
    }
}

/// Case 3: grant references the back-end cannot use.
fn bad_grants(t: &mut Reporter, h: &mut Hostile, other: u16) {
    // Never granted: far above what this guest ever allocates.
    let never = 400;
    let e = gnttab::entry(GrantRef(never));
    t.check(
        "grant-400-is-empty",
        e.map(|e| e.flags) == Ok(0),
        format_args!("{e:?}"),
    );
    let mut asks = Vec::new();
    asks.push(ask(
        "grant-never-granted-read",
        req(BLKIF_OP_READ, ALIVE_SECTOR, &[(never, 0, 7)]),
        BLKIF_RSP_ERROR,
    ));
    asks.push(ask(
        "grant-never-granted-write",
        req(BLKIF_OP_WRITE, GUARD_SECTOR, &[(never, 0, 7)]),
        BLKIF_RSP_ERROR,
    ));
    // A real, writable grant of a page, but to another domain.
    let foreign = gnttab::grant_access(DomId(other), h.frames[2], false).map(|g| g.0);
    match foreign {
        Ok(f) => {
            asks.push(ask(
                "grant-to-other-domain-read",
                req(BLKIF_OP_READ, ALIVE_SECTOR, &[(f, 0, 7)]),
                BLKIF_RSP_ERROR,
            ));
            asks.push(ask(
                "grant-to-other-domain-write",
                req(BLKIF_OP_WRITE, GUARD_SECTOR, &[(f, 0, 7)]),
                BLKIF_RSP_ERROR,
            ));
        }
        Err(e) => t.fail("grant-to-other-domain", format_args!("cannot grant: {e:?}")),
    }
    // Beyond our one-frame table (512 entries).
    for (gref, name) in [
        (512u32, "grant-512"),
        (100_000, "grant-100000"),
        (u32::MAX, "grant-u32max"),
    ] {
        asks.push(ask(
            &format!("{name}-read"),
            req(BLKIF_OP_READ, ALIVE_SECTOR, &[(gref, 0, 7)]),
            BLKIF_RSP_ERROR,
        ));
        asks.push(ask(
            &format!("{name}-write"),
            req(BLKIF_OP_WRITE, GUARD_SECTOR, &[(gref, 0, 7)]),
            BLKIF_RSP_ERROR,
        ));
    }
    // A read into a page granted read-only: the back-end may not write it.
    h.fill(0, 0xA11);
    asks.push(ask(
        "grant-readonly-for-read",
        req(BLKIF_OP_READ, ALIVE_SECTOR, &[(h.grefs[0], 0, 7)]),
        BLKIF_RSP_ERROR,
    ));
    h.expect(t, &asks);
    if let Ok(f) = foreign {
        let _ = gnttab::end_access(GrantRef(f));
    }
    let kept = h.holds(0, 0xA11);
    t.check(
        "grant-readonly-page-unchanged",
        kept,
        format_args!("the read-only page was written"),
    );

    // One bad reference among good ones: the whole write is refused and
    // nothing reaches the disk (the back-end gathers before it writes).
    let bad = req(
        BLKIF_OP_WRITE,
        GUARD_SECTOR,
        &[
            (h.grefs[2], 0, 7),
            (h.grefs[2], 0, 7),
            (never, 0, 7),
            (h.grefs[2], 0, 7),
        ],
    );
    nothing_written(
        t,
        h,
        "grant-one-bad-of-four-wrote-nothing",
        0x6B,
        GUARD_SECTOR,
        bad,
    );
}

/// Case 4: a grant revoked before the request is published, and one
/// revoked right after publishing (waking the back-end does not preempt
/// us, so it normally finds the grant gone; either outcome is allowed as
/// long as the disk agrees with the status).
fn revoked(t: &mut Reporter, h: &mut Hostile) {
    // Page 6 gets a fresh writable grant, then loses it. No other grant is
    // made until the reference has been used, so it is not reissued.
    h.fill(6, 0xDEAD);
    let gref = match gnttab::grant_access(DomId(h.backend), h.frames[6], false) {
        Ok(g) => g.0,
        Err(e) => {
            t.fail("revoked", format_args!("cannot grant: {e:?}"));
            return;
        }
    };
    let ended = gnttab::end_access(GrantRef(gref));
    let e = gnttab::entry(GrantRef(gref));
    t.check(
        "revoked-entry-cleared",
        ended.is_ok() && e.map(|e| e.flags) == Ok(0),
        format_args!("end_access {ended:?}, entry {e:?}"),
    );
    h.fill(5, 0x7C);
    let asks = [
        ask(
            "revoked-guard-write",
            h.write_of(5, GUARD_SECTOR),
            BLKIF_RSP_OKAY,
        ),
        ask(
            "revoked-write",
            req(BLKIF_OP_WRITE, GUARD_SECTOR, &[(gref, 0, 7)]),
            BLKIF_RSP_ERROR,
        ),
        ask(
            "revoked-read",
            req(BLKIF_OP_READ, ALIVE_SECTOR, &[(gref, 0, 7)]),
            BLKIF_RSP_ERROR,
        ),
        ask(
            "revoked-guard-read",
            h.read_of(GUARD_SECTOR),
            BLKIF_RSP_OKAY,
        ),
    ];
    h.expect(t, &asks);
    let page_kept = h.holds(6, 0xDEAD);
    let intact = h.page(1) == h.page(5);
    t.check(
        "revoked-nothing-moved",
        page_kept && intact,
        format_args!("page kept {page_kept}, guard data intact {intact}"),
    );

    // Revoked between publishing and the back-end's turn. The guard data
    // is still on the disk from above.
    let gref = match gnttab::grant_access(DomId(h.backend), h.frames[6], true) {
        Ok(g) => g.0,
        Err(e) => {
            t.fail("revoked-in-flight", format_args!("cannot grant: {e:?}"));
            return;
        }
    };
    let mut r = req(BLKIF_OP_WRITE, GUARD_SECTOR, &[(gref, 0, 7)]);
    r.id = h.fresh_id();
    r.handle = h.handle;
    let _ = h.ring.push_request(&r);
    h.publish();
    let ended = gnttab::end_access(GrantRef(gref));
    let got = h.collect(1, ANSWER_NS);
    let read = h.read_back(GUARD_SECTOR);
    let (old, new) = (
        read && h.page(1) == h.page(5),
        read && h.page(1) == h.page(6),
    );
    match got.as_deref() {
        Ok([a]) if a.id == r.id => {
            println!(
                "blkhostile: revoked-in-flight: end_access {ended:?}, back-end answered {} ({}), disk holds the {} data",
                a.status,
                status_name(a.status),
                if new {
                    "new"
                } else if old {
                    "old"
                } else {
                    "wrong"
                }
            );
            let consistent =
                (a.status == BLKIF_RSP_ERROR && old) || (a.status == BLKIF_RSP_OKAY && new);
            t.check(
                "revoked-in-flight-consistent",
                ended.is_ok() && consistent,
                format_args!(
                    "end_access {ended:?}, status {}, disk old {old} new {new}",
                    a.status
                ),
            );
        }
        other => t.fail("revoked-in-flight-consistent", format_args!("{other:?}")),
    }
}

/// Case 5: a request rewritten in its slot after it was published and the
/// back-end notified.
///
/// Version A writes page 3 to `REWRITE_SECTOR`; version B, written over it
/// byte by byte right after the notification, writes page 4 to the same
/// sectors under another id. The two differ only in the low byte of the
/// id and of the grant reference, so even a back-end that copied the slot
/// while it was half rewritten would see whole fields of A and B. Checked:
/// - exactly one response arrives, for id A or id B, status OKAY, and
///   nothing more (the next requests' answers follow in order);
/// - the 8 sectors then hold all of page 3 or all of page 4, never a mix;
/// - which version the back-end served is printed (normally B: waking the
///   back-end does not preempt us, so the rewrite lands first). Had the
///   back-end answered before the rewrite landed, our rewrite would have
///   overwritten its response in the shared slot; that is recognised
///   (the slot then holds B's first bytes) and accepted.
///
/// A second round rewrites a valid write into an invalid one (200
/// segments): the status must match the disk (OKAY and the data written,
/// or ERROR and the sectors unchanged).
fn rewrite_case(t: &mut Reporter, h: &mut Hostile) {
    h.fill(3, 0xAAAA);
    h.fill(4, 0xBBBB);
    let mut a = h.write_of(3, REWRITE_SECTOR);
    a.handle = h.handle;
    a.id = h.fresh_id() << 8 | 0xA1;
    let mut b = a;
    b.id = (a.id & !0xff) | 0xB2;
    b.seg[0].gref = h.grefs[4];
    if h.grefs[3] >> 8 != h.grefs[4] >> 8 {
        println!(
            "blkhostile: rewrite: references {} and {} differ beyond their low byte",
            h.grefs[3], h.grefs[4]
        );
    }
    let off = Hostile::slot(h.ring.req_prod_pvt());
    let _ = h.ring.push_request(&a);
    h.publish();
    let b_wire = wire(&b);
    h.ring.page().write_bytes(off, &b_wire);
    let got = h.collect(1, ANSWER_NS);
    let read = h.read_back(REWRITE_SECTOR);
    let holds = match read {
        true if h.page(1) == h.page(3) => "A",
        true if h.page(1) == h.page(4) => "B",
        true => "a mix",
        false => "unreadable",
    };
    match got.as_deref() {
        Ok([r]) => {
            let clobbered = r.id.to_le_bytes() == b_wire[..8] && r.operation == b_wire[8];
            let served = if r.id == a.id {
                "A"
            } else if r.id == b.id {
                "B"
            } else if clobbered {
                "(its response was overwritten by our rewrite)"
            } else {
                "neither"
            };
            println!(
                "blkhostile: rewrite: one response, for version {served}, status {} ({}); the disk holds version {holds}",
                r.status,
                status_name(r.status)
            );
            let status_ok = clobbered || r.status == BLKIF_RSP_OKAY;
            t.check(
                "rewrite-one-response",
                served != "neither" && status_ok && read,
                format_args!("response {r:?}, read back {read}"),
            );
            t.check(
                "rewrite-disk-holds-one-version",
                holds == "A" || holds == "B",
                format_args!("the sectors hold {holds}"),
            );
            if (served == "A" || served == "B") && served != holds {
                println!(
                    "blkhostile: rewrite: the back-end copied the slot mid-rewrite (id of {served}, data of {holds})"
                );
            }
        }
        other => t.fail("rewrite-one-response", format_args!("{other:?}")),
    }

    // A valid write rewritten into one with 200 segments.
    h.fill(5, 0x8D);
    let guard = h.batch(&[h.write_of(5, REWRITE_SECTOR)]);
    let mut a = h.write_of(3, REWRITE_SECTOR);
    a.handle = h.handle;
    a.id = h.fresh_id();
    let mut b = a;
    b.nr_segments = 200;
    let off = Hostile::slot(h.ring.req_prod_pvt());
    let _ = h.ring.push_request(&a);
    h.publish();
    h.ring.page().write_bytes(off, &wire(&b));
    let got = h.collect(1, ANSWER_NS);
    let read = h.read_back(REWRITE_SECTOR);
    let (old, new) = (
        read && h.page(1) == h.page(5),
        read && h.page(1) == h.page(3),
    );
    let guard_ok = matches!(guard.as_deref(), Ok([g]) if g.status == BLKIF_RSP_OKAY);
    match got.as_deref() {
        Ok([r]) if r.id == a.id => {
            println!(
                "blkhostile: rewrite-to-invalid: back-end answered {} ({}); the disk holds the {} data",
                r.status,
                status_name(r.status),
                if new {
                    "written"
                } else if old {
                    "previous"
                } else {
                    "wrong"
                }
            );
            let consistent =
                (r.status == BLKIF_RSP_ERROR && old) || (r.status == BLKIF_RSP_OKAY && new);
            t.check(
                "rewrite-to-invalid-consistent",
                guard_ok && consistent,
                format_args!("guard {guard:?}, status {}, old {old} new {new}", r.status),
            );
        }
        other => t.fail("rewrite-to-invalid-consistent", format_args!("{other:?}")),
    }
}

/// Case 6 (last): `req_prod` 1000 past `req_cons`. The back-end must drop
/// this front-end: it unmaps our ring (the hypervisor then clears the
/// grant's in-use flags, which we watch) without a response, and never
/// answers on it again.
fn overrun(t: &mut Reporter, h: &mut Hostile, xs: &mut impl Store, fe_dir: &str, be_path: &str) {
    let idx = h.ring.req_prod_pvt();
    let rsp_before = h.ring.page().load_u32(RSP_PROD);
    h.ring.page().store_u32(REQ_PROD, idx.wrapping_add(1000));
    h.ring.page().fence();
    let sent = events::send(pv_guest_kernel::Port(h.port));
    let start = time::now_ns();
    while gnttab::in_use(GrantRef(h.ring_ref)) && time::now_ns() - start < ANSWER_NS {
        let _ = time::sleep(10 * MS);
    }
    let mapped = gnttab::in_use(GrantRef(h.ring_ref));
    let rsp_after = h.ring.page().load_u32(RSP_PROD);
    println!(
        "blkhostile: overrun: event sent {sent:?}; ring unmapped by the back-end after {} ms: {}",
        (time::now_ns() - start) / MS,
        !mapped
    );
    t.check(
        "overrun-ring-dropped",
        !mapped,
        format_args!(
            "the back-end still maps the ring after {} s",
            ANSWER_NS / 1_000_000_000
        ),
    );
    t.check(
        "overrun-no-response",
        rsp_after == rsp_before,
        format_args!("rsp_prod moved from {rsp_before} to {rsp_after}"),
    );
    let state = xb::read_state(xs, be_path);
    println!("blkhostile: overrun: back-end state now {state:?}");

    // Put the index back and ask politely: nobody is listening any more.
    h.ring.page().store_u32(REQ_PROD, idx);
    h.ring.page().fence();
    let r = h.read_of(ALIVE_SECTOR);
    let _ = h.ring.push_request(&r);
    let _ = h.ring.push_requests_and_check_notify();
    let sent = events::send(pv_guest_kernel::Port(h.port));
    let got = h.collect(1, 500 * MS);
    t.check(
        "overrun-disconnected",
        matches!(got.as_deref(), Ok([])) && h.ring.page().load_u32(RSP_PROD) == rsp_before,
        format_args!("after repairing the index: {got:?}"),
    );
    println!("blkhostile: after the overrun a valid request got no answer (event sent {sent:?})");

    // For the record (not a check): does the back-end still follow our
    // xenbus state once it has dropped the ring? Xen's blkback halts a
    // broken ring but still closes when the front-end does.
    let closing = xb::switch_state(xs, fe_dir, XenbusState::Closing);
    let start = time::now_ns();
    let mut state = xb::read_state(xs, be_path);
    while matches!(state, Ok(XenbusState::Connected)) && time::now_ns() - start < 1_000 * MS {
        let _ = time::sleep(50 * MS);
        state = xb::read_state(xs, be_path);
    }
    println!(
        "blkhostile: we switched to Closing ({closing:?}); the back-end's state 1 s later: {state:?}"
    );
}

pv_guest_kernel::main!(main);
