//! The service domain as a library: the privileged domain that serves the
//! others, in the role of Xen's dom0 with xenstored and xenconsoled. It runs
//! the xenstore (`backends/xenstore`) over every guest's store ring, the
//! console back-end over every guest's console ring, and the split-driver
//! back-ends ([`driver::Driver`]s: the built-in block and echo devices,
//! plus any a service image passes to [`run`]). The `service` image is
//! [`run`] with no extra drivers; `examples/counter` is an image that adds
//! its own device without editing this crate.
//!
//! It learns the other domains from its command line (`domains=ID:NAME,..`
//! and `vcpus=ID:N,..` for those with more than one vCPU, appended by the
//! hypervisor, which plays the toolstack) and their rings
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
// Only the virtio HAL (DMA memory and device registers) and the mappings of
// other domains' pages (`mapping`) need `unsafe`.
#![deny(unsafe_code)]

extern crate alloc;

mod bench;
pub mod blk;
mod console;
#[allow(unsafe_code)]
mod disk;
pub mod driver;
#[allow(unsafe_code)]
pub mod mapping;
pub mod store;
mod toolstack;

pub use driver::{CmdlineDevices, Driver, Env, Io};
pub use splitback;

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, Ordering};
use guest_abi::errno::Errno;
use guest_abi::hvm::{
    HVM_PARAM_CONSOLE_EVTCHN, HVM_PARAM_CONSOLE_PFN, HVM_PARAM_STORE_EVTCHN, HVM_PARAM_STORE_PFN,
};
use guest_abi::hypercall::hvm_get_param;
use guest_abi::types::{DomId, Port};
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
struct Room(Option<bool>);

impl Room {
    fn new() -> Self {
        Self(None)
    }

    /// Asks the heap the first time, then gives the same answer.
    fn now(&mut self) -> bool {
        *self.0.get_or_insert_with(|| heap_gate(STEP_BOUND, 0))
    }
}

/// Set by every event we care about; the main loop clears it.
static WORK: AtomicBool = AtomicBool::new(true);

/// The handler of every port the service binds: wakes its loop.
pub(crate) fn kick(_port: Port) {
    WORK.store(true, Ordering::SeqCst);
}

/// Our command line (start_info's, up to its NUL).
fn cmdline(si: &StartInfo) -> &str {
    guest_abi::types::until_nul_str(&si.cmd_line).unwrap_or("")
}

/// The names listed in `key=a,b` on the command line.
fn cmdline_list(si: &StartInfo, key: &str) -> Vec<String> {
    words_list(cmdline(si), key)
}

/// The names listed in `key=a,b` in `line`.
pub(crate) fn words_list(line: &str, key: &str) -> Vec<String> {
    line.split_ascii_whitespace()
        .filter_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .flat_map(|v| v.split(','))
        .filter(|v| !v.is_empty())
        .map(String::from)
        .collect()
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

/// How many vCPUs domain `domid` has: `vcpus=ID:N,..` from the command line
/// lists those with more than one (at most the manifest's 32).
fn vcpu_count(si: &StartInfo, domid: u16) -> u32 {
    cmdline_list(si, "vcpus")
        .iter()
        .filter_map(|e| e.split_once(':'))
        .find(|(id, _)| id.parse() == Ok(domid))
        .and_then(|(_, n)| n.parse::<u32>().ok())
        .map_or(1, |n| n.clamp(1, 32))
}

fn connect(
    xs: &mut Xenstore,
    local: &mut store::Local,
    slot: u64,
    domid: u16,
    name: &str,
    vcpus: u32,
    ring_shown: bool,
) -> Result<Guest, Errno> {
    let dom = DomId(domid);
    let store_mfn = hvm_get_param(dom, HVM_PARAM_STORE_PFN)?;
    let store_port = hvm_get_param(dom, HVM_PARAM_STORE_EVTCHN)? as u32;
    let cons_mfn = hvm_get_param(dom, HVM_PARAM_CONSOLE_PFN)?;
    let cons_port = hvm_get_param(dom, HVM_PARAM_CONSOLE_EVTCHN)? as u32;

    let spage = mapping::map_guest_page(dom, store_mfn, WINDOW + slot * 2 * 4096)?;
    let sport = events::bind_interdomain(dom, Port(store_port), kick)?;
    let conn = xs.introduce(dom, store_mfn, store_port)?;
    xs.create_home(dom)?;
    let home = format!("/local/domain/{domid}");
    local.write(xs, &format!("{home}/name"), name.as_bytes())?;
    local.write(xs, &format!("{home}/domid"), format!("{domid}").as_bytes())?;
    // Each vCPU's availability, as Xen's toolstack writes it (Linux's vCPU
    // hotplug code reads it at boot); every vCPU may run here.
    for n in 0..vcpus {
        local.write(xs, &format!("{home}/cpu/{n}/availability"), b"online")?;
    }

    let cpage = mapping::map_guest_page(dom, cons_mfn, WINDOW + slot * 2 * 4096 + 4096)?;
    let cport = events::bind_interdomain(dom, Port(cons_port), kick)?;
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
        // The timer may have fired, and its upcall run, between arming it
        // and masking: it is spent then, and blocking would wait for the
        // next event instead of the deadline.
        if WORK.load(Ordering::SeqCst) || time::now_ns() >= deadline {
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

/// Grant-mapping slots (`gnttab::map_slot_va`) for the back-ends' rings:
/// every slot from here to the end of the window, shared by all drivers.
const RING_SLOTS: u64 = 64;

/// Runs the service domain: xenstore, consoles, the built-in drivers (block
/// with `vbd=`, echo with `echo=`) and `extra`, until every other domain
/// has ended; then shuts the domain down.
pub fn run(si: &'static StartInfo, extra: Vec<Box<dyn Driver>>) -> ! {
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
        let vcpus = vcpu_count(si, domid);
        match connect(&mut xs, &mut local, slot as u64, domid, &name, vcpus, shown) {
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
    let mut platform = driver::KernelPlatform;
    let mut slots = splitback::Slots::new(
        RING_SLOTS,
        (pv_guest_kernel::gnttab::MAP_SLOTS - RING_SLOTS) as usize,
    );
    let domains: Vec<driver::Domain> = guests
        .iter()
        .map(|g| driver::Domain {
            domid: g.domid,
            name: g.name.clone(),
        })
        .collect();
    let mut drivers = driver::builtin();
    drivers.extend(extra);
    for d in drivers.iter_mut() {
        d.setup(&mut Env {
            cmdline: cmdline(si),
            domains: &domains,
            io: Io {
                store: driver::StoreRef {
                    xs: &mut xs,
                    local: &mut local,
                },
                platform: &mut platform,
                slots: &mut slots,
            },
        });
    }
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
            let mut io = Io {
                store: driver::StoreRef {
                    xs: &mut xs,
                    local: &mut local,
                },
                platform: &mut platform,
                slots: &mut slots,
            };
            for d in drivers.iter_mut() {
                d.poll();
                // A step allocates (paths, store requests): only with room
                // for it, else on a later pass (the store stays dirty).
                // Handshake states change only through the store.
                if store_dirty || d.wants_step() {
                    if !step_room.now() {
                        stepped_all = false;
                    } else if d.step(&mut io) {
                        moved = true;
                    }
                }
                // Once per round: a front-end that refills its ring as fast
                // as it is drained gets one bounded batch, then the others
                // their turn.
                if d.serve(&mut io) {
                    moved = true;
                }
            }
            store_dirty = !stepped_all;
            stepped_all = true;
            rounds += 1;
            if !moved {
                break;
            }
            if rounds > 64 {
                // Work is left: do not sleep before the next pass.
                WORK.store(true, Ordering::SeqCst);
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
                for d in drivers.iter_mut() {
                    d.domain_died(
                        g.domid,
                        &mut Io {
                            store: driver::StoreRef {
                                xs: &mut xs,
                                local: &mut local,
                            },
                            platform: &mut platform,
                            slots: &mut slots,
                        },
                    );
                }
                disconnect(&mut xs, &mut local, g);
            }
        }
    }
    let out: u64 = guests.iter().map(|g| g.relayed).sum();
    for d in drivers.iter_mut() {
        d.finish();
    }
    println!("service: every domain has ended; shutting down ({out} console bytes relayed)");
    rt::shutdown(guest_abi::sched::ShutdownReason::Poweroff)
}
