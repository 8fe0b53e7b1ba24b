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
//!   times it did into it (the dier's signal) and unmaps it, until a map finds the dier gone
//!   (`GNTST_bad_domain`, Xen's answer for a dying granter). At the end it
//!   waits for the peer's last mark, then ends every grant it gave: none may
//!   still be in use (the dier's mappings went at its death).
//! - `role=dier me=2` (domain 2): grants one page to each racer (references 8
//!   and 9), maps each racer's grant to it and keeps it mapped, waits until
//!   both racers mapped its pages `DIER_MAPS` times (half their rounds), and
//!   powers off holding its mappings.
#![no_std]
#![no_main]

use core::ptr::{read_volatile, write_volatile};
use guest_abi::grant_table::{GNTST_BAD_DOMAIN, GNTST_GENERAL_ERROR};
use guest_abi::types::{DomId, GrantRef};
use pv_guest_kernel::test::Reporter;
use pv_guest_kernel::{StartInfo, gnttab, mm, println};

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

/// Yields until `cond` holds (false if it never did).
fn wait(mut cond: impl FnMut() -> bool) -> bool {
    for _ in 0..PATIENCE {
        if cond() {
            return true;
        }
        let _ = guest_abi::hypercall::sched_yield();
    }
    false
}

fn racer(me: u16, peer: u16, dier: u16) -> ! {
    let mut t = Reporter::new();
    if let Err(e) = gnttab::init(1) {
        t.fail("setup-table", format_args!("{e:?}"));
        t.finish()
    }
    let mut own = [(0u64, GrantRef(0)); PAGES as usize];
    let mut granted = true;
    for k in 0..PAGES {
        match grant_page(me, k, peer) {
            Ok(g) if g.1 == GrantRef(FIRST_REF + k) => own[k as usize] = g,
            _ => granted = false,
        }
    }
    let to_dier = grant_page(me, PAGES, dier);
    granted &= matches!(to_dier, Ok((_, r)) if r == GrantRef(FIRST_REF + PAGES));
    t.check("granted", granted, format_args!("references not 8.."));

    let mut content = true;
    let mut unmaps = true;
    let mut rounds = 0;
    let mut dier_maps = 0u32;
    let mut dier_gone = false;
    let mut dier_odd = None;
    let mut spins = 0u32;
    while (rounds < ROUNDS || !dier_gone) && spins < PATIENCE {
        spins += 1;
        if rounds < ROUNDS {
            for k in 0..PAGES {
                match map_when_granted(peer, FIRST_REF + k, u64::from(k)) {
                    Ok((va, h)) => {
                        content &= (1..512).all(|i| word(va, i) == pattern(peer, k, i));
                        if rounds + 1 == ROUNDS && k == 0 {
                            set_word(va, 0, DONE);
                        }
                        unmaps &= scenario_guests::gunmap(va, h).is_ok();
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
                    dier_maps += 1;
                    set_word(va, 0, u64::from(dier_maps));
                    unmaps &= scenario_guests::gunmap(va, h).is_ok();
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
    t.check(
        "dier-mapped-then-gone",
        dier_maps > 0 && dier_gone && dier_odd.is_none(),
        format_args!("{dier_maps} maps, gone {dier_gone}, odd status {dier_odd:?}"),
    );
    // The peer's last round marked our first page: it maps nothing of ours.
    let peer_done = wait(|| word(own[0].0, 0) == DONE);
    t.check(
        "peer-done",
        peer_done,
        format_args!("no mark from the peer"),
    );
    let mut ended = true;
    for &(_, r) in &own {
        ended &= gnttab::revoke(r).is_ok();
    }
    // The dier died holding a mapping of this grant: released at its death.
    if let Ok((_, r)) = to_dier {
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
    if let Err(e) = gnttab::init(1) {
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
    let marked = wait(|| pages.iter().all(|&va| word(va, 0) >= DIER_MAPS));
    t.check(
        "racers-mapped",
        marked,
        format_args!("no mark from a racer"),
    );
    // Dies holding its mappings, while the racers map its grants.
    t.finish()
}

fn main(si: &'static StartInfo) {
    let arg = |k| scenario_guests::arg(si, k).and_then(|v: &str| v.parse::<u16>().ok());
    let me = arg("me").unwrap_or(0);
    match scenario_guests::arg(si, "role") {
        Some("racer") => racer(me, arg("peer").unwrap_or(1), arg("dier").unwrap_or(2)),
        _ => dier(me),
    }
}

pv_guest_kernel::main!(main);
