//! Grant operations a single domain can check on itself, on the microvisor
//! and on real Xen alike (it grants its own pages to itself): the status of
//! a map before any table was set up; host and device mappings
//! (`GNTMAP_device_map` returns the frame's bus address, which for a PV
//! domain without an IOMMU is its machine address); unmapping the host and
//! device halves separately; `GNTTABOP_unmap_and_replace`; and Xen's status
//! for each refusal.
#![no_std]
#![no_main]

use core::ptr::{read_volatile, write_volatile};
use guest_abi::grant_table::*;
use pv_guest_kernel::{StartInfo, gnttab, mm, println, test::Reporter, traps};

fn map(dom: u16, gref: u32, va: u64, flags: u32) -> GnttabMapGrantRef {
    let mut op = GnttabMapGrantRef {
        host_addr: va,
        flags,
        ref_: gref,
        dom,
        ..Default::default()
    };
    // SAFETY: maps one of this domain's own pages at a scratch address (or
    // is refused); the results are only read back.
    let _ = unsafe {
        guest_abi::hypercall::raw::grant_table_op(
            GNTTABOP_MAP_GRANT_REF,
            &mut op as *mut _ as u64,
            1,
        )
    };
    op
}

fn unmap(host_addr: u64, dev_bus_addr: u64, handle: u32) -> i16 {
    let mut op = GnttabUnmapGrantRef {
        host_addr,
        dev_bus_addr,
        handle,
        ..Default::default()
    };
    // SAFETY: removes a mapping this guest made (or is refused).
    let _ = unsafe {
        guest_abi::hypercall::raw::grant_table_op(
            GNTTABOP_UNMAP_GRANT_REF,
            &mut op as *mut _ as u64,
            1,
        )
    };
    op.status
}

fn unmap_and_replace(
    host_addr: u64,
    new_addr: u64,
    handle: u32,
) -> (Result<u64, guest_abi::errno::Errno>, i16) {
    let mut op = GnttabUnmapAndReplace {
        host_addr,
        new_addr,
        handle,
        ..Default::default()
    };
    // SAFETY: replaces a grant mapping of this guest's with another of its
    // own mappings (or is refused).
    let r = unsafe {
        guest_abi::hypercall::raw::grant_table_op(
            GNTTABOP_UNMAP_AND_REPLACE,
            &mut op as *mut _ as u64,
            1,
        )
    };
    (r, op.status)
}

fn word(va: u64) -> u64 {
    // SAFETY: callers pass a mapped page.
    unsafe { read_volatile(va as *const u64) }
}

fn main(si: &'static StartInfo) {
    let mut t = Reporter::new();
    traps::init().expect("trap table");
    // Its own domain id: 0 (the only domain here, and dom0 on Xen) unless
    // the command line says `me=N` (beside other domains).
    let me = scenario_guests::arg(si, "me")
        .and_then(|v| v.parse::<u16>().ok())
        .unwrap_or(0);
    let (scratch, _) = mm::alloc_page().expect("page");
    let (spare, _) = mm::alloc_page().expect("page");

    // Before any table exists.
    let op = map(me, 8, scratch, GNTMAP_HOST_MAP);
    println!("gntself: map before setup_table: status {}", op.status);
    // Xen gives every domain its first table frame at creation, so the
    // reference exists and its (empty) entry does not permit access.
    t.check(
        "map-before-setup",
        op.status == GNTST_GENERAL_ERROR,
        format_args!("{}", op.status),
    );

    gnttab::init(1).expect("grant table");
    let (page, page_mfn) = mm::alloc_page().expect("page");
    // SAFETY: our own page.
    unsafe { write_volatile(page as *mut u64, 0x5e1f_0000_0001) };
    gnttab::set_entry(
        pv_guest_kernel::GrantRef(8),
        pv_guest_kernel::DomId(me),
        page_mfn,
        false,
    )
    .expect("entry 8");

    // A host mapping.
    let op = map(me, 8, scratch, GNTMAP_HOST_MAP);
    t.check(
        "host-map",
        op.status == GNTST_OKAY && word(scratch) == 0x5e1f_0000_0001,
        format_args!("{} {:#x}", op.status, word(scratch)),
    );
    let st = unmap(scratch, 0, op.handle);
    t.check("host-unmap", st == GNTST_OKAY, format_args!("{st}"));

    // Host and device at once: the bus address is the machine address.
    let op = map(me, 8, scratch, GNTMAP_HOST_MAP | GNTMAP_DEVICE_MAP);
    println!(
        "gntself: host+device map: status {} dev_bus_addr {:#x} (mfn {:#x})",
        op.status, op.dev_bus_addr, page_mfn
    );
    t.check(
        "device-map-bus-address",
        op.status == GNTST_OKAY && op.dev_bus_addr == page_mfn << 12,
        format_args!("{} {:#x}", op.status, op.dev_bus_addr),
    );
    // The device half first, then the host half, each by itself.
    let st = unmap(0, op.dev_bus_addr, op.handle);
    let still = word(scratch);
    t.check(
        "unmap-device-half",
        st == GNTST_OKAY && still == 0x5e1f_0000_0001,
        format_args!("{st} {still:#x}"),
    );
    let st = unmap(scratch, 0, op.handle);
    t.check("unmap-host-half", st == GNTST_OKAY, format_args!("{st}"));
    let st = unmap(scratch, 0, op.handle);
    t.check(
        "unmap-done-handle",
        st == GNTST_BAD_HANDLE,
        format_args!("{st}"),
    );

    // Device only, read-only.
    let op = map(me, 8, 0, GNTMAP_DEVICE_MAP | GNTMAP_READONLY);
    t.check(
        "device-only-map",
        op.status == GNTST_OKAY && op.dev_bus_addr == page_mfn << 12,
        format_args!("{} {:#x}", op.status, op.dev_bus_addr),
    );
    let st = unmap(0, op.dev_bus_addr + 4096, op.handle);
    t.check(
        "unmap-wrong-bus-address",
        st == GNTST_BAD_DEV_ADDR,
        format_args!("{st}"),
    );
    let st = unmap(0, op.dev_bus_addr, op.handle);
    t.check("unmap-device-only", st == GNTST_OKAY, format_args!("{st}"));

    // unmap_and_replace: `spare` maps a page of ours holding a marker; the
    // grant mapping at `scratch` is replaced by that mapping, and `spare`
    // is cleared.
    // SAFETY: our own page.
    unsafe { write_volatile(spare as *mut u64, 0x5a4e_0000_0002) };
    let op = map(me, 8, scratch, GNTMAP_HOST_MAP);
    let (r, st) = unmap_and_replace(scratch, spare, op.handle);
    println!("gntself: unmap_and_replace: {r:?} status {st}");
    let now = word(scratch);
    let gone = traps::expect_fault(|| {
        let _ = word(spare);
    });
    t.check(
        "unmap-and-replace",
        r.is_ok() && st == GNTST_OKAY && now == 0x5a4e_0000_0002 && gone.is_some(),
        format_args!("{r:?} {st} {now:#x} {gone:?}"),
    );
    let (_, st) = unmap_and_replace(scratch, spare, op.handle);
    t.check(
        "unmap-and-replace-again",
        st == GNTST_BAD_HANDLE,
        format_args!("{st}"),
    );

    // Refusals.
    let op = map(me, 8, scratch, 0);
    t.check(
        "map-neither-host-nor-device",
        op.status == GNTST_BAD_GNTREF,
        format_args!("{}", op.status),
    );
    let op = map(me, 100_000, scratch, GNTMAP_HOST_MAP);
    t.check(
        "map-ref-beyond-table",
        op.status == GNTST_BAD_GNTREF,
        format_args!("{}", op.status),
    );
    let op = map(0x7ff0, 8, scratch, GNTMAP_HOST_MAP);
    t.check(
        "map-no-such-domain",
        op.status == GNTST_BAD_DOMAIN,
        format_args!("{}", op.status),
    );
    let st = unmap(scratch, 0, 9999);
    t.check(
        "unmap-bad-handle",
        st == GNTST_BAD_HANDLE,
        format_args!("{st}"),
    );
    // A virtual address off a page boundary maps that page (`spare`, left
    // unmapped by unmap_and_replace).
    let op = map(me, 8, spare + 8, GNTMAP_HOST_MAP);
    let seen = word(spare);
    let st = unmap(spare + 16, 0, op.handle);
    t.check(
        "map-misaligned-maps-its-page",
        op.status == GNTST_OKAY && seen == 0x5e1f_0000_0001 && st == GNTST_OKAY,
        format_args!("{} {seen:#x} {st}", op.status),
    );
    println!("gntself: done");
    t.finish()
}

pv_guest_kernel::main!(main);
