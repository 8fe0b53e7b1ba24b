//! Checks every size and offset the project documents for the wire structures
//! (docs: `/work/shared/xen-pv-abi.md`, `xen-pv-start-of-day.md`) against the
//! Rust definitions, plus the numbering facts other crates build on.

use core::mem::{offset_of, size_of};

use crate::arch::*;
use crate::callback::*;
use crate::event_channel::*;
use crate::grant_table::*;
use crate::io::blkif::*;
use crate::io::console::*;
use crate::io::netif::*;
use crate::io::ring::*;
use crate::io::xenstore::*;
use crate::memory::*;
use crate::mmu::*;
use crate::multicall::*;
use crate::sched::*;
use crate::shared_info::*;
use crate::start_info::*;
use crate::vcpu::*;
use crate::version::*;

#[test]
fn start_info_layout() {
    assert_eq!(size_of::<StartInfo>(), 1168);
    assert_eq!(offset_of!(StartInfo, magic), 0);
    assert_eq!(offset_of!(StartInfo, nr_pages), 32);
    assert_eq!(offset_of!(StartInfo, shared_info), 40);
    assert_eq!(offset_of!(StartInfo, flags), 48);
    assert_eq!(offset_of!(StartInfo, store_mfn), 56);
    assert_eq!(offset_of!(StartInfo, store_evtchn), 64);
    assert_eq!(offset_of!(StartInfo, console), 72);
    assert_eq!(
        offset_of!(StartInfo, console) + offset_of!(StartInfoConsole, mfn),
        72
    );
    assert_eq!(
        offset_of!(StartInfo, console) + offset_of!(StartInfoConsole, evtchn),
        80
    );
    assert_eq!(offset_of!(StartInfo, pt_base), 88);
    assert_eq!(offset_of!(StartInfo, nr_pt_frames), 96);
    assert_eq!(offset_of!(StartInfo, mfn_list), 104);
    assert_eq!(offset_of!(StartInfo, mod_start), 112);
    assert_eq!(offset_of!(StartInfo, mod_len), 120);
    assert_eq!(offset_of!(StartInfo, cmd_line), 128);
    assert_eq!(offset_of!(StartInfo, first_p2m_pfn), 1152);
    assert_eq!(offset_of!(StartInfo, nr_p2m_frames), 1160);
    // "the page is zero beyond 0x490"
    assert_eq!(size_of::<StartInfo>(), 0x490);
    assert_eq!(SIF_PRIVILEGED, 1);
    assert_eq!(SIF_INITDOMAIN, 2);
    assert_eq!(SIF_MOD_START_PFN, 8);
}

#[test]
fn shared_info_layout() {
    assert_eq!(size_of::<SharedInfo>(), 3136);
    assert_eq!(offset_of!(SharedInfo, vcpu_info), 0);
    assert_eq!(offset_of!(SharedInfo, evtchn_pending), 2048);
    assert_eq!(offset_of!(SharedInfo, evtchn_mask), 2560);
    assert_eq!(offset_of!(SharedInfo, wc_version), 3072);
    assert_eq!(offset_of!(SharedInfo, wc_sec), 3076);
    assert_eq!(offset_of!(SharedInfo, wc_nsec), 3080);
    assert_eq!(offset_of!(SharedInfo, wc_sec_hi), 3084);
    assert_eq!(offset_of!(SharedInfo, arch), 3088);
    assert_eq!(offset_of!(ArchSharedInfo, max_pfn), 0);
    assert_eq!(offset_of!(ArchSharedInfo, pfn_to_mfn_frame_list_list), 8);
    assert_eq!(offset_of!(ArchSharedInfo, nmi_reason), 16);
    assert_eq!(offset_of!(ArchSharedInfo, p2m_cr3), 24);
    assert_eq!(offset_of!(ArchSharedInfo, p2m_vaddr), 32);
    assert_eq!(offset_of!(ArchSharedInfo, p2m_generation), 40);
    assert_eq!(size_of::<ArchSharedInfo>(), 48);
    assert!(size_of::<SharedInfo>() <= crate::PAGE_SIZE);
}

#[test]
fn vcpu_info_layout() {
    assert_eq!(size_of::<VcpuInfo>(), 64);
    assert_eq!(offset_of!(VcpuInfo, evtchn_upcall_pending), 0);
    assert_eq!(offset_of!(VcpuInfo, evtchn_upcall_mask), 1);
    assert_eq!(offset_of!(VcpuInfo, evtchn_pending_sel), 8);
    assert_eq!(offset_of!(VcpuInfo, arch), 16);
    assert_eq!(
        offset_of!(VcpuInfo, arch) + offset_of!(ArchVcpuInfo, cr2),
        16
    );
    assert_eq!(offset_of!(VcpuInfo, time), 32);
    assert_eq!(size_of::<ArchVcpuInfo>(), 16);

    assert_eq!(size_of::<VcpuTimeInfo>(), 32);
    assert_eq!(offset_of!(VcpuTimeInfo, version), 0);
    assert_eq!(offset_of!(VcpuTimeInfo, tsc_timestamp), 8);
    assert_eq!(offset_of!(VcpuTimeInfo, system_time), 16);
    assert_eq!(offset_of!(VcpuTimeInfo, tsc_to_system_mul), 24);
    assert_eq!(offset_of!(VcpuTimeInfo, tsc_shift), 28);
    assert_eq!(offset_of!(VcpuTimeInfo, flags), 29);
}

#[test]
fn arch_layouts() {
    assert_eq!(size_of::<TrapInfo>(), 16);
    assert_eq!(offset_of!(TrapInfo, vector), 0);
    assert_eq!(offset_of!(TrapInfo, flags), 1);
    assert_eq!(offset_of!(TrapInfo, cs), 2);
    assert_eq!(offset_of!(TrapInfo, address), 8);

    assert_eq!(size_of::<IretContext>(), 72);
    let names = [
        offset_of!(IretContext, rax),
        offset_of!(IretContext, r11),
        offset_of!(IretContext, rcx),
        offset_of!(IretContext, flags),
        offset_of!(IretContext, rip),
        offset_of!(IretContext, cs),
        offset_of!(IretContext, rflags),
        offset_of!(IretContext, rsp),
        offset_of!(IretContext, ss),
    ];
    for (i, off) in names.iter().enumerate() {
        assert_eq!(*off, i * 8);
    }

    assert_eq!(size_of::<CpuUserRegs>(), 200);
    assert_eq!(offset_of!(CpuUserRegs, rdi), 112);
    assert_eq!(offset_of!(CpuUserRegs, error_code), 120);
    assert_eq!(offset_of!(CpuUserRegs, entry_vector), 124);
    assert_eq!(offset_of!(CpuUserRegs, rip), 128);
    assert_eq!(offset_of!(CpuUserRegs, cs), 136);
    assert_eq!(offset_of!(CpuUserRegs, saved_upcall_mask), 140);
    assert_eq!(offset_of!(CpuUserRegs, rflags), 144);
    assert_eq!(offset_of!(CpuUserRegs, rsp), 152);
    assert_eq!(offset_of!(CpuUserRegs, ss), 160);
    assert_eq!(offset_of!(CpuUserRegs, es), 168);
    assert_eq!(offset_of!(CpuUserRegs, ds), 176);
    assert_eq!(offset_of!(CpuUserRegs, fs), 184);
    assert_eq!(offset_of!(CpuUserRegs, gs), 192);

    assert_eq!(size_of::<VcpuGuestContext>(), 5168);
    assert_eq!(offset_of!(VcpuGuestContext, flags), 512);
    assert_eq!(offset_of!(VcpuGuestContext, user_regs), 520);
    assert_eq!(offset_of!(VcpuGuestContext, trap_ctxt), 720);
    assert_eq!(offset_of!(VcpuGuestContext, ldt_base), 4816);
    assert_eq!(offset_of!(VcpuGuestContext, gdt_frames), 4832);
    assert_eq!(offset_of!(VcpuGuestContext, gdt_ents), 4960);
    assert_eq!(offset_of!(VcpuGuestContext, kernel_ss), 4968);
    assert_eq!(offset_of!(VcpuGuestContext, kernel_sp), 4976);
    assert_eq!(offset_of!(VcpuGuestContext, ctrlreg), 4984);
    assert_eq!(offset_of!(VcpuGuestContext, debugreg), 5048);
    assert_eq!(offset_of!(VcpuGuestContext, event_callback_eip), 5112);
    assert_eq!(offset_of!(VcpuGuestContext, vm_assist), 5136);
    assert_eq!(offset_of!(VcpuGuestContext, gs_base_user), 5160);
}

#[test]
fn mmu_layouts() {
    assert_eq!(size_of::<MmuUpdate>(), 16);
    assert_eq!(offset_of!(MmuUpdate, ptr), 0);
    assert_eq!(offset_of!(MmuUpdate, val), 8);
    assert_eq!(size_of::<MmuextOp>(), 24);
    assert_eq!(offset_of!(MmuextOp, cmd), 0);
    assert_eq!(offset_of!(MmuextOp, arg1), 8);
    assert_eq!(offset_of!(MmuextOp, arg2), 16);
    assert_eq!(size_of::<MulticallEntry>(), 64);
    assert_eq!(offset_of!(MulticallEntry, op), 0);
    assert_eq!(offset_of!(MulticallEntry, result), 8);
    assert_eq!(offset_of!(MulticallEntry, args), 16);
}

#[test]
fn hypercall_argument_layouts() {
    assert_eq!(size_of::<SchedShutdown>(), 4);
    assert_eq!(size_of::<SchedPoll>(), 24);
    assert_eq!(offset_of!(SchedPoll, nr_ports), 8);
    assert_eq!(offset_of!(SchedPoll, timeout), 16);
    assert_eq!(size_of::<SchedRemoteShutdown>(), 8);
    assert_eq!(offset_of!(SchedRemoteShutdown, reason), 4);

    assert_eq!(size_of::<XenFeatureInfo>(), 8);
    assert_eq!(offset_of!(XenFeatureInfo, submap), 4);
    assert_eq!(size_of::<XenCompileInfo>(), 144);
    assert_eq!(offset_of!(XenCompileInfo, compile_by), 64);
    assert_eq!(offset_of!(XenCompileInfo, compile_domain), 80);
    assert_eq!(offset_of!(XenCompileInfo, compile_date), 112);
    assert_eq!(size_of::<XenExtraversion>(), 16);
    assert_eq!(size_of::<XenCapabilitiesInfo>(), 1024);
    assert_eq!(size_of::<XenChangesetInfo>(), 64);

    assert_eq!(size_of::<CallbackRegister>(), 16);
    assert_eq!(offset_of!(CallbackRegister, address), 8);
    assert_eq!(size_of::<VcpuRunstateInfo>(), 48);
    assert_eq!(offset_of!(VcpuRunstateInfo, state_entry_time), 8);
    assert_eq!(size_of::<VcpuSetSingleshotTimer>(), 16);
    assert_eq!(size_of::<VcpuRegisterVcpuInfo>(), 16);

    assert_eq!(size_of::<XenMemoryReservation>(), 32);
    assert_eq!(offset_of!(XenMemoryReservation, extent_order), 16);
    assert_eq!(offset_of!(XenMemoryReservation, domid), 24);
    assert_eq!(size_of::<XenMemoryMap>(), 16);
    assert_eq!(offset_of!(XenMemoryMap, buffer), 8);
    assert_eq!(size_of::<E820Entry>(), 20);
    assert_eq!(size_of::<XenAddToPhysmap>(), 24);
}

#[test]
fn event_channel_layouts() {
    assert_eq!(size_of::<EvtchnAllocUnbound>(), 8);
    assert_eq!(offset_of!(EvtchnAllocUnbound, remote_dom), 2);
    assert_eq!(offset_of!(EvtchnAllocUnbound, port), 4);
    assert_eq!(size_of::<EvtchnBindInterdomain>(), 12);
    assert_eq!(offset_of!(EvtchnBindInterdomain, remote_port), 4);
    assert_eq!(offset_of!(EvtchnBindInterdomain, local_port), 8);
    assert_eq!(size_of::<EvtchnBindVirq>(), 12);
    assert_eq!(offset_of!(EvtchnBindVirq, port), 8);
    assert_eq!(size_of::<EvtchnStatus>(), 24);
    assert_eq!(offset_of!(EvtchnStatus, port), 4);
    assert_eq!(offset_of!(EvtchnStatus, status), 8);
    assert_eq!(offset_of!(EvtchnStatus, vcpu), 12);
    assert_eq!(offset_of!(EvtchnStatus, u), 16);
    assert_eq!(EvtchnSend::CMD, 4);
    assert_eq!(EvtchnUnmask::CMD, 9);
    assert_eq!(EvtchnReset::CMD, 10);
    assert_eq!(EVTCHN_2L_NR_CHANNELS, 4096);
    // FIFO ABI (public/event_channel.h).
    assert_eq!(size_of::<EvtchnInitControl>(), 24);
    assert_eq!(offset_of!(EvtchnInitControl, offset), 8);
    assert_eq!(offset_of!(EvtchnInitControl, vcpu), 12);
    assert_eq!(offset_of!(EvtchnInitControl, link_bits), 16);
    assert_eq!(EvtchnInitControl::CMD, 11);
    assert_eq!(size_of::<EvtchnExpandArray>(), 8);
    assert_eq!(EvtchnExpandArray::CMD, 12);
    assert_eq!(size_of::<EvtchnSetPriority>(), 8);
    assert_eq!(offset_of!(EvtchnSetPriority, priority), 4);
    assert_eq!(EvtchnSetPriority::CMD, 13);
    assert_eq!(size_of::<EvtchnFifoControlBlock>(), 72);
    assert_eq!(offset_of!(EvtchnFifoControlBlock, head), 8);
    assert_eq!(EVTCHN_FIFO_LINK_MASK, 0x1_FFFF);
    assert_eq!(EVTCHN_FIFO_MAX_EVENT_ARRAY_PAGES, 128);
    assert_eq!(EVTCHN_FIFO_PRIORITY_DEFAULT, 7);
    assert_eq!(NR_VIRQS, 24);
}

#[test]
fn grant_table_layouts() {
    assert_eq!(size_of::<GrantEntryV1>(), 8);
    assert_eq!(GRANT_ENTRIES_V1_PER_PAGE, 512);
    assert_eq!(offset_of!(GrantEntryV1, domid), 2);
    assert_eq!(offset_of!(GrantEntryV1, frame), 4);
    assert_eq!(size_of::<GnttabMapGrantRef>(), 32);
    assert_eq!(offset_of!(GnttabMapGrantRef, flags), 8);
    assert_eq!(offset_of!(GnttabMapGrantRef, ref_), 12);
    assert_eq!(offset_of!(GnttabMapGrantRef, dom), 16);
    assert_eq!(offset_of!(GnttabMapGrantRef, status), 18);
    assert_eq!(offset_of!(GnttabMapGrantRef, handle), 20);
    assert_eq!(offset_of!(GnttabMapGrantRef, dev_bus_addr), 24);
    assert_eq!(size_of::<GnttabUnmapGrantRef>(), 24);
    assert_eq!(offset_of!(GnttabUnmapGrantRef, handle), 16);
    assert_eq!(offset_of!(GnttabUnmapGrantRef, status), 20);
    assert_eq!(size_of::<GnttabSetupTable>(), 24);
    assert_eq!(offset_of!(GnttabSetupTable, nr_frames), 4);
    assert_eq!(offset_of!(GnttabSetupTable, status), 8);
    assert_eq!(offset_of!(GnttabSetupTable, frame_list), 16);
    assert_eq!(size_of::<GnttabCopy>(), 40);
    assert_eq!(offset_of!(GnttabCopy, dest), 16);
    assert_eq!(offset_of!(GnttabCopy, len), 32);
    assert_eq!(offset_of!(GnttabCopy, flags), 34);
    assert_eq!(offset_of!(GnttabCopy, status), 36);
    assert_eq!(offset_of!(GnttabCopyPtr, domid), 8);
    assert_eq!(offset_of!(GnttabCopyPtr, offset), 10);
    assert_eq!(size_of::<GnttabQuerySize>(), 16);
    assert_eq!(offset_of!(GnttabQuerySize, nr_frames), 4);
    assert_eq!(offset_of!(GnttabQuerySize, max_nr_frames), 8);
    assert_eq!(offset_of!(GnttabQuerySize, status), 12);
    assert_eq!(GTF_READONLY, 1 << 2);
    assert_eq!(GTF_READING, 1 << 3);
    assert_eq!(GTF_WRITING, 1 << 4);
    assert_eq!(GNTST_EAGAIN, -12);
    // v2: the union's members at Xen's offsets, 256 entries and 2048 status
    // words per page.
    assert_eq!(size_of::<GrantEntryV2>(), 16);
    assert_eq!(GRANT_ENTRIES_V2_PER_PAGE, 256);
    assert_eq!(GRANT_STATUS_PER_PAGE, 2048);
    assert_eq!(offset_of!(GrantEntryV2, domid), 2);
    assert_eq!(offset_of!(GrantEntryV2, word1), 4);
    assert_eq!(offset_of!(GrantEntryV2, frame), 8);
    let sub = GrantEntryV2 {
        word1: GrantEntryV2::sub_page_word(0x123, 0x456),
        frame: 0x1_0000_0007,
        ..Default::default()
    };
    let b = zerocopy::IntoBytes::as_bytes(&sub);
    assert_eq!(&b[4..8], &[0x23, 0x01, 0x56, 0x04]);
    assert_eq!((sub.page_off(), sub.length()), (0x123, 0x456));
    assert_eq!((sub.trans_domid(), sub.trans_gref()), (0x123, 7));
    assert_eq!(size_of::<GnttabGetStatusFrames>(), 16);
    assert_eq!(offset_of!(GnttabGetStatusFrames, dom), 4);
    assert_eq!(offset_of!(GnttabGetStatusFrames, status), 6);
    assert_eq!(offset_of!(GnttabGetStatusFrames, frame_list), 8);
    assert_eq!(crate::memory::XENMAPIDX_GRANT_TABLE_STATUS, 0x8000_0000);
}

#[test]
fn io_layouts() {
    assert_eq!(size_of::<SringHeader>(), 64);
    assert_eq!(offset_of!(SringHeader, req_prod), 0);
    assert_eq!(offset_of!(SringHeader, req_event), 4);
    assert_eq!(offset_of!(SringHeader, rsp_prod), 8);
    assert_eq!(offset_of!(SringHeader, rsp_event), 12);

    assert_eq!(size_of::<BlkifRequest>(), 112);
    assert_eq!(offset_of!(BlkifRequest, operation), 0);
    assert_eq!(offset_of!(BlkifRequest, nr_segments), 1);
    assert_eq!(offset_of!(BlkifRequest, handle), 2);
    assert_eq!(offset_of!(BlkifRequest, id), 8);
    assert_eq!(offset_of!(BlkifRequest, sector_number), 16);
    assert_eq!(offset_of!(BlkifRequest, seg), 24);
    assert_eq!(size_of::<BlkifRequestSegment>(), 8);
    assert_eq!(offset_of!(BlkifRequestSegment, first_sect), 4);
    assert_eq!(offset_of!(BlkifRequestSegment, last_sect), 5);
    assert_eq!(size_of::<BlkifResponse>(), 16);
    assert_eq!(offset_of!(BlkifResponse, operation), 8);
    assert_eq!(offset_of!(BlkifResponse, status), 10);
    assert_eq!(BLKIF_RING_SIZE, 32);

    assert_eq!(size_of::<NetifTxRequest>(), 12);
    assert_eq!(offset_of!(NetifTxRequest, offset), 4);
    assert_eq!(offset_of!(NetifTxRequest, flags), 6);
    assert_eq!(offset_of!(NetifTxRequest, id), 8);
    assert_eq!(offset_of!(NetifTxRequest, size), 10);
    assert_eq!(size_of::<NetifTxResponse>(), 4);
    assert_eq!(size_of::<NetifRxRequest>(), 8);
    assert_eq!(offset_of!(NetifRxRequest, gref), 4);
    assert_eq!(size_of::<NetifRxResponse>(), 8);
    assert_eq!(offset_of!(NetifRxResponse, status), 6);
    assert_eq!(NET_TX_RING_SIZE, 256);
    assert_eq!(NET_RX_RING_SIZE, 256);

    assert_eq!(offset_of!(XenconsInterface, input), 0);
    assert_eq!(offset_of!(XenconsInterface, output), 1024);
    assert_eq!(offset_of!(XenconsInterface, in_cons), 3072);
    assert_eq!(offset_of!(XenconsInterface, in_prod), 3076);
    assert_eq!(offset_of!(XenconsInterface, out_cons), 3080);
    assert_eq!(offset_of!(XenconsInterface, out_prod), 3084);
    assert_eq!(XENCONS_IN_OFFSET, 0);
    assert_eq!(XENCONS_IN_CONS_OFFSET, 3072);
    assert_eq!(XENCONS_IN_PROD_OFFSET, 3076);
    assert_eq!(XENCONS_OUT_OFFSET, 1024);
    assert_eq!(XENCONS_OUT_CONS_OFFSET, 3080);
    assert_eq!(XENCONS_OUT_PROD_OFFSET, 3084);
    assert_eq!(offset_of!(XenconsInterface, connection), 3088);

    assert_eq!(size_of::<XsdSockmsg>(), 16);
    assert_eq!(offset_of!(XsdSockmsg, len), 12);
    assert_eq!(offset_of!(XenstoreDomainInterface, rsp), 1024);
    assert_eq!(offset_of!(XenstoreDomainInterface, req_cons), 2048);
    assert_eq!(offset_of!(XenstoreDomainInterface, rsp_prod), 2060);
    assert_eq!(offset_of!(XenstoreDomainInterface, server_features), 2064);
    assert_eq!(offset_of!(XenstoreDomainInterface, connection), 2068);
    assert_eq!(offset_of!(XenstoreDomainInterface, error), 2072);
    assert_eq!(offset_of!(XenstoreDomainInterface, evtchn_port), 2076);
}

#[test]
fn numbers_match_the_abi_doc() {
    use crate::nr;
    let table: &[(u64, &str)] = &[
        (0, "set_trap_table"),
        (1, "mmu_update"),
        (2, "set_gdt"),
        (3, "stack_switch"),
        (4, "set_callbacks"),
        (5, "fpu_taskswitch"),
        (12, "memory_op"),
        (13, "multicall"),
        (14, "update_va_mapping"),
        (15, "set_timer_op"),
        (17, "xen_version"),
        (18, "console_io"),
        (20, "grant_table_op"),
        (21, "vm_assist"),
        (23, "iret"),
        (24, "vcpu_op"),
        (25, "set_segment_base"),
        (26, "mmuext_op"),
        (29, "sched_op"),
        (30, "callback_op"),
        (32, "event_channel_op"),
        (33, "physdev_op"),
        (36, "domctl"),
        (41, "dm_op"),
        (42, "hypfs_op"),
    ];
    for &(n, name) in table {
        assert_eq!(nr::name(n), Some(name), "hypercall {n}");
    }
    assert_eq!(nr::name(11), None);
    assert_eq!(nr::name(43), None);
    assert_eq!(nr::name(56), None);

    assert_eq!(crate::memory::XENMEM_POPULATE_PHYSMAP, 6);
    assert_eq!(crate::memory::XENMEM_MEMORY_MAP, 9);
    assert_eq!(crate::memory::XENMEM_EXCHANGE, 11);
    assert_eq!(UVMF_INVLPG, 2);
    assert_eq!(UVMF_ALL, 4);
    assert_eq!(VGCF_IN_SYSCALL, 1 << 8);
    assert_eq!(MMUEXT_SET_LDT, 13);
    assert_eq!(MMUEXT_NEW_USER_BASEPTR, 15);
    assert_eq!(MMUEXT_COPY_PAGE, 17);
    assert_eq!(VCPUOP_REGISTER_VCPU_INFO, 10);
    assert_eq!(CALLBACKTYPE_NMI, 4);
    assert_eq!(crate::DomId::SELF.0, 0x7FF0);
    assert_eq!(crate::DomId::IO.0, 0x7FF1);
    assert_eq!(crate::DomId::XEN.0, 0x7FF2);
    assert_eq!(FLAT_KERNEL_CS64, 0xe033);
    assert_eq!(FLAT_KERNEL_SS64, 0xe02b);
    assert_eq!(FLAT_USER_CS32, 0xe023);
    assert_eq!(HYPERVISOR_VIRT_START, 0xFFFF_8000_0000_0000);
    assert_eq!(HYPERVISOR_VIRT_END, 0xFFFF_8800_0000_0000);
    assert_eq!(
        HYPERVISOR_VIRT_START >> 39 & 511,
        HYPERVISOR_L4_FIRST_SLOT as u64
    );
    assert_eq!(
        (HYPERVISOR_VIRT_END - 1) >> 39 & 511,
        HYPERVISOR_L4_LAST_SLOT as u64
    );
    assert_eq!(FIRST_RESERVED_GDT_ENTRY, 7168);
    assert_eq!((0xe033 >> 3) - FIRST_RESERVED_GDT_ENTRY, 6);
}

#[test]
fn elf_note_numbers() {
    use crate::elfnote::*;
    let expected = [
        (1, "ENTRY"),
        (2, "HYPERCALL_PAGE"),
        (3, "VIRT_BASE"),
        (4, "PADDR_OFFSET"),
        (5, "XEN_VERSION"),
        (6, "GUEST_OS"),
        (7, "GUEST_VERSION"),
        (8, "LOADER"),
        (9, "PAE_MODE"),
        (10, "FEATURES"),
        (11, "BSD_SYMTAB"),
        (12, "HV_START_LOW"),
        (13, "L1_MFN_VALID"),
        (14, "SUSPEND_CANCEL"),
        (15, "INIT_P2M"),
        (16, "MOD_START_PFN"),
        (17, "SUPPORTED_FEATURES"),
        (18, "PHYS32_ENTRY"),
    ];
    for (ty, n) in expected {
        assert_eq!(name(ty), Some(n));
    }
    assert!(is_string(XEN_ELFNOTE_GUEST_OS));
    assert!(!is_string(XEN_ELFNOTE_ENTRY));
    assert_eq!(read_numeric(&[0x00, 0x10, 0, 0, 0, 0, 0, 0]), Some(0x1000));
    assert_eq!(read_numeric(&[0x34, 0x12]), Some(0x1234));
    assert_eq!(read_numeric(&[1, 2, 3]), None);
}

#[test]
fn hypercall_page_bytes() {
    assert_eq!(
        &hypercall_stub(18)[..15],
        &[
            0x51, 0x41, 0x53, 0xB8, 18, 0, 0, 0, 0x0F, 0x05, 0x41, 0x5B, 0x59, 0xC3, 0xCC
        ]
    );
    assert_eq!(
        &hypercall_stub(23)[..12],
        &[
            0x51, 0x41, 0x53, 0x50, 0xB8, 0x17, 0, 0, 0, 0x0F, 0x05, 0xCC
        ]
    );
    let mut page = [0u8; crate::PAGE_SIZE];
    fill_hypercall_page(&mut page);
    assert_eq!(&page[0x2E0..0x2E0 + 32], &hypercall_stub(23));
    assert_eq!(&page[127 * 32..], &hypercall_stub(127));
    assert_eq!(page[32 * 5 + 4], 5);
}
