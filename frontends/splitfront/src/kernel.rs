//! [`Guest`]: the [`Kernel`] of a running guest, over pv-guest-kernel's
//! pages, grant table and event channels.
//!
//! Events: every port a front-end allocates here gets the same handler,
//! which sets the port's bit in one bitmap; [`Kernel::wait`] takes the bit,
//! so any number of devices wait on their own ports without a static of
//! their own.

use core::sync::atomic::{AtomicU64, Ordering};

use guest_abi::errno::Errno;
use pv_guest_kernel::page::MappedPage;
use pv_guest_kernel::{DomId, GrantRef, Port, events, gnttab};

use crate::Kernel;

/// Event channel ports (Xen's 2-level ABI has 4096).
const PORTS: usize = 4096;
/// One bit per port: an event arrived since its last wait.
static FIRED: [AtomicU64; PORTS / 64] = [const { AtomicU64::new(0) }; PORTS / 64];

fn on_event(Port(port): Port) {
    if let Some(w) = FIRED.get(port as usize / 64) {
        w.fetch_or(1 << (port % 64), Ordering::SeqCst);
    }
}

/// Takes `port`'s bit: whether an event came since the last take.
fn take_event(port: u32) -> bool {
    FIRED.get(port as usize / 64).is_some_and(|w| {
        w.fetch_and(!(1 << (port % 64)), Ordering::SeqCst) & (1 << (port % 64)) != 0
    })
}

/// The guest's own kernel services (needs `events::init` and `gnttab::init`
/// done).
#[derive(Clone, Copy, Debug, Default)]
pub struct Guest;

impl Kernel for Guest {
    type Page = MappedPage;
    fn alloc_page(&mut self) -> Result<(MappedPage, u64), Errno> {
        pv_guest_kernel::page::alloc_shared()
    }
    fn grant(&mut self, dom: u16, frame: u64, readonly: bool) -> Result<u32, Errno> {
        gnttab::grant_access(DomId(dom), frame, readonly).map(|g| g.0)
    }
    fn end_grant(&mut self, gref: u32) -> Result<(), Errno> {
        gnttab::end_access(GrantRef(gref))
    }
    fn alloc_port(&mut self, dom: u16) -> Result<u32, Errno> {
        let port = events::alloc_unbound(DomId(dom), on_event)?;
        take_event(port.0);
        Ok(port.0)
    }
    fn close_port(&mut self, port: u32) {
        let _ = events::close(Port(port));
        take_event(port);
    }
    fn notify(&mut self, port: u32) {
        let _ = events::send(Port(port));
    }
    fn wait(&mut self, port: u32, ready: &mut dyn FnMut() -> bool) {
        events::disable();
        if take_event(port) || ready() {
            events::enable();
        } else {
            // Re-enables delivery atomically: no event is lost.
            let _ = guest_abi::hypercall::sched_block();
        }
    }
}
