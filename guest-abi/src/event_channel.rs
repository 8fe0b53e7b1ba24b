//! Event channels (`event_channel.h`): `event_channel_op(cmd, arg)`.
//!
//! This module owns the `EVTCHNOP_*` numbers, one argument structure per
//! operation, the channel states, the VIRQ numbers and the 2-level port
//! arithmetic. Each argument structure implements [`EvtchnOp`], which ties it
//! to its command number so a typed wrapper can never pair the wrong ones.

#![forbid(unsafe_code)]

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::types::{DomId, Port, VcpuId};

/// Connect to a port another domain allocated for us: [`EvtchnBindInterdomain`].
pub const EVTCHNOP_BIND_INTERDOMAIN: u32 = 0;
/// Bind a VIRQ on a vCPU: [`EvtchnBindVirq`].
pub const EVTCHNOP_BIND_VIRQ: u32 = 1;
/// Bind a physical IRQ: [`EvtchnBindPirq`].
pub const EVTCHNOP_BIND_PIRQ: u32 = 2;
/// Close a port: [`EvtchnClose`].
pub const EVTCHNOP_CLOSE: u32 = 3;
/// Notify the other end of a port: [`EvtchnSend`].
pub const EVTCHNOP_SEND: u32 = 4;
/// Query a port: [`EvtchnStatus`].
pub const EVTCHNOP_STATUS: u32 = 5;
/// Allocate a port for a remote domain to bind: [`EvtchnAllocUnbound`].
pub const EVTCHNOP_ALLOC_UNBOUND: u32 = 6;
/// Allocate an inter-vCPU port: [`EvtchnBindIpi`].
pub const EVTCHNOP_BIND_IPI: u32 = 7;
/// Choose the vCPU a port notifies: [`EvtchnBindVcpu`].
pub const EVTCHNOP_BIND_VCPU: u32 = 8;
/// Unmask a port, re-raising it if pending: [`EvtchnUnmask`].
pub const EVTCHNOP_UNMASK: u32 = 9;
/// Close every port of a domain: [`EvtchnReset`].
pub const EVTCHNOP_RESET: u32 = 10;
/// FIFO ABI: register a control block.
pub const EVTCHNOP_INIT_CONTROL: u32 = 11;
/// FIFO ABI: add an event array page.
pub const EVTCHNOP_EXPAND_ARRAY: u32 = 12;
/// FIFO ABI: set a port's priority.
pub const EVTCHNOP_SET_PRIORITY: u32 = 13;
/// Continue a preempted reset.
pub const EVTCHNOP_RESET_CONT: u32 = 14;

/// The Xen name of an `EVTCHNOP_*` command.
#[must_use]
pub const fn op_name(cmd: u32) -> Option<&'static str> {
    Some(match cmd {
        EVTCHNOP_BIND_INTERDOMAIN => "bind_interdomain",
        EVTCHNOP_BIND_VIRQ => "bind_virq",
        EVTCHNOP_BIND_PIRQ => "bind_pirq",
        EVTCHNOP_CLOSE => "close",
        EVTCHNOP_SEND => "send",
        EVTCHNOP_STATUS => "status",
        EVTCHNOP_ALLOC_UNBOUND => "alloc_unbound",
        EVTCHNOP_BIND_IPI => "bind_ipi",
        EVTCHNOP_BIND_VCPU => "bind_vcpu",
        EVTCHNOP_UNMASK => "unmask",
        EVTCHNOP_RESET => "reset",
        EVTCHNOP_INIT_CONTROL => "init_control",
        EVTCHNOP_EXPAND_ARRAY => "expand_array",
        EVTCHNOP_SET_PRIORITY => "set_priority",
        EVTCHNOP_RESET_CONT => "reset_cont",
        _ => return None,
    })
}

/// Ports in the 2-level ABI on a 64-bit guest (64 × 64).
pub const EVTCHN_2L_NR_CHANNELS: u32 = 4096;

/// Word index of `port` in the 2-level bitmaps (and its selector bit).
#[must_use]
pub const fn port_word(port: Port) -> usize {
    (port.0 / 64) as usize
}

/// Bit mask of `port` within its word of the 2-level bitmaps.
#[must_use]
pub const fn port_bit(port: Port) -> u64 {
    1 << (port.0 % 64)
}

/// Channel state (`EvtchnStatus::status`): not in use.
pub const EVTCHNSTAT_CLOSED: u32 = 0;
/// Channel state: waiting for an inter-domain connection.
pub const EVTCHNSTAT_UNBOUND: u32 = 1;
/// Channel state: connected to a remote domain.
pub const EVTCHNSTAT_INTERDOMAIN: u32 = 2;
/// Channel state: bound to a physical IRQ.
pub const EVTCHNSTAT_PIRQ: u32 = 3;
/// Channel state: bound to a VIRQ.
pub const EVTCHNSTAT_VIRQ: u32 = 4;
/// Channel state: bound to an inter-vCPU IPI.
pub const EVTCHNSTAT_IPI: u32 = 5;

/// Per-vCPU timer (timebase update or timeout).
pub const VIRQ_TIMER: u32 = 0;
/// Per-vCPU: dump debug information.
pub const VIRQ_DEBUG: u32 = 1;
/// Global (dom0): bytes arrived on the hypervisor console.
pub const VIRQ_CONSOLE: u32 = 2;
/// Global (dom0): exceptional event for some domain (e.g. one died).
pub const VIRQ_DOM_EXC: u32 = 3;
/// Global (dom0): trace buffer has records.
pub const VIRQ_TBUF: u32 = 4;
/// Global (dom0): a domain paused for debugging.
pub const VIRQ_DEBUGGER: u32 = 6;
/// Per-vCPU: profiling sample available.
pub const VIRQ_XENOPROF: u32 = 7;
/// Global (dom0): bytes in the console ring.
pub const VIRQ_CON_RING: u32 = 8;
/// Global (dom0): physical CPU state changed.
pub const VIRQ_PCPU_STATE: u32 = 9;
/// Global (dom0): memory event.
pub const VIRQ_MEM_EVENT: u32 = 10;
/// Global: reserved.
pub const VIRQ_XC_RESERVED: u32 = 11;
/// Global (dom0): hypervisor low on heap memory.
pub const VIRQ_ENOMEM: u32 = 12;
/// Per-vCPU: PMU interrupt.
pub const VIRQ_XENPMU: u32 = 13;
/// First architecture-specific VIRQ (16..=23).
pub const VIRQ_ARCH_0: u32 = 16;
/// Number of VIRQs.
pub const NR_VIRQS: u32 = 24;

/// `EvtchnBindPirq::flags`: the IRQ may be shared.
pub const BIND_PIRQ_WILL_SHARE: u32 = 1;

mod sealed {
    pub trait Sealed {}
}

/// An `event_channel_op` argument structure, tied to its command number.
/// Sealed: only the structures of this module implement it.
pub trait EvtchnOp: sealed::Sealed + FromBytes + IntoBytes + KnownLayout + Immutable {
    /// The `EVTCHNOP_*` number this structure is the argument of.
    const CMD: u32;
}

macro_rules! evtchn_op {
    ($ty:ident, $cmd:ident, $size:literal) => {
        const _: () = assert!(size_of::<$ty>() == $size);
        impl sealed::Sealed for $ty {}
        impl EvtchnOp for $ty {
            const CMD: u32 = $cmd;
        }
    };
}

/// `EVTCHNOP_alloc_unbound` (8 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct EvtchnAllocUnbound {
    /// In: domain allocating the port (usually `DOMID_SELF`).
    pub dom: u16,
    /// In: domain allowed to bind it.
    pub remote_dom: u16,
    /// Out: the new port.
    pub port: u32,
}
evtchn_op!(EvtchnAllocUnbound, EVTCHNOP_ALLOC_UNBOUND, 8);

/// `EVTCHNOP_bind_interdomain` (12 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct EvtchnBindInterdomain {
    /// In: the remote domain.
    pub remote_dom: u16,
    /// Explicit padding (zero).
    pub _pad: u16,
    /// In: its unbound port.
    pub remote_port: u32,
    /// Out: the new local port (left pending on creation).
    pub local_port: u32,
}
evtchn_op!(EvtchnBindInterdomain, EVTCHNOP_BIND_INTERDOMAIN, 12);

/// `EVTCHNOP_bind_virq` (12 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct EvtchnBindVirq {
    /// In: `VIRQ_*` number.
    pub virq: u32,
    /// In: vCPU to bind on.
    pub vcpu: u32,
    /// Out: the new port.
    pub port: u32,
}
evtchn_op!(EvtchnBindVirq, EVTCHNOP_BIND_VIRQ, 12);

/// `EVTCHNOP_bind_pirq` (12 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct EvtchnBindPirq {
    /// In: physical IRQ.
    pub pirq: u32,
    /// In: [`BIND_PIRQ_WILL_SHARE`] or 0.
    pub flags: u32,
    /// Out: the new port.
    pub port: u32,
}
evtchn_op!(EvtchnBindPirq, EVTCHNOP_BIND_PIRQ, 12);

/// `EVTCHNOP_bind_ipi` (8 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct EvtchnBindIpi {
    /// In: vCPU to notify.
    pub vcpu: u32,
    /// Out: the new port.
    pub port: u32,
}
evtchn_op!(EvtchnBindIpi, EVTCHNOP_BIND_IPI, 8);

/// `EVTCHNOP_close` (4 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct EvtchnClose {
    /// In: port to close.
    pub port: u32,
}
evtchn_op!(EvtchnClose, EVTCHNOP_CLOSE, 4);

/// `EVTCHNOP_send` (4 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct EvtchnSend {
    /// In: local port whose remote end to notify.
    pub port: u32,
}
evtchn_op!(EvtchnSend, EVTCHNOP_SEND, 4);

/// `EVTCHNOP_status` (24 bytes). The trailing union is kept as two words;
/// use the accessors to read it according to `status`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct EvtchnStatus {
    /// In: domain owning the port (`DOMID_SELF` allowed).
    pub dom: u16,
    /// Explicit padding (zero).
    pub _pad: u16,
    /// In: the port.
    pub port: u32,
    /// Out: an `EVTCHNSTAT_*` value.
    pub status: u32,
    /// Out: the vCPU the port notifies.
    pub vcpu: u32,
    /// Out: state-dependent union (unbound: remote dom; interdomain: remote
    /// dom and port; pirq; virq).
    pub u: [u32; 2],
}
evtchn_op!(EvtchnStatus, EVTCHNOP_STATUS, 24);

impl EvtchnStatus {
    /// For `UNBOUND` and `INTERDOMAIN`: the remote domain.
    #[must_use]
    pub const fn remote_dom(&self) -> DomId {
        DomId(self.u[0] as u16)
    }

    /// For `INTERDOMAIN`: the remote port.
    #[must_use]
    pub const fn remote_port(&self) -> Port {
        Port(self.u[1])
    }

    /// For `PIRQ`: the IRQ; for `VIRQ`: the VIRQ number.
    #[must_use]
    pub const fn irq(&self) -> u32 {
        self.u[0]
    }
}

/// `EVTCHNOP_bind_vcpu` (8 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct EvtchnBindVcpu {
    /// In: the port.
    pub port: u32,
    /// In: the vCPU to notify from now on.
    pub vcpu: u32,
}
evtchn_op!(EvtchnBindVcpu, EVTCHNOP_BIND_VCPU, 8);

/// `EVTCHNOP_unmask` (4 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct EvtchnUnmask {
    /// In: the port.
    pub port: u32,
}
evtchn_op!(EvtchnUnmask, EVTCHNOP_UNMASK, 4);

/// `EVTCHNOP_reset` (2 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct EvtchnReset {
    /// In: domain whose ports to close (`DOMID_SELF` allowed).
    pub dom: u16,
}
evtchn_op!(EvtchnReset, EVTCHNOP_RESET, 2);

/// `EVTCHNOP_init_control` (24 bytes): registers `vcpu`'s FIFO control
/// block at byte `offset` of frame `control_gfn`; the first call switches
/// the domain from the 2-level ABI to FIFO.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct EvtchnInitControl {
    /// In: the frame holding the control block (a machine frame for PV).
    pub control_gfn: u64,
    /// In: byte offset of the control block in that frame (8-aligned, the
    /// whole [`EvtchnFifoControlBlock`] inside the page).
    pub offset: u32,
    /// In: the vCPU the control block belongs to.
    pub vcpu: u32,
    /// Out: bits in an event word's link field ([`EVTCHN_FIFO_LINK_BITS`]).
    pub link_bits: u8,
    /// Padding.
    pub pad: [u8; 7],
}
evtchn_op!(EvtchnInitControl, EVTCHNOP_INIT_CONTROL, 24);

/// `EVTCHNOP_expand_array` (8 bytes): adds one page of event words (the
/// next [`EVTCHN_FIFO_WORDS_PER_PAGE`] ports) to the FIFO event array.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct EvtchnExpandArray {
    /// In: the frame to add.
    pub array_gfn: u64,
}
evtchn_op!(EvtchnExpandArray, EVTCHNOP_EXPAND_ARRAY, 8);

/// `EVTCHNOP_set_priority` (8 bytes): the FIFO queue `port`'s future
/// events go to.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct EvtchnSetPriority {
    /// In: the port.
    pub port: u32,
    /// In: [`EVTCHN_FIFO_PRIORITY_MAX`] (0, highest) to
    /// [`EVTCHN_FIFO_PRIORITY_MIN`] (15, lowest).
    pub priority: u32,
}
evtchn_op!(EvtchnSetPriority, EVTCHNOP_SET_PRIORITY, 8);

/// FIFO event word bit: the event is pending.
pub const EVTCHN_FIFO_PENDING: u32 = 31;
/// FIFO event word bit: the event is masked.
pub const EVTCHN_FIFO_MASKED: u32 = 30;
/// FIFO event word bit: the event is on a queue.
pub const EVTCHN_FIFO_LINKED: u32 = 29;
/// FIFO event word bit: the hypervisor is changing the link field (the
/// guest must not clear MASKED itself while it is set).
pub const EVTCHN_FIFO_BUSY: u32 = 28;
/// Bits of the link field (the next port on the queue) of an event word.
pub const EVTCHN_FIFO_LINK_BITS: u32 = 17;
/// The link field of an event word.
pub const EVTCHN_FIFO_LINK_MASK: u32 = (1 << EVTCHN_FIFO_LINK_BITS) - 1;
/// Ports the FIFO ABI can name.
pub const EVTCHN_FIFO_NR_CHANNELS: u32 = 1 << EVTCHN_FIFO_LINK_BITS;
/// Highest priority (queue 0).
pub const EVTCHN_FIFO_PRIORITY_MAX: u32 = 0;
/// Priority of a newly bound port.
pub const EVTCHN_FIFO_PRIORITY_DEFAULT: u32 = 7;
/// Lowest priority (queue 15).
pub const EVTCHN_FIFO_PRIORITY_MIN: u32 = 15;
/// Queues per vCPU, one per priority.
pub const EVTCHN_FIFO_MAX_QUEUES: u32 = EVTCHN_FIFO_PRIORITY_MIN + 1;
/// Event words (ports) per event-array page.
pub const EVTCHN_FIFO_WORDS_PER_PAGE: u32 = 4096 / 4;
/// Most event-array pages a domain can add (Xen's limit).
pub const EVTCHN_FIFO_MAX_EVENT_ARRAY_PAGES: u32 =
    EVTCHN_FIFO_NR_CHANNELS / EVTCHN_FIFO_WORDS_PER_PAGE;

/// A vCPU's FIFO control block (72 bytes, in guest memory): `ready` has
/// bit `q` set while queue `q` may hold events; `head[q]` is the first
/// port of queue `q` when the hypervisor linked onto an empty queue.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct EvtchnFifoControlBlock {
    /// Bit per queue with events ready.
    pub ready: u32,
    /// Reserved.
    pub rsvd: u32,
    /// Each queue's head port.
    pub head: [u32; EVTCHN_FIFO_MAX_QUEUES as usize],
}
const _: () = assert!(size_of::<EvtchnFifoControlBlock>() == 72);

impl EvtchnAllocUnbound {
    /// A request for the caller to allocate a port `remote` may bind.
    #[must_use]
    pub const fn new(remote: DomId) -> Self {
        Self {
            dom: DomId::SELF.0,
            remote_dom: remote.0,
            port: 0,
        }
    }
}

impl EvtchnBindInterdomain {
    /// A request to connect to `remote_port` of `remote`.
    #[must_use]
    pub const fn new(remote: DomId, remote_port: Port) -> Self {
        Self {
            remote_dom: remote.0,
            _pad: 0,
            remote_port: remote_port.0,
            local_port: 0,
        }
    }
}

impl EvtchnBindVirq {
    /// A request to bind `virq` on `vcpu`.
    #[must_use]
    pub const fn new(virq: u32, vcpu: VcpuId) -> Self {
        Self {
            virq,
            vcpu: vcpu.0,
            port: 0,
        }
    }
}
