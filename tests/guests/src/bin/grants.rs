//! grants: grant tables v1 between three domains. The granter (`role=granter`)
//! shares pages with the mapper (`role=mapper`) and with a domain that dies
//! holding a mapping (`role=dier`). Shown: map (writable, read-only), copy in
//! both directions, unmap; GTF_reading/GTF_writing kept while mapped, so the
//! granter cannot revoke; a rewritten entry changes nothing for a live
//! mapping; every refusal with Xen's status (not granted to us, read-only
//! grant mapped writable, reference beyond the table, no such domain,
//! an mmu_update over the grant entry, bad and stale
//! handles, a copy past the page); a dead mapper's mappings are released.
//! The scenario runs with `audit=1`: the frame table is audited after
//! every grant call and at every death.
#![no_std]
#![no_main]

use core::ptr::{read_volatile, write_volatile};
use guest_abi::errno::Errno;
use guest_abi::grant_table::*;
use guest_abi::mmu::MmuUpdate;
use guest_abi::sched::ShutdownReason;
use guest_abi::types::{DomId, GrantRef};
use pv_guest_kernel::{StartInfo, gnttab, mm, println, rt, test::Reporter, traps};

const PATTERN_A: u64 = 0xA5A5_0000_0000_0000;
const PATTERN_B: u64 = 0xB0B0_0000_0000_0000;
const MAPPED: u64 = 0xFEED_0001;
const REWRITTEN: u64 = 0xCAFE;
const DIER_MAPPED: u64 = 0xD1E;
/// References the granter hands out, in order (the first free ones).
const REF_A: u32 = 8;
const REF_B: u32 = 9;
const REF_C: u32 = 10;
const REF_D: u32 = 11;
const REF_E: u32 = 12;

fn word(va: u64, i: u64) -> u64 {
    // SAFETY: callers pass a mapped page and i < 512.
    unsafe { read_volatile((va + i * 8) as *const u64) }
}

fn set_word(va: u64, i: u64, v: u64) {
    // SAFETY: callers pass a page mapped writable and i < 512.
    unsafe { write_volatile((va + i * 8) as *mut u64, v) }
}

fn fill(va: u64, base: u64) {
    for i in 0..512 {
        set_word(va, i, base | i);
    }
}

fn filled(va: u64, base: u64, from: u64) -> bool {
    (from..512).all(|i| word(va, i) == base | i)
}

/// Yields until `cond` holds (bounded, so a broken peer fails the test
/// instead of hanging it).
fn wait(what: &str, mut cond: impl FnMut() -> bool) -> bool {
    for _ in 0..200_000 {
        if cond() {
            return true;
        }
        let _ = guest_abi::hypercall::sched_yield();
    }
    println!("gave up waiting for {what}");
    false
}

fn main(si: &'static StartInfo) {
    traps::init().expect("trap table");
    match scenario_guests::arg(si, "role") {
        Some("granter") => granter(),
        Some("mapper") => mapper(),
        Some("lender") => lender(),
        Some("borrower") => borrower(),
        _ => dier(),
    }
}

fn granter() -> ! {
    let mut t = Reporter::new();
    let r = gnttab::init(1);
    t.check("setup-table", r.is_ok(), format_args!("{r:?}"));
    let q = guest_abi::hypercall::gnttab_query_size(DomId::SELF);
    t.check(
        "query-size",
        q.is_ok_and(|q| q.nr_frames == 1 && q.max_nr_frames >= 1),
        format_args!("{q:?}"),
    );
    let v = guest_abi::hypercall::gnttab_get_version(DomId::SELF);
    t.check("get-version", v == Ok(1), format_args!("{v:?}"));
    // Asking for the version in effect changes nothing (version 2 has its
    // own scenario, gntv2).
    let v1 = guest_abi::hypercall::gnttab_set_version(1);
    t.check("set-version-1", v1 == Ok(1), format_args!("{v1:?}"));
    let page = || mm::alloc_page().expect("page");
    let (a, a_mfn) = page();
    let (b, b_mfn) = page();
    let (_c, c_mfn) = page();
    let (d, d_mfn) = page();
    let (e, e_mfn) = page();
    fill(a, PATTERN_A);
    fill(b, PATTERN_B);
    let refs = [
        gnttab::grant_access(DomId(1), a_mfn, false),
        gnttab::grant_access(DomId(1), b_mfn, true),
        gnttab::grant_access(DomId(5), c_mfn, false),
        gnttab::grant_access(DomId(1), d_mfn, false),
        gnttab::grant_access(DomId(2), e_mfn, false),
    ];
    let want = [REF_A, REF_B, REF_C, REF_D, REF_E];
    t.check(
        "grant-refs",
        refs.iter().zip(want).all(|(r, w)| *r == Ok(GrantRef(w))),
        format_args!("{refs:?}"),
    );

    // The mapper maps A writable and says so in A itself.
    let mapped = wait("the mapper's mark", || word(a, 0) == MAPPED);
    t.check(
        "peer-mapped-and-wrote",
        mapped,
        format_args!("A[0] = {:#x}", word(a, 0)),
    );
    let e8 = gnttab::entry(GrantRef(REF_A)).unwrap_or_default();
    t.check(
        "reading-writing-set",
        e8.flags & (GTF_READING | GTF_WRITING) == GTF_READING | GTF_WRITING,
        format_args!("flags {:#x}", e8.flags),
    );
    let rv = gnttab::revoke(GrantRef(REF_A));
    t.check(
        "revoke-while-mapped-busy",
        rv == Err(Errno::EBUSY),
        format_args!("{rv:?}"),
    );
    // Point the live entry at another frame: the mapping keeps the frame it
    // pinned (the mapper checks), and the hypervisor never trusts the field.
    // SAFETY: our own table entry REF_A, mapped at TABLE_VA; the frame field
    // is the upper 32 bits.
    unsafe {
        write_volatile(
            (gnttab::TABLE_VA + u64::from(REF_A) * 8 + 4) as *mut u32,
            c_mfn as u32,
        )
    };
    set_word(a, 1, REWRITTEN);

    let unmapped = wait("the mapper's unmaps", || {
        !gnttab::in_use(GrantRef(REF_A)) && !gnttab::in_use(GrantRef(REF_B))
    });
    t.check(
        "unmapped-flags-cleared",
        unmapped,
        format_args!(
            "A {:?} B {:?}",
            gnttab::entry(GrantRef(REF_A)),
            gnttab::entry(GrantRef(REF_B))
        ),
    );
    let ends = [
        gnttab::end_access(GrantRef(REF_A)),
        gnttab::end_access(GrantRef(REF_B)),
        gnttab::end_access(GrantRef(REF_C)),
    ];
    t.check(
        "end-access",
        ends.iter().all(Result::is_ok),
        format_args!("{ends:?}"),
    );
    // The mapper copied its page into D through the grant.
    t.check(
        "copy-into-grant",
        filled(d, PATTERN_B ^ 0x1111_0000, 0),
        format_args!("D[0] = {:#x}", word(d, 0)),
    );

    // A domain that dies holding a writable mapping of E: death releases it.
    let seen = wait("the dier's mark", || word(e, 0) == DIER_MAPPED);
    t.check(
        "dier-mapped",
        seen,
        format_args!("E[0] = {:#x}", word(e, 0)),
    );
    let released = wait("the dier's death", || !gnttab::in_use(GrantRef(REF_E)));
    t.check(
        "released-at-death",
        released,
        format_args!("{:?}", gnttab::entry(GrantRef(REF_E))),
    );
    let end_e = gnttab::end_access(GrantRef(REF_E));
    t.check(
        "end-access-after-death",
        end_e.is_ok(),
        format_args!("{end_e:?}"),
    );
    t.finish()
}

fn mapper() -> ! {
    let mut t = Reporter::new();
    let va_a = gnttab::map_slot_va(0).unwrap_or(0);
    let va_b = gnttab::map_slot_va(1).unwrap_or(0);
    let scratch = gnttab::map_slot_va(2).unwrap_or(0);
    let mut h_a = Err(0);
    let ok = wait("the granter's grant", || {
        h_a = scenario_guests::gmap(0, REF_A, va_a, false);
        h_a.is_ok()
    });
    t.check("map-writable", ok, format_args!("{h_a:?}"));
    let h_a = h_a.unwrap_or(u32::MAX);
    t.check(
        "mapped-content",
        filled(va_a, PATTERN_A, 2),
        format_args!("A[2] = {:#x}", word(va_a, 2)),
    );
    set_word(va_a, 0, MAPPED);

    // Refusals, each with Xen's status.
    let cases: [(&str, Result<u32, i16>, i16); 4] = [
        (
            "not-granted-to-us",
            scenario_guests::gmap(0, REF_C, scratch, true),
            GNTST_GENERAL_ERROR,
        ),
        (
            "readonly-grant-mapped-writable",
            scenario_guests::gmap(0, REF_B, scratch, false),
            GNTST_GENERAL_ERROR,
        ),
        (
            "ref-beyond-table",
            scenario_guests::gmap(0, 5000, scratch, true),
            GNTST_BAD_GNTREF,
        ),
        (
            "no-such-domain",
            scenario_guests::gmap(7, REF_A, scratch, true),
            GNTST_BAD_DOMAIN,
        ),
    ];
    for (name, got, want) in cases {
        t.check(
            name,
            got == Err(want),
            format_args!("{got:?}, expected Err({want})"),
        );
    }
    // An address off a page boundary maps the page it lies in, as on Xen.
    let h = scenario_guests::gmap(0, REF_A, scratch + 8, true);
    let read = h.is_ok() && word(scratch, 0) == word(va_a, 0) && word(scratch, 5) == word(va_a, 5);
    let un = h.map(|h| scenario_guests::gunmap(scratch, h));
    t.check(
        "misaligned-address-maps-its-page",
        read && un == Ok(Ok(())),
        format_args!("{h:?} {un:?}"),
    );
    // The grant entry cannot be removed or changed through mmu_update.
    let entry = mm::l1_entry_ma(mm::current_l4_mfn(), va_a).unwrap_or(0);
    // SAFETY: the update is refused; were it accepted it would only unmap
    // our own grant window.
    let r = unsafe {
        guest_abi::hypercall::mmu_update(
            &[MmuUpdate { ptr: entry, val: 0 }],
            None,
            DomId::SELF.0 as u32,
        )
    };
    t.check(
        "mmu-update-over-grant-refused",
        r == Err(Errno::EINVAL),
        format_args!("{r:?}"),
    );
    let bad = scenario_guests::gunmap(va_a, h_a + 100);
    t.check(
        "unmap-bad-handle",
        bad == Err(GNTST_BAD_HANDLE),
        format_args!("{bad:?}"),
    );
    let wrong_va = scenario_guests::gunmap(scratch, h_a);
    t.check(
        "unmap-wrong-address",
        wrong_va == Err(GNTST_GENERAL_ERROR),
        format_args!("{wrong_va:?}"),
    );

    // B read-only: readable, a write faults.
    let h_b = scenario_guests::gmap(0, REF_B, va_b, true);
    t.check(
        "map-readonly",
        h_b.is_ok() && filled(va_b, PATTERN_B, 0),
        format_args!("{h_b:?}"),
    );
    let f = traps::expect_fault(|| set_word(va_b, 0, 1));
    t.check(
        "readonly-write-faults",
        f.is_some_and(|f| f.vector == 14),
        format_args!("{f:?}"),
    );

    // Copies: from grant B into our page, and from our page into grant D.
    let (own, own_mfn) = mm::alloc_page().expect("page");
    let local = |offset: u16| GnttabCopyPtr {
        u: own_mfn,
        domid: DomId::SELF.0,
        offset,
        _pad: 0,
    };
    let remote = |gref: u32, offset: u16| GnttabCopyPtr {
        u: u64::from(gref),
        domid: 0,
        offset,
        _pad: 0,
    };
    let mut ops = [
        GnttabCopy {
            source: remote(REF_B, 0),
            dest: local(0),
            len: 4096,
            flags: GNTCOPY_SOURCE_GREF,
            status: 1,
            _pad: 0,
        },
        GnttabCopy {
            source: local(4000),
            dest: remote(REF_D, 0),
            len: 200,
            flags: GNTCOPY_DEST_GREF,
            status: 1,
            _pad: 0,
        },
        GnttabCopy {
            source: remote(REF_C, 0),
            dest: local(0),
            len: 8,
            flags: GNTCOPY_SOURCE_GREF,
            status: 1,
            _pad: 0,
        },
    ];
    let r = gnttab::copy(&mut ops);
    let st: [i16; 3] = [ops[0].status, ops[1].status, ops[2].status];
    t.check(
        "copy-statuses",
        r.is_ok() && st == [GNTST_OKAY, GNTST_BAD_COPY_ARG, GNTST_GENERAL_ERROR],
        format_args!("{r:?} {st:?}"),
    );
    t.check(
        "copied-from-grant",
        filled(own, PATTERN_B, 0),
        format_args!("own[0] = {:#x}", word(own, 0)),
    );
    fill(own, PATTERN_B ^ 0x1111_0000);
    let mut out = [GnttabCopy {
        source: local(0),
        dest: remote(REF_D, 0),
        len: 4096,
        flags: GNTCOPY_DEST_GREF,
        status: 1,
        _pad: 0,
    }];
    let r = gnttab::copy(&mut out);
    t.check(
        "copy-to-grant",
        r.is_ok() && out[0].status == GNTST_OKAY,
        format_args!("{r:?} {}", out[0].status),
    );

    // The granter rewrites A's entry to another frame: our mapping is
    // unchanged (the pinned frame is used, never the field).
    let rewritten = wait("the granter's rewrite", || word(va_a, 1) == REWRITTEN);
    t.check(
        "mapping-survives-rewrite",
        rewritten && filled(va_a, PATTERN_A, 2),
        format_args!("A[2] = {:#x}", word(va_a, 2)),
    );

    let u1 = scenario_guests::gunmap(va_a, h_a);
    let u2 = scenario_guests::gunmap(va_a, h_a);
    t.check(
        "unmap-then-stale-handle",
        u1.is_ok() && u2 == Err(GNTST_BAD_HANDLE),
        format_args!("{u1:?} {u2:?}"),
    );
    let gone = traps::expect_fault(|| {
        let _ = word(va_a, 0);
    });
    t.check(
        "unmapped-page-faults",
        gone.is_some_and(|f| f.vector == 14),
        format_args!("{gone:?}"),
    );
    let ub = h_b.map(|h| scenario_guests::gunmap(va_b, h));
    t.check("unmap-readonly", ub == Ok(Ok(())), format_args!("{ub:?}"));
    t.finish()
}

fn dier() -> ! {
    let va = gnttab::map_slot_va(0).unwrap_or(0);
    let mut h = Err(0);
    if wait("the granter's grant", || {
        h = scenario_guests::gmap(0, REF_E, va, false);
        h.is_ok()
    }) {
        set_word(va, 0, DIER_MAPPED);
        println!("dier: mapped grant {REF_E} (handle {h:?}); dying without unmapping it");
    }
    rt::shutdown(ShutdownReason::Crash)
}

/// Grants a page to the borrower (domain 4) and dies while it is mapped.
fn lender() -> ! {
    gnttab::init(1).expect("grant table");
    let (page, mfn) = mm::alloc_page().expect("page");
    fill(page, PATTERN_A);
    let r = gnttab::grant_access(DomId(4), mfn, false);
    if wait("the borrower's mapping", || gnttab::in_use(GrantRef(REF_A))) {
        println!("lender: grant {r:?} is mapped; dying with it lent out");
    }
    rt::shutdown(ShutdownReason::Poweroff)
}

/// Maps the lender's page, keeps using it after the lender died (the frame
/// stays allocated while mapped), then unmaps it (the hypervisor then frees
/// it: see the scenario's marker).
fn borrower() -> ! {
    let mut t = Reporter::new();
    let va = gnttab::map_slot_va(0).unwrap_or(0);
    let mut h = Err(0);
    let ok = wait("the lender's grant", || {
        h = scenario_guests::gmap(3, REF_A, va, false);
        h.is_ok()
    });
    t.check("borrow", ok, format_args!("{h:?}"));
    // The lender is gone once new maps of its grants say so.
    let scratch = gnttab::map_slot_va(1).unwrap_or(0);
    let dead = wait("the lender's death", || {
        scenario_guests::gmap(3, REF_A, scratch, true) == Err(GNTST_BAD_DOMAIN)
    });
    t.check(
        "lender-died",
        dead,
        format_args!("maps of its grant still succeed"),
    );
    set_word(va, 0, 0x1234);
    t.check(
        "page-outlives-granter",
        filled(va, PATTERN_A, 1) && word(va, 0) == 0x1234,
        format_args!("{:#x}", word(va, 1)),
    );
    let u = h.map(|h| scenario_guests::gunmap(va, h));
    t.check(
        "unmap-after-granter-death",
        u == Ok(Ok(())),
        format_args!("{u:?}"),
    );
    t.finish()
}

pv_guest_kernel::main!(main);
