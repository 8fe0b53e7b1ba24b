//! Grant maps and unmaps of two domains raced on two CPUs while a third
//! domain that granted to both (and maps their grants) dies (scenario
//! smp-grant-race, 2 CPUs, audit=1).
//!
//! - `role=racer me=M peer=P dier=D` (domains 0 and 1, each pinned to its own
//!   CPU): grants `PAGES` pages to its peer (references 8 and up, writable,
//!   each filled with a pattern naming granter and page) and one to the
//!   dier, then maps and unmaps each of the peer's pages `ROUNDS` times,
//!   checking the content every time, while the peer does the same with its
//!   pages; between rounds it maps the dier's grant to it, writes how many
//!   times it did into it (the dier's signal), unmaps it and notifies the
//!   dier, until a map finds the dier gone
//!   (`GNTST_bad_domain`, Xen's answer for a dying granter). At the end it
//!   blocks until the peer's last mark is there (the peer notifies it),
//!   then ends every grant it gave: none may
//!   still be in use (the dier's mappings went at its death). With `mc=1`
//!   (scenarios smp-multicall-*) each round after the first also issues one
//!   multicall of a grant copy of each of the peer's pages, an mmu_update
//!   of its own page table, an update_va_mapping and a version query
//!   ([`mc_round`]), checking each entry's result and the copied bytes.
//! - `role=dier me=2` (domain 2): grants one page to each racer (references 8
//!   and 9), maps each racer's grant to it and keeps it mapped, blocks until
//!   both racers mapped its pages `DIER_MAPS` times (half their rounds), and
//!   powers off holding its mappings.
//!
//! # Events
//!
//! The waits for another domain's mark block on an event channel the
//! marker notifies (`SCHEDOP_block`, through `events::block_until`), not on
//! a count of yields. The channels meet by convention, as
//! `examples/pingpong`'s: each domain's first event-channel operations are
//! its `alloc_unbound`s (a racer: one for its peer; the dier: one for
//! domain 0, then one for domain 1), made *before* it grants anything, and
//! ports are handed out lowest-first, so the same image gets the same
//! numbers: the racer's first port `F` is its peer's port for it too, and
//! the dier's for racer `me` is `F + me`. A domain binds to another's port
//! only after it mapped one of that domain's grants, so the port is
//! there. Only the start-up wait for a granter's first grant
//! (`map_when_granted`) still yields, bounded: nothing can notify before
//! the channels exist. A mark (or notification) that never comes leaves
//! its waiter blocked for good: its domain never reports, and once every
//! domain left is blocked the hypervisor kills them (the scenario fails
//! either way; without the racers' notifications the dier never dies and
//! the racers fail `dier-mapped-then-gone` after `PATIENCE` maps of its
//! grant).
#![no_std]
#![no_main]

use core::ptr::{read_volatile, write_volatile};
use guest_abi::grant_table::{
    GNTCOPY_SOURCE_GREF, GNTST_BAD_DOMAIN, GNTST_GENERAL_ERROR, GNTST_OKAY, GNTTABOP_COPY,
    GnttabCopy, GnttabCopyPtr,
};
use guest_abi::mmu::{MmuUpdate, UVMF_INVLPG};
use guest_abi::multicall::MulticallEntry;
use guest_abi::types::{DomId, GrantRef};
use pv_guest_kernel::PteFlags;
use pv_guest_kernel::test::Reporter;
use pv_guest_kernel::{Port, StartInfo, events, gnttab, mm, println};

/// Pages each racer grants its peer.
const PAGES: u32 = 2;
/// Map/unmap rounds over the peer's pages.
const ROUNDS: u32 = 30;
/// The first reference a guest hands out (0..8 are reserved).
const FIRST_REF: u32 = 8;
/// Maps of the dier's grant by each racer before the dier dies (a racer
/// writes its count of them into the dier's page: the dier dies in the
/// middle of the racers' rounds).
const DIER_MAPS: u64 = (ROUNDS / 2) as u64;
/// A racer's mark in its peer's first page: it is done with it.
const DONE: u64 = 0xD0DE_0000_0001;
/// Bound on the yields spent waiting for a peer (a broken peer fails the
/// test instead of hanging it).
const PATIENCE: u32 = 200_000;

fn word(va: u64, i: u64) -> u64 {
    // SAFETY: callers pass a mapped page and i < 512.
    unsafe { read_volatile((va + i * 8) as *const u64) }
}

fn set_word(va: u64, i: u64, v: u64) {
    // SAFETY: callers pass a page mapped writable and i < 512.
    unsafe { write_volatile((va + i * 8) as *mut u64, v) }
}

/// Word `i` of page `k` granted by `granter`.
fn pattern(granter: u16, k: u32, i: u64) -> u64 {
    (u64::from(granter) << 48) | (u64::from(k) << 32) | i
}

/// A page of ours, filled with its pattern, granted writable to `to`.
fn grant_page(me: u16, k: u32, to: u16) -> Result<(u64, GrantRef), ()> {
    let (va, mfn) = mm::alloc_page().map_err(|_| ())?;
    for i in 0..512 {
        set_word(va, i, pattern(me, k, i));
    }
    let r = gnttab::grant_access(DomId(to), mfn, false).map_err(|_| ())?;
    Ok((va, r))
}

/// Maps reference `gref` of `dom` writable at map slot `slot`, retrying
/// while the granter has not granted it yet.
fn map_when_granted(dom: u16, gref: u32, slot: u64) -> Result<(u64, u32), i16> {
    let va = gnttab::map_slot_va(slot).ok_or(GNTST_GENERAL_ERROR)?;
    let mut tries = 0;
    loop {
        match scenario_guests::gmap(dom, gref, va, false) {
            Ok(h) => return Ok((va, h)),
            Err(GNTST_GENERAL_ERROR) if tries < PATIENCE => {
                tries += 1;
                let _ = guest_abi::hypercall::sched_yield();
            }
            Err(e) => return Err(e),
        }
    }
}

/// An event only wakes the blocked waiter, which then looks at memory.
fn on_event(_port: Port) {}

/// Event delivery on, and this domain's first port: unbound for `remote`
/// (allocated before anything is granted, see "Events").
fn first_port(remote: u16) -> Result<Port, guest_abi::errno::Errno> {
    events::init()?;
    let p = events::alloc_unbound(DomId(remote), on_event)?;
    events::enable();
    Ok(p)
}

/// Our port bound to domain `dom`'s port `port` for us (after one of its
/// grants was mapped: the port exists), or `None` (said, and checked by
/// the caller).
fn bind_to(dom: u16, port: u32) -> Option<Port> {
    events::bind_interdomain(DomId(dom), Port(port), on_event)
        .map_err(|e| println!("grantrace: bind to domain {dom} port {port}: {e:?}"))
        .ok()
}

/// Notifies the other end of `port`, if bound.
fn notify(port: Option<Port>) {
    if let Some(p) = port {
        let _ = events::send(p);
    }
}

/// What a racer's multicalls use (`mc=1`): a page per peer page to copy
/// into, and a scratch page whose mapping the batch changes.
struct McPages {
    /// Virtual address and machine frame of each copy's destination.
    bufs: [(u64, u64); PAGES as usize],
    /// The scratch page, its L1 entry's machine address and the entry.
    scratch: u64,
    pte_ma: u64,
    pte: u64,
}

fn mc_pages() -> Option<McPages> {
    let mut bufs = [(0, 0); PAGES as usize];
    for b in &mut bufs {
        *b = mm::alloc_page().ok()?;
    }
    let (scratch, _) = mm::alloc_page().ok()?;
    let pte_ma = mm::l1_entry_ma(mm::current_l4_mfn(), scratch)?;
    Some(McPages {
        bufs,
        scratch,
        pte_ma,
        pte: mm::lookup(scratch),
    })
}

/// One multicall: a grant copy of each of the peer's pages into `bufs`
/// (grant_table_op), the scratch page made read-only by writing its L1
/// entry (mmu_update), made writable again (update_va_mapping), and a
/// version query (which has no path without the hypervisor lock). Checks
/// every entry's result, every copy's status and bytes, and the scratch
/// mapping at the end; describes what was wrong, if anything.
fn mc_round(peer: u16, m: &McPages, round: u32) -> Result<(), ()> {
    let mut copies = [GnttabCopy::default(); PAGES as usize];
    for (k, c) in copies.iter_mut().enumerate() {
        // (Bytes a copy that did not happen would leave.)
        for i in 0..512 {
            set_word(m.bufs[k].0, i, !0);
        }
        *c = GnttabCopy {
            source: GnttabCopyPtr {
                u: u64::from(FIRST_REF) + k as u64,
                domid: peer,
                offset: 0,
                _pad: 0,
            },
            dest: GnttabCopyPtr {
                u: m.bufs[k].1,
                domid: DomId::SELF.0,
                offset: 0,
                _pad: 0,
            },
            len: 4096,
            flags: GNTCOPY_SOURCE_GREF,
            status: 1,
            _pad: 0,
        };
    }
    let ro = MmuUpdate {
        ptr: m.pte_ma,
        val: m.pte & !PteFlags::RW.bits(),
    };
    let self_id = u64::from(DomId::SELF.0);
    let entry = |op, args| MulticallEntry {
        op,
        result: 0x5A5A,
        args,
    };
    let mut calls = [
        entry(
            20,
            [
                u64::from(GNTTABOP_COPY),
                copies.as_mut_ptr() as u64,
                u64::from(PAGES),
                0,
                0,
                0,
            ],
        ),
        entry(1, [(&raw const ro) as u64, 1, 0, self_id, 0, 0]),
        entry(14, [m.scratch, m.pte, UVMF_INVLPG, 0, 0, 0]),
        entry(17, [0; 6]),
    ];
    // SAFETY: the entries copy into our own buffers and remap our own
    // scratch page, which nothing else uses.
    let r = unsafe { guest_abi::hypercall::multicall(&mut calls) };
    let results = calls.map(|c| c.result);
    let statuses = copies.map(|c| c.status);
    let copied = (0..PAGES as usize)
        .all(|k| (1..512).all(|i| word(m.bufs[k].0, i) == pattern(peer, k as u32, i)));
    let mapped = mm::lookup(m.scratch);
    set_word(m.scratch, 0, u64::from(round));
    let ok = r.is_ok()
        && results[0] == 0
        && results[1] == 0
        && results[2] == 0
        && results[3] >> 16 >= 4
        && statuses.iter().all(|&s| s == GNTST_OKAY)
        && copied
        && mapped & PteFlags::RW.bits() != 0
        && word(m.scratch, 0) == u64::from(round);
    if !ok {
        println!(
            "grantrace: multicall in round {round}: {r:?}, results {results:#x?}, statuses {statuses:?}, copied {copied}, scratch entry {mapped:#x}"
        );
        return Err(());
    }
    Ok(())
}

fn racer(me: u16, peer: u16, dier: u16, mc: bool) -> ! {
    let mut t = Reporter::new();
    let first = match gnttab::init(1).and_then(|()| first_port(peer)) {
        Ok(p) => p.0,
        Err(e) => {
            t.fail("setup-table", format_args!("{e:?}"));
            t.finish()
        }
    };
    // Our ports bound to the peer's and the dier's ports for us.
    let mut to_peer = None;
    let mut to_dier = None;
    let mut bound = true;
    let mut own = [(0u64, GrantRef(0)); PAGES as usize];
    let mut granted = true;
    for k in 0..PAGES {
        match grant_page(me, k, peer) {
            Ok(g) if g.1 == GrantRef(FIRST_REF + k) => own[k as usize] = g,
            _ => granted = false,
        }
    }
    let dier_page = grant_page(me, PAGES, dier);
    granted &= matches!(dier_page, Ok((_, r)) if r == GrantRef(FIRST_REF + PAGES));
    t.check("granted", granted, format_args!("references not 8.."));

    let mut content = true;
    let mut unmaps = true;
    let mut rounds = 0;
    let mut dier_maps = 0u32;
    let mut dier_gone = false;
    let mut dier_odd = None;
    let mut spins = 0u32;
    let pages = if mc { mc_pages() } else { None };
    let mut mc_ok = !mc || pages.is_some();
    let mut mc_done = 0u32;
    while (rounds < ROUNDS || !dier_gone) && spins < PATIENCE {
        spins += 1;
        // From the second round on, the peer's grants are there (the first
        // mapped them), and stay until our last round marks its page.
        if let Some(m) = &pages
            && rounds > 0
            && rounds < ROUNDS
        {
            mc_ok &= mc_round(peer, m, rounds).is_ok();
            mc_done += 1;
        }
        if rounds < ROUNDS {
            // Page 0 last: the last round's mark in it lets the peer end
            // its grants, so nothing of the peer's may be mapped after.
            for k in (0..PAGES).rev() {
                match map_when_granted(peer, FIRST_REF + k, u64::from(k)) {
                    Ok((va, h)) => {
                        content &= (1..512).all(|i| word(va, i) == pattern(peer, k, i));
                        if rounds == 0 && to_peer.is_none() {
                            to_peer = bind_to(peer, first);
                            bound &= to_peer.is_some();
                        }
                        let last = rounds + 1 == ROUNDS && k == 0;
                        if last {
                            set_word(va, 0, DONE);
                        }
                        unmaps &= scenario_guests::gunmap(va, h).is_ok();
                        if last {
                            notify(to_peer);
                        }
                    }
                    Err(e) => {
                        t.fail("map-peer", format_args!("round {rounds} page {k}: {e}"));
                        t.finish()
                    }
                }
            }
            rounds += 1;
        }
        if !dier_gone {
            // The dier granted reference 8 to domain 0, 9 to domain 1.
            match map_when_granted(dier, FIRST_REF + u32::from(me), u64::from(PAGES)) {
                Ok((va, h)) => {
                    content &= (1..512).all(|i| word(va, i) == pattern(dier, u32::from(me), i));
                    if dier_maps == 0 {
                        to_dier = bind_to(dier, first + u32::from(me));
                        bound &= to_dier.is_some();
                    }
                    dier_maps += 1;
                    set_word(va, 0, u64::from(dier_maps));
                    unmaps &= scenario_guests::gunmap(va, h).is_ok();
                    notify(to_dier);
                }
                Err(GNTST_BAD_DOMAIN) => dier_gone = true,
                Err(e) => {
                    dier_odd = Some(e);
                    dier_gone = true;
                }
            }
        }
    }
    t.check(
        "peer-pages-mapped",
        rounds == ROUNDS,
        format_args!("{rounds} rounds"),
    );
    t.check(
        "content-every-map",
        content,
        format_args!("a mapped page held other bytes"),
    );
    t.check("every-unmap-ok", unmaps, format_args!("an unmap failed"));
    if mc {
        t.check(
            "multicall-rounds",
            mc_ok && mc_done == ROUNDS - 1,
            format_args!("{mc_done} multicalls, see above"),
        );
    }
    t.check(
        "dier-mapped-then-gone",
        dier_maps > 0 && dier_gone && dier_odd.is_none(),
        format_args!("{dier_maps} maps, gone {dier_gone}, odd status {dier_odd:?}"),
    );
    t.check(
        "ports-bound",
        bound && to_peer.is_some(),
        format_args!("see above"),
    );
    // The peer's last round marked our first page (and notified us): it
    // maps nothing of ours.
    events::block_until(|| word(own[0].0, 0) == DONE);
    t.check(
        "peer-done",
        word(own[0].0, 0) == DONE,
        format_args!("no mark from the peer"),
    );
    let mut ended = true;
    for &(_, r) in &own {
        ended &= gnttab::revoke(r).is_ok();
    }
    // The dier died holding a mapping of this grant: released at its death.
    if let Ok((_, r)) = dier_page {
        ended &= gnttab::revoke(r).is_ok();
    }
    t.check(
        "grants-free-at-end",
        ended,
        format_args!("a grant still in use"),
    );
    println!("grantrace: {rounds} rounds, {dier_maps} maps of the dier's grant");
    t.finish()
}

fn dier(me: u16) -> ! {
    let mut t = Reporter::new();
    // A port for each racer (0, then 1), before anything is granted.
    let ports = gnttab::init(1)
        .and_then(|()| first_port(0))
        .and_then(|_| events::alloc_unbound(DomId(1), on_event));
    if let Err(e) = ports {
        t.fail("setup-table", format_args!("{e:?}"));
        t.finish()
    }
    // One page for each racer, holding the pattern the racer checks.
    let mut pages = [0u64; 2];
    let mut granted = true;
    for (racer, va) in pages.iter_mut().enumerate() {
        let (v, mfn) = mm::alloc_page().expect("page");
        for i in 1..512 {
            set_word(v, i, pattern(me, racer as u32, i));
        }
        // Word 0 counts the racer's maps (none yet).
        set_word(v, 0, 0);
        *va = v;
        let r = gnttab::grant_access(DomId(racer as u16), mfn, false);
        granted &= r == Ok(GrantRef(FIRST_REF + racer as u32));
    }
    t.check("granted", granted, format_args!("references not 8, 9"));
    // Map each racer's grant to us and keep it: released at our death.
    let mut held = true;
    for racer in 0..2u16 {
        match map_when_granted(racer, FIRST_REF + PAGES, 4 + u64::from(racer)) {
            Ok((va, _)) => held &= word(va, 1) == pattern(racer, PAGES, 1),
            Err(e) => {
                held = false;
                println!("grantrace: map of domain {racer}'s grant: {e}");
            }
        }
    }
    t.check("maps-racers", held, format_args!("see above"));
    // Each racer notifies us after each mark.
    let marked = || pages.iter().all(|&va| word(va, 0) >= DIER_MAPS);
    events::block_until(marked);
    t.check(
        "racers-mapped",
        marked(),
        format_args!("no mark from a racer"),
    );
    // Dies holding its mappings, while the racers map its grants.
    t.finish()
}

fn main(si: &'static StartInfo) {
    let arg = |k| scenario_guests::arg(si, k).and_then(|v: &str| v.parse::<u16>().ok());
    let me = arg("me").unwrap_or(0);
    match scenario_guests::arg(si, "role") {
        Some("racer") => racer(
            me,
            arg("peer").unwrap_or(1),
            arg("dier").unwrap_or(2),
            arg("mc") == Some(1),
        ),
        _ => dier(me),
    }
}

pv_guest_kernel::main!(main);
