//! The service domain: the privileged domain that serves the others, in the
//! role of Xen's dom0 with xenstored and xenconsoled. It runs the xenstore
//! (`backends/xenstore`) over every guest's store ring and the console
//! back-end over every guest's console ring.
//!
//! It learns the other domains from its command line (`domains=ID:NAME,..`,
//! appended by the hypervisor, which plays the toolstack) and their rings
//! from `HVMOP_get_param` (store/console frame and event channel, which the
//! hypervisor allocated unbound for this domain). It maps each ring page with
//! a foreign `mmu_update`, binds each channel, introduces the domain to the
//! store (home directory, `name`, `domid`), then serves events until every
//! other domain has ended, noticing deaths through `VIRQ_DOM_EXC`. Lines
//! typed on the serial console are toolstack commands (`xl shutdown NAME`,
//! see `toolstack`) unless `console_input=NAME` routes them to a guest.
//!
//! Guests' indices and bytes are hostile: see `store` and `console`.
#![no_std]
#![no_main]
// Only the virtio HAL (DMA memory and device registers) needs `unsafe`.
#![deny(unsafe_code)]

extern crate alloc;

mod bench;
mod blk;
mod console;
#[allow(unsafe_code)]
mod disk;
mod echo;
mod store;
mod toolstack;

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, Ordering};
use guest_abi::errno::Errno;
use guest_abi::hvm::{
    HVM_PARAM_CONSOLE_EVTCHN, HVM_PARAM_CONSOLE_PFN, HVM_PARAM_STORE_EVTCHN, HVM_PARAM_STORE_PFN,
};
use guest_abi::hypercall::hvm_get_param;
use guest_abi::types::DomId;
use pv_guest_kernel::{StartInfo, events, page, println, rt, time};
use xenstore::Xenstore;

/// The service's heap gate (see `xenstore::heap`): whether the heap can give
/// `need` bytes now (a real probe of the first-fit heap: a free block that
/// large, found or grown) and still have `keep` bytes in total.
pub fn heap_gate(need: usize, keep: usize) -> bool {
    use pv_guest_kernel::heap;
    let total = need.saturating_add(keep);
    heap::can_allocate(need) && (heap::free() >= total || heap::headroom() >= total)
}

/// What one pass of a back-end's handshake step may allocate (paths,
/// values, its store requests): it runs only when the heap can give this.
const STEP_BOUND: usize = 64 * 1024;

/// Whether a handshake step may run on this pass (`STEP_BOUND` of room):
/// asked of the heap at most once per pass, and only when some step is due
/// (the probe walks the heap's free list, so the data path never pays it).
pub struct Room(Option<bool>);

impl Room {
    fn new() -> Self {
        Self(None)
    }

    /// Asks the heap the first time, then gives the same answer.
    pub fn now(&mut self) -> bool {
        *self.0.get_or_insert_with(|| heap_gate(STEP_BOUND, 0))
    }
}

/// Set by every event we care about; the main loop clears it.
static WORK: AtomicBool = AtomicBool::new(true);

fn kick(_port: u32) {
    WORK.store(true, Ordering::SeqCst);
}

/// Set by the disk's interrupt (its pirq's event channel).
static DISK_IRQ: AtomicBool = AtomicBool::new(false);

fn disk_irq(_port: u32) {
    DISK_IRQ.store(true, Ordering::SeqCst);
    WORK.store(true, Ordering::SeqCst);
}

/// Our command line (start_info's, up to its NUL).
fn cmdline(si: &StartInfo) -> &str {
    guest_abi::types::until_nul_str(&si.cmd_line).unwrap_or("")
}

/// The names listed in `key=a,b` on the command line.
fn cmdline_list(si: &StartInfo, key: &str) -> Vec<String> {
    cmdline(si)
        .split_ascii_whitespace()
        .filter_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .flat_map(|v| v.split(','))
        .filter(|v| !v.is_empty())
        .map(String::from)
        .collect()
}

/// The real disk, its interrupt, and the virtual disks carved from it.
struct Disks {
    disk: disk::VirtioDisk,
    pirq: u32,
    interrupts: u64,
    vbds: Vec<blk::Vbd>,
}

/// With `vbd=a,b` on the command line: probes the virtio disk, routes its
/// interrupt to an event channel, and gives each named domain an equal
/// slice of it as a virtual disk, `xvda` or the one an entry names as xl's
/// `vdev` does (`vbd=a:hda,b:xvdb`; `blkback::vdev`).
fn setup_disks(
    si: &StartInfo,
    xs: &mut Xenstore,
    local: &mut store::Local,
    guests: &[Guest],
) -> Option<Disks> {
    let names = cmdline_list(si, "vbd");
    if names.is_empty() {
        return None;
    }
    let mut disk = match disk::probe() {
        Ok(d) => d,
        Err(e) => {
            println!("service: no disk: {e}");
            return None;
        }
    };
    use blkback::Disk;
    let total = disk.sectors();
    println!(
        "service: virtio-blk in slot {} at {:#x} ({} sectors, flush {}), GSI {}",
        disk.slot(),
        disk.mmio_base(),
        total,
        disk.has_flush(),
        disk.gsi()
    );
    let pirq = match events::bind_gsi(disk.gsi(), disk_irq) {
        Ok((pirq, port)) => {
            println!(
                "service: disk interrupt GSI {} bound as pirq {pirq} to port {port}",
                disk.gsi()
            );
            pirq
        }
        Err(e) => {
            println!("service: disk interrupt GSI {}: {e:?}", disk.gsi());
            u32::MAX
        }
    };
    // With `bench=1` the second half of the disk is the service domain's
    // own, for the direct-access baseline of the block benchmark.
    let bench = !cmdline_list(si, "bench").is_empty();
    let usable = if bench { total / 2 } else { total };
    if bench {
        let figures = bench::direct(&mut disk, total / 2);
        for len in [8u16, 4096] {
            if let Some(ns) = bench::copy_cost(len) {
                println!(
                    "bench: GNTTABOP_copy of {len} bytes between two of its own frames: {ns} ns per call"
                );
            }
        }
        for name in &names {
            let name = name.split(':').next().unwrap_or("");
            if let Some(g) = guests.iter().find(|g| g.name == name) {
                for (key, ns) in &figures {
                    let _ = local.write(
                        xs,
                        &format!("/local/domain/{}/bench/{key}", g.domid),
                        format!("{ns}").as_bytes(),
                    );
                }
            }
        }
    }
    let share = usable / names.len() as u64;
    let mut vbds = Vec::new();
    for (i, entry) in names.iter().enumerate() {
        let (name, vdev_name) = entry
            .split_once(':')
            .unwrap_or((entry.as_str(), blk::DEFAULT_VDEV));
        let vdev = match blkback::vdev::parse(vdev_name) {
            Ok(v) => v,
            Err(e) => {
                println!("service: vbd for {name}: '{vdev_name}': {e}");
                continue;
            }
        };
        let Some(g) = guests.iter().find(|g| g.name == name) else {
            println!("service: vbd for unknown domain '{name}'");
            continue;
        };
        match blk::Vbd::create(
            xs,
            local,
            g.domid,
            name,
            vdev,
            i as u64 * share,
            share,
            64 + i as u64,
        ) {
            Ok(v) => vbds.push(v),
            Err(e) => println!("service: vbd for {name}: {e:?}"),
        }
    }
    Some(Disks {
        disk,
        pirq,
        interrupts: 0,
        vbds,
    })
}

/// Where foreign ring pages are mapped: two pages per guest.
const WINDOW: u64 = 0x1E00_0000;
/// Rings are also polled this often, for guests that produce without
/// notifying (the hypervisor's own drain does the same).
const POLL_NS: u64 = 10_000_000;

struct Guest {
    domid: u16,
    name: String,
    store: Option<store::StoreRing>,
    console: Option<console::Console>,
    alive: bool,
    /// Console bytes relayed for this guest.
    relayed: u64,
    /// Its store connection still waits to be released (no heap for it).
    release_pending: bool,
}

/// `domains=1:name,2:other` from the command line.
fn domain_list(si: &StartInfo) -> Vec<(u16, String)> {
    let Some(list) = cmdline(si)
        .split_ascii_whitespace()
        .find_map(|w| w.strip_prefix("domains="))
    else {
        return Vec::new();
    };
    list.split(',')
        .filter_map(|e| {
            let (id, name) = e.split_once(':')?;
            Some((id.parse().ok()?, String::from(name)))
        })
        .collect()
}

fn connect(
    xs: &mut Xenstore,
    local: &mut store::Local,
    slot: u64,
    domid: u16,
    name: &str,
    ring_shown: bool,
) -> Result<Guest, Errno> {
    let dom = DomId(domid);
    let store_mfn = hvm_get_param(dom, HVM_PARAM_STORE_PFN)?;
    let store_port = hvm_get_param(dom, HVM_PARAM_STORE_EVTCHN)? as u32;
    let cons_mfn = hvm_get_param(dom, HVM_PARAM_CONSOLE_PFN)?;
    let cons_port = hvm_get_param(dom, HVM_PARAM_CONSOLE_EVTCHN)? as u32;

    let spage = page::map_foreign(domid, store_mfn, WINDOW + slot * 2 * 4096)?;
    let sport = events::bind_interdomain(domid, store_port, kick)?;
    let conn = xs.introduce(dom, store_mfn, store_port)?;
    xs.create_home(dom)?;
    let home = format!("/local/domain/{domid}");
    local.write(xs, &format!("{home}/name"), name.as_bytes())?;
    local.write(xs, &format!("{home}/domid"), format!("{domid}").as_bytes())?;

    let cpage = page::map_foreign(domid, cons_mfn, WINDOW + slot * 2 * 4096 + 4096)?;
    let cport = events::bind_interdomain(domid, cons_port, kick)?;
    Ok(Guest {
        domid,
        name: String::from(name),
        store: Some(store::StoreRing::new(spage, conn, sport)),
        console: Some(console::Console::new(
            cpage,
            cport,
            String::from(name),
            ring_shown,
        )),
        alive: true,
        relayed: 0,
        release_pending: false,
    })
}

/// Waits until an event arrives or `POLL_NS` pass.
fn wait_for_work() {
    let deadline = time::now_ns() + POLL_NS;
    loop {
        if WORK.swap(false, Ordering::SeqCst) || time::now_ns() >= deadline {
            return;
        }
        let _ = guest_abi::hypercall::set_timer_op(deadline);
        events::disable();
        if WORK.load(Ordering::SeqCst) {
            events::enable();
            continue;
        }
        // Re-enables delivery atomically: no wake-up is lost.
        let _ = guest_abi::hypercall::sched_block();
    }
}

/// Ends what we hold of a guest that died: its last console bytes, its
/// store connection, our mappings and ports.
fn disconnect(xs: &mut Xenstore, local: &mut store::Local, g: &mut Guest) {
    g.alive = false;
    if let Some(mut c) = g.console.take() {
        c.pump();
        g.relayed = c.bytes;
        let _ = events::close(c.port);
        let _ = page::unmap(c.page);
    }
    if let Some(s) = g.store.take() {
        // Releasing may need room to copy its nodes (shared with open
        // transactions): retried on later passes until it succeeds.
        // As a toolstack does when it destroys a domain: its home goes
        // (and with it the memory its nodes held).
        let mut home = format!("/local/domain/{}", g.domid).into_bytes();
        home.push(0);
        let _ = local.op(xs, guest_abi::io::xenstore::XS_RM, 0, &home);
        if xs.release(DomId(g.domid)) == Err(Errno::ENOMEM) {
            println!(
                "service: domain {}: no heap to release its store nodes yet; will retry",
                g.domid
            );
            g.release_pending = true;
        }
        let _ = events::close(s.port);
        let _ = page::unmap(s.page);
    }
    let _ = xs.take_actions();
    println!(
        "service: domain {} ({}) ended; its rings are released",
        g.domid, g.name
    );
}

/// Runs one typed toolstack command (see `toolstack`).
fn run_command(xs: &mut Xenstore, local: &mut store::Local, guests: &[Guest], line: &str) {
    let cmd = match toolstack::parse(line) {
        Ok(c) => c,
        Err(why) => return println!("service: {why}"),
    };
    let Some(g) = guests
        .iter()
        .find(|g| g.name == cmd.domain || cmd.domain.parse() == Ok(g.domid))
    else {
        return println!("service: {}: no domain '{}'", cmd.verb, cmd.domain);
    };
    if !g.alive {
        return println!(
            "service: {}: domain {} ({}) has already ended",
            cmd.verb, g.domid, g.name
        );
    }
    let path = format!("/local/domain/{}/control/shutdown", g.domid);
    match local.write(xs, &path, cmd.value.as_bytes()) {
        Ok(()) => println!(
            "service: {} {}: wrote '{}' to {path}",
            cmd.verb, g.name, cmd.value
        ),
        Err(e) => println!(
            "service: {} {}: cannot write {path}: {e:?}",
            cmd.verb, g.name
        ),
    }
    // Its watch event is queued for the guest: deliver it on the next pass.
    WORK.store(true, Ordering::SeqCst);
}

fn main(si: &'static StartInfo) {
    events::init().expect("event channels");
    time::init().expect("timer");
    // Every guest together may make xenstore hold at most a quarter of this
    // domain's memory (each one also at most its own quota).
    // (`xs_memory_total=BYTES` sets another total: the scenario
    // service-heap-pressure lifts it past the heap to show the heap gate
    // alone keeps the service alive.)
    let own_bytes = usize::try_from(si.nr_pages)
        .unwrap_or(0)
        .saturating_mul(4096);
    let memory_total = cmdline_list(si, "xs_memory_total")
        .first()
        .and_then(|v| v.parse().ok())
        .unwrap_or(own_bytes / 4);
    let mut xs = Xenstore::with_limits(xenstore::Limits {
        memory_total,
        ..xenstore::Limits::default()
    });
    // Every allocation xenstore makes for a client is asked of the heap
    // first.
    xs.set_heap_gate(heap_gate);
    let mut local = store::Local::new(&mut xs);
    let _ = events::bind_virq(guest_abi::event_channel::VIRQ_DOM_EXC, kick).expect("VIRQ_DOM_EXC");
    let mut guests: Vec<Guest> = Vec::new();
    // Domains whose rings are consumed but not written out (the manifest
    // shows their console_io copy only).
    let hidden = cmdline_list(si, "hide_ring");
    for (slot, (domid, name)) in domain_list(si).into_iter().enumerate() {
        let shown = !hidden.iter().any(|h| h.parse() == Ok(domid));
        match connect(&mut xs, &mut local, slot as u64, domid, &name, shown) {
            Ok(g) => guests.push(g),
            // Dead already (it ran and ended before we got here): nothing to serve.
            Err(Errno::ESRCH | Errno::EBUSY) => println!(
                "service: domain {domid} ({name}) ended before the service domain reached it"
            ),
            Err(e) => println!("service: domain {domid} ({name}): cannot connect its rings: {e:?}"),
        }
    }
    // The rings were mapped and bound above.
    let _ = xs.take_actions();
    let mut disks = setup_disks(si, &mut xs, &mut local, &guests);
    let mut echoes = echo::Echoes::setup(si, &mut xs, &mut local, &guests);
    // Serial console input goes to one chosen guest (`console_input=NAME`).
    let input_to = cmdline_list(si, "console_input").into_iter().next();
    if let Some(name) = &input_to {
        println!("service: console input goes to {name}");
    }
    // Otherwise typed lines are toolstack commands, read every POLL_NS.
    let mut commands = toolstack::LineReader::new();
    let mut next_input = 0u64;
    events::enable();
    println!(
        "service: serving xenstore and consoles for {} domains",
        guests.len()
    );

    // The store changed since the vbds last looked (true at first).
    let mut store_dirty = true;
    // Every back-end step could run in this pass (no heap shortage).
    let mut stepped_all = true;
    while guests.iter().any(|g| g.alive) {
        wait_for_work();
        // One guest's write may queue watch events for another: go round
        // until nothing moves.
        let mut rounds = 0;
        loop {
            let mut moved = false;
            let mut step_room = Room::new();
            for g in guests.iter_mut().filter(|g| g.alive) {
                if let Some(s) = g.store.as_mut()
                    && s.pump(&mut xs)
                {
                    moved = true;
                    store_dirty = true;
                    let _ = events::send(s.port);
                }
                if let Some(c) = g.console.as_mut()
                    && c.pump()
                {
                    let _ = events::send(c.port);
                }
            }
            if let Some(name) = &input_to {
                let mut typed = [0u8; 64];
                let n = guest_abi::hypercall::console_io_read(&mut typed).unwrap_or(0);
                if n > 0
                    && let Some(c) = guests
                        .iter_mut()
                        .filter(|g| g.alive && &g.name == name)
                        .find_map(|g| g.console.as_mut())
                {
                    let taken = c.input(&typed[..n]);
                    if taken < n {
                        println!(
                            "service: console input for {name}: ring full, {} bytes dropped",
                            n - taken
                        );
                    }
                    let _ = events::send(c.port);
                    moved = true;
                }
            }
            if let Some(d) = disks.as_mut() {
                if DISK_IRQ.swap(false, Ordering::SeqCst) {
                    d.disk.ack_interrupt();
                    d.interrupts += 1;
                    let _ = events::pirq_eoi(d.pirq);
                }
                // A step allocates (paths, store requests): only with room
                // for it, else on a later pass (the store stays dirty).
                for v in d.vbds.iter_mut() {
                    // Handshake states change only through the store.
                    if store_dirty || v.wants_step() {
                        if !step_room.now() {
                            stepped_all = false;
                        } else if v.step(&mut xs, &mut local, kick) {
                            moved = true;
                        }
                    }
                    while v.serve(&mut d.disk) {
                        moved = true;
                    }
                }
            }
            store_dirty = !stepped_all;
            stepped_all = true;
            if echoes.pump(&mut xs, &mut local, kick, &mut step_room) {
                moved = true;
            }
            rounds += 1;
            if !moved || rounds > 64 {
                break;
            }
        }
        if input_to.is_none() && time::now_ns() >= next_input {
            next_input = time::now_ns() + POLL_NS;
            let mut typed = [0u8; 64];
            let n = guest_abi::hypercall::console_io_read(&mut typed).unwrap_or(0);
            let mut lines: Vec<Result<String, &'static str>> = Vec::new();
            commands.feed(&typed[..n.min(typed.len())], |l| {
                lines.push(l.map(String::from))
            });
            for l in lines {
                match l {
                    Ok(text) => run_command(&mut xs, &mut local, &guests, &text),
                    Err(why) => println!("service: {why}"),
                }
            }
        }
        for g in guests.iter_mut().filter(|g| g.release_pending) {
            if xs.release(DomId(g.domid)) != Err(Errno::ENOMEM) {
                g.release_pending = false;
                let _ = xs.take_actions();
            }
        }
        for g in guests.iter_mut().filter(|g| g.alive) {
            if hvm_get_param(DomId(g.domid), HVM_PARAM_STORE_EVTCHN) == Err(Errno::ESRCH) {
                if let Some(d) = disks.as_mut() {
                    for v in d.vbds.iter_mut().filter(|v| v.fe_dom == g.domid) {
                        v.front_end_gone();
                    }
                }
                echoes.domain_died(g.domid);
                disconnect(&mut xs, &mut local, g);
            }
        }
    }
    let out: u64 = guests.iter().map(|g| g.relayed).sum();
    if let Some(d) = disks.as_ref() {
        println!(
            "service: disk interrupts delivered as events: {}",
            d.interrupts
        );
        if d.interrupts > 0 {
            println!("service: disk interrupts arrive through the event channel");
        }
    }
    println!("service: every domain has ended; shutting down ({out} console bytes relayed)");
    rt::shutdown(guest_abi::sched::ShutdownReason::Poweroff)
}

pv_guest_kernel::main!(main);
