//! The CPUID a 64-bit PV guest sees, as a pure function of the host's
//! answer: Xen's default PV feature set for the feature leaves, plus Xen's
//! hypervisor leaves.
//!
//! Xen offers a PV guest only the features its public
//! `arch-x86/cpufeatureset.h` marks for all guests ('A'); the ones marked
//! for HVM guests only ('S', 'H'), opt-in ('a'), or not at all stay hidden.
//! The ones that matter most to a PV kernel are the paging features a PV
//! guest cannot use: PSE, PSE36 and PAGE1GB (a guest that saw them would
//! write superpage entries, which `mmu_update` refuses with `EINVAL`), PGE,
//! and the CPL-0-only protections SMEP, SMAP and UMIP (a PV kernel runs in
//! ring 3). The feature words here are leaf 1 ECX/EDX, leaf 7 subleaf 0
//! EBX/ECX/EDX and leaf 0x8000_0001 ECX/EDX. Bits Xen marks special ('!')
//! keep the host's value (APIC, HTT, RDRAND, CMP_LEGACY, RTM,
//! FDP_EXCP_ONLY, NO_FPU_SEL, RTM_ALWAYS_ABORT), HYPERVISOR is always set,
//! and OSXSAVE is the host's where XSAVE is offered: what Xen's
//! forced-emulation CPUID shows a guest kernel (Xen leaks its own
//! CR4.OSXSAVE there, a de facto part of the PV ABI that Linux relies on).
//! FSGSBASE, which Xen offers, stays hidden: the guest's CR4.FSGSBASE is
//! not offered either. SEP is hidden on AMD and Hygon hosts, which have no
//! SYSENTER in long mode (Xen clears it from its own view of them). Xen
//! shows MTRR to its hardware domain (for the XENPF memtype calls of old
//! dom0 kernels); no domain sees it here.

/// Xen's hypervisor CPUID leaves begin here.
pub const XEN_LEAF_BASE: u32 = 0x4000_0000;

const fn bits(list: &[u32]) -> u32 {
    let mut m = 0;
    let mut i = 0;
    while i < list.len() {
        m |= 1 << list[i];
        i += 1;
    }
    m
}

/// Leaf 1 EDX offered to a PV guest: FPU, DE, TSC, MSR, PAE, MCE, CX8,
/// APIC (host), SEP, MCA, CMOV, PAT, CLFLUSH, ACPI, MMX, FXSR, SSE, SSE2,
/// SS, HTT (host). Hidden: VME, PSE, MTRR, PGE, PSE36 (HVM only), DS, TM1,
/// PBE.
pub const LEAF1_EDX: u32 = bits(&[
    0, 2, 4, 5, 6, 7, 8, 9, 11, 14, 15, 16, 19, 22, 23, 24, 25, 26, 27, 28,
]);

/// Leaf 1 ECX offered: SSE3, PCLMULQDQ, SSSE3, FMA, CX16, SSE4_1, SSE4_2,
/// MOVBE, POPCNT, AESNI, XSAVE, OSXSAVE (host, see the module docs), AVX,
/// F16C, RDRAND (host). Hidden: DTES64, MONITOR, DSCPL, VMX, SMX, EIST,
/// TM2, XTPR, PDCM, PCID, DCA, TSC_DEADLINE, and X2APIC (a PV guest has no
/// local APIC of its own: Xen 4.17 hides it, as `xen-linux-cpuid` shows);
/// HYPERVISOR is set.
pub const LEAF1_ECX: u32 = bits(&[0, 1, 9, 12, 13, 19, 20, 22, 23, 25, 26, 27, 28, 29, 30]);

/// CPUID.1:ECX.HYPERVISOR.
pub const HYPERVISOR: u32 = 1 << 31;

/// Leaf 7 subleaf 0 EBX offered: BMI1, AVX2, FDP_EXCP_ONLY (host), BMI2,
/// ERMS, RTM (host), NO_FPU_SEL (host), AVX512F, AVX512DQ, RDSEED, ADX,
/// AVX512_IFMA, CLFLUSHOPT, CLWB, AVX512PF, AVX512ER, AVX512CD, SHA,
/// AVX512BW, AVX512VL. Hidden: FSGSBASE (see the module docs), TSC_ADJUST,
/// SGX, HLE, SMEP, INVPCID, PQM, MPX, PQE, SMAP.
pub const LEAF7_EBX: u32 = bits(&[
    3, 5, 6, 8, 9, 11, 13, 16, 17, 18, 19, 21, 23, 24, 26, 27, 28, 29, 30, 31,
]);

/// Leaf 7 subleaf 0 ECX offered: PREFETCHWT1, AVX512_VBMI, AVX512_VBMI2,
/// GFNI, VAES, VPCLMULQDQ, AVX512_VNNI, AVX512_BITALG, AVX512_VPOPCNTDQ,
/// RDPID, CLDEMOTE. Hidden: UMIP, PKU, OSPKE, CET_SS, MOVDIRI, MOVDIR64B,
/// ENQCMD and the rest.
pub const LEAF7_ECX: u32 = bits(&[0, 1, 6, 8, 9, 10, 11, 12, 14, 22, 25]);

/// Leaf 7 subleaf 0 EDX offered: AVX512_4VNNIW, AVX512_4FMAPS, FSRM,
/// MD_CLEAR, RTM_ALWAYS_ABORT (host), IBRSB, STIBP, SSBD. Hidden: SRBDS_CTRL,
/// TSX_FORCE_ABORT, SERIALIZE, TSXLDTRK, CET_IBT, L1D_FLUSH, ARCH_CAPS,
/// CORE_CAPS and the rest.
pub const LEAF7_EDX: u32 = bits(&[2, 3, 4, 10, 11, 26, 27, 31]);

/// Leaf 0x8000_0001 EDX offered: SYSCALL, NX, MMXEXT, FFXSR, RDTSCP, LM,
/// 3DNOWEXT, 3DNOW, and, where AMD mirrors leaf 1 EDX in bits 0-17, 23
/// and 24, the ones [`LEAF1_EDX`] offers. Hidden: PAGE1GB (HAP only) and
/// the mirrors of PSE, PGE, PSE36, VME and MTRR.
pub const EXT1_EDX: u32 = bits(&[11, 20, 22, 25, 27, 29, 30, 31]) | (LEAF1_EDX & EXT1_MIRRORED);

/// The bits of leaf 0x8000_0001 EDX that AMD defines as copies of leaf 1
/// EDX.
const EXT1_MIRRORED: u32 = 0x3_ffff | 1 << 23 | 1 << 24;

/// Leaf 0x8000_0001 ECX offered: LAHF_LM, CMP_LEGACY (host), ABM, SSE4A,
/// MISALIGNSSE, 3DNOWPREFETCH, XOP, FMA4, TBM, DBEXT. Hidden: SVM,
/// EXTAPIC, CR8_LEGACY, OSVW, IBS, SKINIT, WDT, LWP, NODEID_MSR, TOPOEXT,
/// MONITORX.
pub const EXT1_ECX: u32 = bits(&[0, 1, 5, 6, 7, 8, 11, 16, 21, 26]);

/// CPUID.1:EDX.SEP (SYSENTER).
pub const SEP: u32 = 1 << 11;

/// True for the vendors (AMD, Hygon) whose CPUs have no SYSENTER in long
/// mode, from leaf 0's vendor string (EBX, EDX, ECX): Xen clears SEP from
/// its own view of such a CPU, so no guest sees it.
#[must_use]
pub fn no_long_mode_sysenter(leaf0: [u32; 4]) -> bool {
    let mut v = [0u8; 12];
    v[..4].copy_from_slice(&leaf0[1].to_le_bytes());
    v[4..8].copy_from_slice(&leaf0[3].to_le_bytes());
    v[8..].copy_from_slice(&leaf0[2].to_le_bytes());
    &v == b"AuthenticAMD" || &v == b"HygonGenuine"
}

/// The guest's answer for `leaf`/`sub` given the host's (`host` is what the
/// CPU returned for the same leaf; unused for the hypervisor leaves).
/// `version` is Xen's (major << 16 | minor), for leaf 0x4000_0001; `amd`
/// is [`no_long_mode_sysenter`] of the host (SEP then hidden).
#[must_use]
pub fn guest_cpuid(leaf: u32, sub: u32, host: [u32; 4], version: u32, amd: bool) -> [u32; 4] {
    let [a, b, c, d] = host;
    match leaf {
        // Xen's signature ("XenVMMXenVMM") and highest hypervisor leaf.
        XEN_LEAF_BASE => [
            XEN_LEAF_BASE + 2,
            u32::from_le_bytes(*b"XenV"),
            u32::from_le_bytes(*b"MMXe"),
            u32::from_le_bytes(*b"nVMM"),
        ],
        0x4000_0001 => [version, 0, 0, 0],
        // One hypercall page, its MSR.
        0x4000_0002 => [1, XEN_LEAF_BASE, 0, 0],
        0x4000_0003..=0x4000_00ff => [0; 4],
        // EBX's top byte, the initial APIC ID, is 0 for every PV vCPU, as
        // Xen gives it (the physical CPU's would leak the host's topology
        // and change as the vCPU moves; Linux checks it on each vCPU
        // against the APIC IDs it made up itself).
        1 => {
            let sep = if amd { SEP } else { 0 };
            [
                a,
                b & 0x00ff_ffff,
                (c & LEAF1_ECX) | HYPERVISOR,
                d & LEAF1_EDX & !sep,
            ]
        }
        7 if sub == 0 => [a, b & LEAF7_EBX, c & LEAF7_ECX, d & LEAF7_EDX],
        0x8000_0001 => [a, b, c & EXT1_ECX, d & EXT1_EDX],
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [u32; 4] = [!0; 4];

    #[test]
    fn paging_features_a_pv_guest_cannot_use_are_hidden() {
        let [_, _, c, d] = guest_cpuid(1, 0, ALL, 0, false);
        for bit in [1, 3, 12, 13, 17] {
            assert_eq!(d & 1 << bit, 0, "leaf 1 edx bit {bit}");
        }
        assert_eq!(c & (1 << 5 | 1 << 6 | 1 << 17), 0);
        assert_ne!(c & HYPERVISOR, 0);
        let [_, _, _, d] = guest_cpuid(0x8000_0001, 0, ALL, 0, false);
        for bit in [1, 3, 12, 13, 17, 26] {
            assert_eq!(d & 1 << bit, 0, "leaf 0x80000001 edx bit {bit}");
        }
        let [_, b, c, _] = guest_cpuid(7, 0, ALL, 0, false);
        // FSGSBASE, SMEP, SMAP; UMIP.
        assert_eq!(b & (1 | 1 << 7 | 1 << 20), 0);
        assert_eq!(c & 1 << 2, 0);
        let [_, _, c, _] = guest_cpuid(0x8000_0001, 0, ALL, 0, false);
        assert_eq!(c & 1 << 2, 0, "SVM");
    }

    #[test]
    fn offered_features_pass_through_and_absent_ones_stay_absent() {
        let [_, _, c, d] = guest_cpuid(1, 0, ALL, 0, false);
        // FPU, TSC, MSR, PAE, CX8, APIC, SEP, CMOV, PAT, FXSR, SSE2.
        for bit in [0, 4, 5, 6, 8, 9, 11, 15, 16, 24, 26] {
            assert_ne!(d & 1 << bit, 0, "leaf 1 edx bit {bit}");
        }
        // SSE3, CX16, XSAVE, AVX.
        for bit in [0, 13, 26, 28] {
            assert_ne!(c & 1 << bit, 0, "leaf 1 ecx bit {bit}");
        }
        // Nothing is invented: a host without features shows none (but
        // HYPERVISOR).
        assert_eq!(guest_cpuid(1, 0, [0; 4], 0, false), [0, 0, HYPERVISOR, 0]);
        assert_eq!(guest_cpuid(7, 0, [0; 4], 0, false), [0; 4]);
        // SYSCALL, NX, LM survive; other leaves and subleaves are the host's.
        let [_, _, _, d] = guest_cpuid(0x8000_0001, 0, ALL, 0, false);
        assert_eq!(
            d & (1 << 11 | 1 << 20 | 1 << 29),
            1 << 11 | 1 << 20 | 1 << 29
        );
        assert_eq!(guest_cpuid(7, 1, ALL, 0, false), ALL);
        assert_eq!(guest_cpuid(0, 0, [7, 1, 2, 3], 0, false), [7, 1, 2, 3]);
    }

    #[test]
    fn the_initial_apic_id_is_zero_the_rest_of_ebx_the_hosts() {
        // Host: APIC ID 3, 16 logical processors, CLFLUSH size 8, brand 1.
        let host = [0x000a_06a9, 0x0310_0801, 0, 0];
        let [a, b, _, _] = guest_cpuid(1, 0, host, 0, false);
        assert_eq!((a, b), (0x000a_06a9, 0x0010_0801));
    }

    #[test]
    fn sep_hidden_on_amd_and_hygon_hosts() {
        let vendor = |s: &[u8; 12]| {
            let w = |i: usize| u32::from_le_bytes([s[i], s[i + 1], s[i + 2], s[i + 3]]);
            [0, w(0), w(8), w(4)]
        };
        assert!(no_long_mode_sysenter(vendor(b"AuthenticAMD")));
        assert!(no_long_mode_sysenter(vendor(b"HygonGenuine")));
        assert!(!no_long_mode_sysenter(vendor(b"GenuineIntel")));
        assert_eq!(guest_cpuid(1, 0, ALL, 0, true)[3] & SEP, 0);
        assert_eq!(guest_cpuid(1, 0, ALL, 0, false)[3] & SEP, SEP);
    }

    #[test]
    fn hypervisor_leaves_are_xens() {
        let [a, b, c, d] = guest_cpuid(XEN_LEAF_BASE, 0, [0; 4], 0, false);
        assert_eq!(a, 0x4000_0002);
        let mut sig = [0u8; 12];
        sig[..4].copy_from_slice(&b.to_le_bytes());
        sig[4..8].copy_from_slice(&c.to_le_bytes());
        sig[8..].copy_from_slice(&d.to_le_bytes());
        assert_eq!(&sig, b"XenVMMXenVMM");
        assert_eq!(
            guest_cpuid(0x4000_0001, 0, ALL, 4 << 16 | 17, false)[0],
            4 << 16 | 17
        );
        assert_eq!(
            guest_cpuid(0x4000_0002, 0, ALL, 0, false),
            [1, XEN_LEAF_BASE, 0, 0]
        );
        assert_eq!(guest_cpuid(0x4000_0010, 0, ALL, 0, false), [0; 4]);
    }
}
