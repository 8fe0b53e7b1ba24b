//! Feature bits reported by `XENVER_get_features` (`features.h`).
//!
//! Each constant is a bit number within submap 0 (the only one defined).

#![forbid(unsafe_code)]

/// Submaps of 32 feature bits that exist (`XENFEAT_NR_SUBMAPS`).
pub const XENFEAT_NR_SUBMAPS: u32 = 1;

/// The guest may write its page tables directly.
pub const XENFEAT_WRITABLE_PAGE_TABLES: u32 = 0;
/// The guest may write its descriptor tables directly.
pub const XENFEAT_WRITABLE_DESCRIPTOR_TABLES: u32 = 1;
/// The hypervisor translates pseudo-physical to machine addresses.
pub const XENFEAT_AUTO_TRANSLATED_PHYSMAP: u32 = 2;
/// The guest kernel runs in supervisor mode.
pub const XENFEAT_SUPERVISOR_MODE_KERNEL: u32 = 3;
/// PAE page directories may live above 4 GiB.
pub const XENFEAT_PAE_PGDIR_ABOVE_4GB: u32 = 4;
/// `MMU_PT_UPDATE_PRESERVE_AD` is supported.
pub const XENFEAT_MMU_PT_UPDATE_PRESERVE_AD: u32 = 5;
/// `MMUEXT_CLEAR_PAGE`/`MMUEXT_COPY_PAGE` are supported.
pub const XENFEAT_HIGHMEM_ASSIST: u32 = 6;
/// Grant mappings honour guest-available PTE bits.
pub const XENFEAT_GNTTAB_MAP_AVAIL_BITS: u32 = 7;
/// HVM callback vector available.
pub const XENFEAT_HVM_CALLBACK_VECTOR: u32 = 8;
/// The pvclock algorithm is safe on HVM.
pub const XENFEAT_HVM_SAFE_PVCLOCK: u32 = 9;
/// HVM guests may use pirqs.
pub const XENFEAT_HVM_PIRQS: u32 = 10;
/// Operation as the initial domain is supported.
pub const XENFEAT_DOM0: u32 = 11;
/// Deprecated: grant references also mapped at pfn = mfn.
pub const XENFEAT_GRANT_MAP_IDENTITY: u32 = 12;
/// Memory ops accept a virtual NUMA node.
pub const XENFEAT_MEMORY_OP_VNODE_SUPPORTED: u32 = 13;
/// Arm: SMCCC supported.
pub const XENFEAT_ARM_SMCCC_SUPPORTED: u32 = 14;
/// x86 PVH: the ACPI RSDP may be anywhere.
pub const XENFEAT_LINUX_RSDP_UNRESTRICTED: u32 = 15;
/// The domain is not direct-mapped (gfn != mfn).
pub const XENFEAT_NOT_DIRECT_MAPPED: u32 = 16;
/// The domain is direct-mapped (gfn == mfn).
pub const XENFEAT_DIRECT_MAPPED: u32 = 17;
/// `VCPUOP_register_runstate_phys_area` may be used.
pub const XENFEAT_RUNSTATE_PHYS_AREA: u32 = 18;
/// `VCPUOP_register_vcpu_time_phys_area` may be used.
pub const XENFEAT_VCPU_TIME_PHYS_AREA: u32 = 19;
/// All MSI-X control writes go to the device model.
pub const XENFEAT_DM_MSIX_ALL_WRITES: u32 = 20;

/// Whether bit `feature` is set in submap 0 value `submap`.
#[must_use]
pub const fn has(submap: u32, feature: u32) -> bool {
    feature < 32 && submap & (1 << feature) != 0
}
