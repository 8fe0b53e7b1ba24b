//! The guest's machine-level pieces: the ELF notes that make the image a Xen
//! PV kernel, the hypercall page the hypervisor fills in, the entry point
//! (ring 3, `rsi` = start_info) and the boot stack. All of the library's
//! `unsafe` is here.

pub mod mem;
pub mod shared;
pub mod thread;
pub mod traps;
pub mod vcpu;

use core::sync::atomic::{AtomicPtr, AtomicU32, AtomicUsize, Ordering};
use guest_abi::types::Port;

/// An event-channel port handler: a function and the context it is called
/// with, so a driver can keep its state where it likes (a `static`, or a
/// leaked heap value) rather than in statics the handler names.
///
/// - [`Handler::new`]`(f)`: a plain `fn(Port)`;
/// - [`Handler::with`]`(&state, f)`: `f(&state, port)` for a `&'static T`;
/// - a function item or a closure that captures nothing can be passed to the
///   `bind_*` functions directly (see [`IntoHandler`]).
///
/// Handlers run in the event upcall with events masked on this vCPU.
#[derive(Clone, Copy)]
pub struct Handler {
    call: fn(*const (), Port),
    ctx: *const (),
}

// SAFETY: `ctx` is null, a function pointer, or a `&'static T` with
// `T: Sync` (see the constructors), so calling the handler from any vCPU
// shares only `Sync` data.
unsafe impl Send for Handler {}
// SAFETY: as for `Send`.
unsafe impl Sync for Handler {}

impl core::fmt::Debug for Handler {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Handler")
            .field("call", &(self.call as *const ()))
            .field("ctx", &self.ctx)
            .finish()
    }
}

fn call_plain(ctx: *const (), port: Port) {
    // SAFETY: `Handler::new` stored a `fn(Port)` in `ctx`; function and data
    // pointers have the same size on x86_64.
    let f = unsafe { core::mem::transmute::<*const (), fn(Port)>(ctx) };
    f(port);
}

fn call_zst<F: Fn(Port)>(ctx: *const (), port: Port) {
    // SAFETY: `ctx` is `NonNull::<F>::dangling()`, a valid reference to a
    // zero-sized `F` (checked at compile time by `into_handler`), which is
    // `Copy`: a value of it existed when the handler was made.
    let f = unsafe { &*ctx.cast::<F>() };
    f(port);
}

impl Handler {
    /// A handler calling `f(port)`.
    #[must_use]
    pub fn new(f: fn(Port)) -> Self {
        Self {
            call: call_plain,
            ctx: f as *const (),
        }
    }

    /// A handler calling `f(ctx, port)`: `ctx` is the driver's state.
    ///
    /// ```no_run
    /// use core::sync::atomic::{AtomicU64, Ordering};
    /// use pv_guest_kernel::events::{self, Handler};
    /// use pv_guest_kernel::Port;
    ///
    /// struct Counter { hits: AtomicU64 }
    /// impl Counter {
    ///     fn on_event(&self, _port: Port) {
    ///         self.hits.fetch_add(1, Ordering::Relaxed);
    ///     }
    /// }
    /// static COUNTER: Counter = Counter { hits: AtomicU64::new(0) };
    ///
    /// events::init().unwrap();
    /// let port = events::bind_ipi(Handler::with(&COUNTER, Counter::on_event)).unwrap();
    /// events::send(port).unwrap();
    /// ```
    #[must_use]
    pub fn with<T: Sync + 'static>(ctx: &'static T, f: fn(&'static T, Port)) -> Self {
        // SAFETY: `&T` (T sized) and `*const ()` are ABI-compatible, so
        // calling `f` through this type with `ctx` cast back is calling it
        // with `ctx`.
        let call = unsafe { core::mem::transmute::<fn(&'static T, Port), fn(*const (), Port)>(f) };
        Self {
            call,
            ctx: (ctx as *const T).cast(),
        }
    }

    /// Runs the handler for `port`.
    pub fn call(&self, port: Port) {
        (self.call)(self.ctx, port);
    }
}

/// What the `bind_*` functions of [`crate::events`] accept as a handler: a
/// [`Handler`], or a function item or closure that captures nothing (a
/// zero-sized `Fn(Port)`; anything that captures state goes through
/// [`Handler::with`], which is checked at compile time).
pub trait IntoHandler {
    /// The handler.
    fn into_handler(self) -> Handler;
}

impl IntoHandler for Handler {
    fn into_handler(self) -> Handler {
        self
    }
}

impl<F: Fn(Port) + Copy + Sync + 'static> IntoHandler for F {
    fn into_handler(self) -> Handler {
        const {
            assert!(
                size_of::<F>() == 0,
                "a handler passed by value must capture nothing: use Handler::with(&state, f) or Handler::new(f)"
            )
        };
        Handler {
            call: call_zst::<F>,
            ctx: core::ptr::NonNull::<F>::dangling()
                .as_ptr()
                .cast_const()
                .cast(),
        }
    }
}

/// Bumped to odd before and to even after every change of a
/// [`HandlerSlot`]: a reader that saw the same even value before and after
/// reading a slot read one handler, not half of two (the upcall reads slots
/// without a lock: a lock taken with events on could be held by the code it
/// interrupted).
static SLOT_SEQ: AtomicU32 = AtomicU32::new(0);
/// Serialises the writers of [`HandlerSlot`]s.
static SLOT_WRITER: spin::Mutex<()> = spin::Mutex::new(());

/// A port's handler, as two words read and written without a lock.
pub(crate) struct HandlerSlot {
    call: AtomicUsize,
    ctx: AtomicPtr<()>,
}

impl HandlerSlot {
    pub(crate) const fn empty() -> Self {
        Self {
            call: AtomicUsize::new(0),
            ctx: AtomicPtr::new(core::ptr::null_mut()),
        }
    }

    /// Sets or clears the handler. Events are masked on this vCPU meanwhile,
    /// so no upcall here waits for the write it interrupted.
    pub(crate) fn set(&self, h: Option<Handler>) {
        let was = crate::events::save_and_disable();
        {
            let _w = SLOT_WRITER.lock();
            SLOT_SEQ.fetch_add(1, Ordering::SeqCst);
            let (call, ctx) = h.map_or((0, core::ptr::null_mut()), |h| {
                (h.call as usize, h.ctx.cast_mut())
            });
            self.call.store(call, Ordering::SeqCst);
            self.ctx.store(ctx, Ordering::SeqCst);
            SLOT_SEQ.fetch_add(1, Ordering::SeqCst);
        }
        crate::events::restore(was);
    }

    pub(crate) fn get(&self) -> Option<Handler> {
        loop {
            let s1 = SLOT_SEQ.load(Ordering::SeqCst);
            if s1 & 1 != 0 {
                core::hint::spin_loop();
                continue;
            }
            let call = self.call.load(Ordering::SeqCst);
            let ctx = self.ctx.load(Ordering::SeqCst);
            if SLOT_SEQ.load(Ordering::SeqCst) != s1 {
                continue;
            }
            if call == 0 {
                return None;
            }
            // SAFETY: a non-zero `call` was stored by `set` from a
            // `Handler`'s `fn(*const (), Port)` together with this `ctx`
            // (the unchanged sequence number says no write came between),
            // and function pointers are never null.
            let call = unsafe { core::mem::transmute::<usize, fn(*const (), Port)>(call) };
            return Some(Handler {
                call,
                ctx: ctx.cast_const(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Ctx {
        hits: AtomicU32,
        last: AtomicU32,
    }

    impl Ctx {
        const fn new() -> Self {
            Self {
                hits: AtomicU32::new(0),
                last: AtomicU32::new(0),
            }
        }
        fn on_event(&self, port: Port) {
            self.hits.fetch_add(1, Ordering::SeqCst);
            self.last.store(port.0, Ordering::SeqCst);
        }
    }

    static A: Ctx = Ctx::new();
    static B: Ctx = Ctx::new();
    static PLAIN: AtomicU32 = AtomicU32::new(0);

    fn plain(port: Port) {
        PLAIN.store(port.0, Ordering::SeqCst);
    }

    #[test]
    fn each_handler_reaches_its_own_context() {
        let slot = HandlerSlot::empty();
        assert!(slot.get().is_none());
        slot.set(Some(Handler::with(&A, Ctx::on_event)));
        slot.get().expect("set").call(Port(7));
        slot.set(Some(Handler::with(&B, Ctx::on_event)));
        slot.get().expect("set").call(Port(9));
        slot.get().expect("set").call(Port(10));
        assert_eq!(A.hits.load(Ordering::SeqCst), 1);
        assert_eq!(A.last.load(Ordering::SeqCst), 7);
        assert_eq!(B.hits.load(Ordering::SeqCst), 2);
        assert_eq!(B.last.load(Ordering::SeqCst), 10);
        // A context on the heap, as a driver's state would be.
        let heap: &'static Ctx = Box::leak(Box::new(Ctx::new()));
        slot.set(Some(Handler::with(heap, Ctx::on_event)));
        slot.get().expect("set").call(Port(11));
        assert_eq!(heap.last.load(Ordering::SeqCst), 11);
        assert_eq!(B.hits.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn plain_functions_and_closures() {
        let slot = HandlerSlot::empty();
        slot.set(Some(Handler::new(plain)));
        slot.get().expect("set").call(Port(3));
        assert_eq!(PLAIN.load(Ordering::SeqCst), 3);
        slot.set(Some(plain.into_handler()));
        slot.get().expect("set").call(Port(4));
        assert_eq!(PLAIN.load(Ordering::SeqCst), 4);
        let closure = |p: Port| PLAIN.store(p.0 + 100, Ordering::SeqCst);
        slot.set(Some(closure.into_handler()));
        slot.get().expect("set").call(Port(5));
        assert_eq!(PLAIN.load(Ordering::SeqCst), 105);
        slot.set(None);
        assert!(slot.get().is_none());
    }
}

/// Size of the boot stack the entry point switches to.
pub const STACK_SIZE: usize = 64 * 1024;

// The Xen ELF notes, the hypercall page and `_start` (a switch to the boot
// stack, then `rt::start` with the start_info page), from guest-abi's macros.
#[cfg(target_os = "none")]
guest_abi::xen_elfnotes! {
    guest_os: "microvisor-pv-guest",
    guest_version: "0.1",
    entry: _start,
}
#[cfg(target_os = "none")]
guest_abi::hypercall_page!();
#[cfg(target_os = "none")]
guest_abi::pv_entry!(crate::rt::start, stack = STACK_SIZE);

unsafe extern "C" {
    static hypercall_page: [u8; 4096];
}

/// Address of the hypercall page (stub `n` is at `+ 32 * n`).
pub fn hypercall_page_addr() -> u64 {
    (&raw const hypercall_page) as u64
}
