//! The microvisor: a ring-0, Xen-style paravirtualizing hypervisor for
//! x86_64. QEMU boots it by PVH with one module, the boot bundle (a cpio
//! archive of a manifest and guest ELF images); it builds every domain the
//! manifest names, runs them in ring 3, serves their hypercalls, and ends the
//! run with a verdict once every domain has ended.
#![no_std]
#![no_main]

extern crate alloc;

mod arch;
mod audit;
mod build;
mod cmdline;
mod domain;
mod events;
mod fifo;
mod footprint;
mod grant;
mod hcall;
mod hypercall;
mod irq;
mod lifecycle;
mod log;
mod memory;
mod mm;
mod mmu;
mod pv;
mod sched;
mod time;
mod trap;
mod vcpu;

use arch::cpu;
use cmdline::{boot_cmdline, selftest};
use microvisor_core::bootmem::{self, HvmMemmapEntry, HvmModlistEntry, HvmStartInfo};
use microvisor_core::{cpio, manifest};
use zerocopy::{FromBytes, Immutable, KnownLayout};

const MAX_MEMMAP: usize = 64;

/// The bytes the boot page tables identity-map (see `mm::check`).
const EARLY_WINDOW: u64 = 1 << 30;

/// Reads a boot structure before the hypervisor's page tables exist, or says
/// why it cannot (it lies beyond the boot identity map).
fn early_read<T: FromBytes + KnownLayout + Immutable>(
    what: &'static str,
    pa: u64,
) -> Result<T, bootmem::BootError> {
    let mut buf = [0u8; 64];
    let n = core::mem::size_of::<T>();
    bootmem::early_readable(what, pa, n as u64, EARLY_WINDOW)?;
    mm::read_phys(pa, &mut buf[..n]);
    Ok(T::read_from_bytes(&buf[..n]).expect("size matches"))
}

/// A boot environment the hypervisor cannot run in (no PVH, a memory map or
/// boot module it does not expect): one clear line, failing exit.
fn early_boot_fail(e: bootmem::BootError) -> ! {
    error!("boot failed: {e}");
    cpu::qemu_exit(false)
}

unsafe extern "C" {
    static __kernel_end_phys: u8;
}

/// Rust entry, called by the boot trampoline with the physical address of
/// PVH's hvm_start_info (the boot page tables identity-map the first GiB).
pub extern "C" fn kernel_main(start_info_pa: u32) -> ! {
    log::init();
    let si = match early_read::<[u8; core::mem::size_of::<HvmStartInfo>()]>(
        "start info",
        start_info_pa as u64,
    ) {
        Ok(bytes) => bootmem::parse_start_info(&bytes),
        Err(e) => Err(e),
    };
    let si = si.unwrap_or_else(|e| early_boot_fail(e));
    // Command line (read up to the early window's end).
    if si.cmdline_paddr != 0 {
        let mut buf = [0u8; 256];
        let room = EARLY_WINDOW.saturating_sub(si.cmdline_paddr).min(255) as usize;
        mm::read_phys(si.cmdline_paddr, &mut buf[..room]);
        let len = buf[..room].iter().position(|&b| b == 0).unwrap_or(room);
        cmdline::set(&buf[..len]);
    }
    log::configure(boot_cmdline());
    info!(
        "microvisor {} booting (cmdline: \"{}\")",
        env!("CARGO_PKG_VERSION"),
        boot_cmdline()
    );

    // Memory map and boot module → what the hypervisor maps and allocates.
    let (memmap_paddr, entries) = si.memmap();
    if entries as usize > MAX_MEMMAP {
        warn!("memory map has {entries} entries: using the first {MAX_MEMMAP}");
    }
    let mut map = [HvmMemmapEntry::default(); MAX_MEMMAP];
    let n = (entries as usize).min(MAX_MEMMAP);
    for (i, e) in map.iter_mut().enumerate().take(n) {
        *e = early_read::<HvmMemmapEntry>(
            "memory map",
            memmap_paddr + i as u64 * bootmem::MEMMAP_ENTRY_SIZE,
        )
        .unwrap_or_else(|e| early_boot_fail(e));
    }
    let module = if si.nr_modules > 0 {
        Some(
            early_read::<HvmModlistEntry>("module list", si.modlist_paddr)
                .unwrap_or_else(|e| early_boot_fail(e)),
        )
    } else {
        None
    };
    // SAFETY: only the address of the linker symbol is taken.
    let kernel_end = unsafe { &__kernel_end_phys as *const u8 as u64 };
    let layout = bootmem::layout(
        &map[..n],
        module,
        kernel_end,
        mm::MAX_FRAMES as u64 * mm::PAGE,
    )
    .unwrap_or_else(|e| early_boot_fail(e));
    if layout.ram_truncated {
        warn!(
            "RAM above {} MiB is not used",
            (mm::MAX_FRAMES as u64 * mm::PAGE) >> 20
        );
    }
    // ACPI's list of CPUs, while the boot's identity map is in place.
    let cpu_ids = find_cpus(si.rsdp_paddr);
    let nr_frames = layout.nr_frames;
    mm::init_allocator(nr_frames);
    mm::with_allocator(|a| {
        for e in map[..n].iter().filter(|e| e.kind == bootmem::E820_RAM) {
            let s = e.addr.div_ceil(mm::PAGE);
            let t = (e.addr + e.size) / mm::PAGE;
            let _ = a.add_free_range(s.min(a.nr_frames()), t.min(a.nr_frames()));
        }
        let _ = a.reserve_range(0, kernel_end.div_ceil(mm::PAGE));
        if let Some((first, end)) = layout.module_frames {
            let _ = a.reserve_range(first, end);
        }
    });
    info!(
        "memory: {} MiB of RAM, {} frames free",
        layout.ram_end >> 20,
        mm::with_allocator(|a| a.free_count())
    );

    mm::paging::init(nr_frames * mm::PAGE);
    mm::frames::init(nr_frames);
    arch::desc::init();
    enable_protections();
    cpu::enable_sse();
    arch::apic::init();
    let gsis = arch::ioapic::init();
    info!("I/O APICs: {gsis} interrupt lines, all masked");
    time::init();
    start_cpus(cpu_ids);

    let audit_on = boot_cmdline()
        .split_ascii_whitespace()
        .any(|w| w == "audit=1");
    audit::EVERY_CALL.store(audit_on, core::sync::atomic::Ordering::Relaxed);
    if audit_on {
        let audited = audit::AUDITED_HYPERCALLS.map(|(nr, _)| nr);
        hypercall::full_entry_for(Some(&audited));
    }
    let overflow = selftest("stack-overflow");
    mm::stacks::OVERFLOW_SELFTEST.store(overflow, core::sync::atomic::Ordering::Relaxed);
    let fault = selftest("pagefault") || overflow;
    hypercall::FAULT_SELFTEST.store(fault, core::sync::atomic::Ordering::Relaxed);
    if fault {
        hypercall::full_entry_for(None);
    }
    trap::INJECT_SELFTEST.store(selftest("inject"), core::sync::atomic::Ordering::Relaxed);
    if selftest("panic") {
        panic!("selftest: deliberate hypervisor panic");
    }
    let Some(module) = module else {
        boot_fail(format_args!("no boot bundle: pass one with -initrd"))
    };
    // SAFETY: the module's frames are reserved in the allocator above and the
    // hypervisor never writes them.
    let bundle = unsafe { mm::phys_slice(module.paddr, module.size) };
    let archive = match cpio::Archive::new(bundle) {
        Ok(a) => a,
        Err(e) => boot_fail(format_args!("boot bundle: {e}")),
    };
    let Some(mtext) = archive.get("manifest") else {
        boot_fail(format_args!("boot bundle has no 'manifest' file"))
    };
    let Ok(mtext) = core::str::from_utf8(mtext) else {
        boot_fail(format_args!("boot bundle: manifest is not UTF-8 text"))
    };
    let manifest = match manifest::parse(mtext) {
        Ok(m) => m,
        Err(e) => boot_fail(format_args!("boot bundle: {e}")),
    };
    {
        let mut hv = domain::lock();
        // The service domain learns the others' ids and names from its
        // command line (the toolstack knowledge Xen keeps in xenstore).
        let mut names: heapless::String<1024> = heapless::String::new();
        for (i, spec) in manifest
            .domains()
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.service)
        {
            let sep = if names.is_empty() { "domains=" } else { "," };
            let _ = core::fmt::Write::write_fmt(&mut names, format_args!("{sep}{i}:{}", spec.name));
        }
        // And whose console rings it consumes without showing them
        // (manifest `console = io`).
        let mut first = true;
        for (i, _) in manifest
            .domains()
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.service && !s.console.shows_ring())
        {
            let sep = if first { " hide_ring=" } else { "," };
            first = false;
            let _ = core::fmt::Write::write_fmt(&mut names, format_args!("{sep}{i}"));
        }
        // And how many vCPUs those with more than one have (it writes each
        // vCPU's `cpu/N/availability` node, as Xen's toolstack does).
        let mut first = true;
        for (i, spec) in manifest
            .domains()
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.service && s.vcpus > 1)
        {
            let sep = if first { " vcpus=" } else { "," };
            first = false;
            let _ =
                core::fmt::Write::write_fmt(&mut names, format_args!("{sep}{i}:{}", spec.vcpus));
        }
        let has_service = manifest.domains().iter().any(|s| s.service);
        // Room for every domain's record at once (its size is then exactly
        // what the domains take, for the figure below).
        if !hv.reserve_domains(manifest.domains().len()) {
            boot_fail(format_args!(
                "out of hypervisor memory for {} domains: give QEMU more memory, or the manifest fewer domains",
                manifest.domains().len()
            ));
        }
        let before = footprint::Snapshot::now();
        for (i, spec) in manifest.domains().iter().enumerate() {
            let Some(image) = archive.get(spec.image) else {
                boot_fail(format_args!(
                    "domain '{}': image '{}' is not in the boot bundle",
                    spec.name, spec.image
                ))
            };
            let ramdisk = match spec.ramdisk {
                "" => None,
                name => Some(archive.get(name).unwrap_or_else(|| {
                    boot_fail(format_args!(
                        "domain '{}': ramdisk '{name}' is not in the boot bundle",
                        spec.name
                    ))
                })),
            };
            let extra = if spec.service { names.as_str() } else { "" };
            match build::build(
                i as u16,
                spec,
                image,
                ramdisk,
                extra,
                has_service && !spec.service,
            ) {
                Ok((mut d, first, frame)) => {
                    let idx = hv.domain_count();
                    let nr = usize::from(spec.vcpus);
                    let online = arch::smp::online_mask();
                    if spec.cpus & online == 0 {
                        boot_fail(format_args!(
                            "domain '{}': cpus names no CPU this machine has (it has {}): give QEMU more (cargo xtask run --cpus N) or change the manifest",
                            spec.name,
                            online.count_ones()
                        ));
                    }
                    // vCPU 0 runs the image; the others exist, offline, until
                    // the guest initialises and brings them up.
                    for vid in 0..nr {
                        let Some(vi) = domain::Vcpu::offline(idx, vid as u32, d.shared())
                            .and_then(|v| hv.add_vcpu(v, spec.cpus & online, d.is_capped()))
                        else {
                            boot_fail(format_args!(
                                "domain '{}': out of hypervisor memory for its vCPU {vid} (give QEMU more memory, or the manifest fewer domains or vCPUs)",
                                spec.name
                            ));
                        };
                        let _ = d.push_vcpu(vi);
                        if vid == 0 {
                            hv.pv_mut(vi)
                                .set_kernel_stack(arch::desc::GUEST_DS, first.kernel_sp);
                            hv.with_sched(vi, |r, q| r.set_runstate_state(q, 1));
                            let v = hv.vcpu_mut(vi);
                            v.install_frame(&frame);
                            v.time_written(time::now_ns());
                            hv.set_cr3(vi, first.cr3);
                            hv.set_state(vi, domain::RunState::Runnable);
                        }
                    }
                    if !hv.reserve_domains(1)
                        || events::domain_built(d.id(), d.vcpus(), d.shared()).is_err()
                        || !domain::console_built(d.id(), spec.name, spec.console)
                        || !hv.add_domain(d)
                    {
                        boot_fail(format_args!(
                            "domain '{}': out of hypervisor memory for its state (give QEMU more memory, or the manifest fewer domains)",
                            spec.name
                        ));
                    }
                }
                Err(e) => boot_fail(format_args!("{e}")),
            }
        }
        connect_service(&mut hv);
        footprint::Snapshot::now().report_per_domain(&before, &hv, &manifest);
    }
    sched::start()
}

/// With a service domain, every other domain's store and console event
/// channels (start_info's ports) are allocated unbound for it, as Xen's
/// builders do for xenstored and xenconsoled.
fn connect_service(hv: &mut domain::Hv) {
    let Some(s) = hv.domains().find(|d| d.is_service()).map(|d| d.id()) else {
        return;
    };
    if s != 0 {
        boot_fail(format_args!(
            "the service domain must be the first domain of the manifest (domain 0)"
        ));
    }
    for i in 0..hv.domain_count() {
        let (id, store, console) = (
            hv.dom(i).id(),
            hv.dom(i).store_evtchn(),
            hv.dom(i).console_evtchn(),
        );
        if id == s {
            continue;
        }
        for want in [store, console] {
            match microvisor_core::evtchn::alloc_unbound(
                &mut events::Held::one(id),
                id,
                id,
                s,
                true,
            ) {
                Ok(p) if p == want => {}
                other => boot_fail(format_args!(
                    "domain {id}: event channel {want} for the service domain: {other:?}"
                )),
            }
        }
    }
    // Device access: I/O memory (the hypervisor's own APICs excepted) and
    // device interrupt lines (irq).
    let io = mm::frames::with(|ft, _| {
        ft.allow_io(s)?;
        ft.deny_io(arch::ioapic::FRAMES[0], arch::ioapic::FRAMES[0] + 1)?;
        ft.deny_io(arch::ioapic::FRAMES[1], arch::ioapic::FRAMES[1] + 1)?;
        ft.deny_io(0xFEE00, 0xFEE01)
    });
    if let Err(e) = io {
        boot_fail(format_args!("service domain: device access: {e:?}"));
    }
    info!(
        "service domain {s}: store and console channels allocated for {} domains; device access granted",
        hv.domain_count() - 1
    );
}

/// Physical memory for the ACPI parser, through the direct map (RAM and
/// the BIOS area below it).
struct Phys;

impl microvisor_core::acpi::PhysRead for Phys {
    fn read(&self, pa: u64, out: &mut [u8]) -> bool {
        // Before the allocator knows RAM: the boot identity map's window.
        let limit = match mm::max_phys() {
            0 => EARLY_WINDOW,
            m => m,
        };
        if pa
            .checked_add(out.len() as u64)
            .is_none_or(|end| end > limit)
        {
            return false;
        }
        mm::read_phys(pa, out);
        true
    }
}

/// The APIC ids of the CPUs ACPI's MADT lists.
///
/// Called before the allocator is set up, while the boot's identity map
/// still covers the first GiB: the firmware keeps the tables in memory the
/// map reserves (QEMU's microvm: the last page below the top of RAM),
/// which the hypervisor's direct map, made for RAM and the boot module,
/// need not cover.
fn find_cpus(rsdp_hint: u64) -> Result<CpuIds, microvisor_core::acpi::AcpiError> {
    use microvisor_core::acpi;
    static SCRATCH: spin::Mutex<[u8; 64 * 1024]> = spin::Mutex::new([0; 64 * 1024]);
    acpi::find_rsdp(&Phys, rsdp_hint)
        .and_then(|r| acpi::madt_apic_ids(&Phys, r, &mut SCRATCH.lock()[..]))
}

/// What [`find_cpus`] gives.
type CpuIds = heapless::Vec<u32, { microvisor_core::acpi::MAX_CPUS }>;

/// Starts the CPUs `ids` ([`find_cpus`]) lists but this one (they halt
/// until they have work; docs/smp.md). Without usable tables the
/// hypervisor runs on this CPU alone and says why.
fn start_cpus(ids: Result<CpuIds, microvisor_core::acpi::AcpiError>) {
    match ids {
        Ok(ids) if ids.len() > 1 => {
            let up = arch::smp::start_aps(&ids, sched::ap_run);
            info!(
                "cpus: {} of {} up (APIC ids {:?}); guests run on every one",
                up + 1,
                ids.len(),
                ids.as_slice()
            );
        }
        Ok(_) => info!("cpus: 1"),
        Err(e) => info!("cpus: 1 ({e})"),
    }
}

fn enable_protections() {
    let (_, ebx, _, _) = cpu::cpuid(7, 0);
    let mut on: heapless::String<32> = heapless::String::new();
    if ebx & (1 << 7) != 0 {
        cpu::cr4_set(1 << 20);
        let _ = on.push_str(" SMEP");
    }
    if ebx & (1 << 20) != 0 {
        cpu::cr4_set(1 << 21);
        mm::guest::SMAP.store(true, core::sync::atomic::Ordering::Relaxed);
        let _ = on.push_str(" SMAP");
    }
    // Mask the legacy PICs: no device interrupts are routed yet.
    arch::port::Port::PIC1_MASK.outb(0xff);
    arch::port::Port::PIC2_MASK.outb(0xff);
    info!(
        "cpu protections:{}",
        if on.is_empty() {
            " none available"
        } else {
            on.as_str()
        }
    );
    let (_, _, ecx1, edx1) = cpu::cpuid(1, 0);
    info!(
        "cpu: x2apic {} tsc {} apic {} tsc-deadline {}",
        ecx1 >> 21 & 1,
        edx1 >> 4 & 1,
        edx1 >> 9 & 1,
        ecx1 >> 24 & 1
    );
}

/// A boot-time error in the bundle or a domain: one clear line, failing exit.
fn boot_fail(args: core::fmt::Arguments) -> ! {
    error!("{}", args);
    error!("boot failed: no domains started");
    cpu::qemu_exit(false)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    log::raw(format_args!("\n(MV) PANIC: {}\n", info));
    trap::crash_report_tail(None)
}
