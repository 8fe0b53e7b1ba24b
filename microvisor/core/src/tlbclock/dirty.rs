//! The dirty-CPU mask invariant (Xen's `d->dirty_cpumask`), as the
//! frame-table audit checks it: every CPU that may hold translations
//! through a domain's page tables is in that domain's mask. Flushes of a
//! domain's own page-table changes reach only the CPUs in its mask, so a CPU
//! missing from it could keep using an entry the domain removed.
//!
//! What the audit sees of a CPU ([`CpuView`]) names the domains whose
//! translations it may hold, each for a [`Reason`]; [`first_missing`] finds
//! the first of them whose mask lacks the CPU's bit. A bit set for a CPU
//! that holds nothing of the domain is no error (a needless flush at most).

/// Why a CPU may hold translations through a domain's page tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// It holds one of the domain's vCPUs (runs it, or entered the
    /// hypervisor from it).
    HoldsVcpu,
    /// One of the domain's page tables is, or may be without a switch, the
    /// CPU's loaded one (CR3: the held vCPU's kernel or user table, or what
    /// the auditing CPU reads from its own CR3).
    LoadedTable,
    /// The CPU's own record says it joined the domain's mask last and has
    /// not left it (it leaves only after a full flush).
    Joined,
}

impl Reason {
    /// The reason in words, for the audit's failure line.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::HoldsVcpu => "it holds one of the domain's vCPUs",
            Reason::LoadedTable => "one of the domain's page tables is loaded there",
            Reason::Joined => "it recorded itself as in that mask",
        }
    }
}

/// What the audit saw of one CPU: the domains whose translations it may
/// hold, by domain id (`None`: nothing for that reason).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuView {
    /// The CPU's number (its bit in a mask).
    pub cpu: usize,
    /// The domain of the vCPU it holds.
    pub holds: Option<u16>,
    /// The owners of the page tables it has, or may have, loaded.
    pub tables: [Option<u16>; 3],
    /// The domain whose mask it recorded joining.
    pub joined: Option<u16>,
}

impl CpuView {
    /// Each domain this CPU may hold translations of, with why.
    fn claims(&self) -> impl Iterator<Item = (u16, Reason)> + '_ {
        (self.holds.map(|d| (d, Reason::HoldsVcpu)).into_iter())
            .chain(
                self.tables
                    .iter()
                    .flatten()
                    .map(|&d| (d, Reason::LoadedTable)),
            )
            .chain(self.joined.map(|d| (d, Reason::Joined)))
    }
}

/// A CPU missing from the dirty mask of a domain it may hold translations
/// of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Missing {
    /// The CPU.
    pub cpu: usize,
    /// The domain.
    pub dom: u16,
    /// The domain's mask as read.
    pub mask: u64,
    /// Why the CPU should be in it.
    pub why: Reason,
}

/// The first CPU of `cpus` (in order; the first reason of each) that is not
/// in the mask `mask` gives for a domain it may hold translations of. A
/// CPU number a 64-bit mask cannot name is always missing.
pub fn first_missing(
    cpus: impl IntoIterator<Item = CpuView>,
    mask: impl Fn(u16) -> u64,
) -> Option<Missing> {
    cpus.into_iter().find_map(|v| {
        let bit = u32::try_from(v.cpu)
            .ok()
            .and_then(|c| 1u64.checked_shl(c))
            .unwrap_or(0);
        v.claims().find_map(|(dom, why)| {
            let m = mask(dom);
            (m & bit == 0).then_some(Missing {
                cpu: v.cpu,
                dom,
                mask: m,
                why,
            })
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masks(m: &[(u16, u64)]) -> impl Fn(u16) -> u64 + '_ {
        move |d| m.iter().find(|&&(id, _)| id == d).map_or(0, |&(_, b)| b)
    }

    #[test]
    fn a_cpu_in_every_mask_it_needs_passes() {
        let cpus = [
            CpuView {
                cpu: 0,
                holds: Some(1),
                tables: [Some(1), Some(1), None],
                joined: Some(1),
            },
            CpuView {
                cpu: 1,
                holds: Some(2),
                tables: [Some(2), None, Some(2)],
                joined: Some(2),
            },
            // Idle: nothing loaded, in no mask.
            CpuView {
                cpu: 2,
                ..CpuView::default()
            },
        ];
        assert_eq!(first_missing(cpus, masks(&[(1, 0b001), (2, 0b010)])), None);
        // Extra bits (a CPU that left without the mask knowing yet, or a
        // stale one) are allowed: a needless flush, never a missed one.
        assert_eq!(first_missing(cpus, masks(&[(1, !0), (2, !0)])), None);
    }

    #[test]
    fn each_reason_alone_makes_the_bit_required() {
        let base = CpuView {
            cpu: 3,
            ..CpuView::default()
        };
        let cases = [
            (
                CpuView {
                    holds: Some(5),
                    ..base
                },
                Reason::HoldsVcpu,
            ),
            (
                CpuView {
                    tables: [None, None, Some(5)],
                    ..base
                },
                Reason::LoadedTable,
            ),
            (
                CpuView {
                    joined: Some(5),
                    ..base
                },
                Reason::Joined,
            ),
        ];
        for (view, why) in cases {
            // Another CPU's bit, and another domain's mask, do not count.
            let m = [(5, 0b0111), (6, 0b1000)];
            assert_eq!(
                first_missing([view], masks(&m)),
                Some(Missing {
                    cpu: 3,
                    dom: 5,
                    mask: 0b0111,
                    why
                }),
                "{why:?}"
            );
            assert_eq!(first_missing([view], masks(&[(5, 0b1000)])), None);
        }
    }

    #[test]
    fn the_first_cpu_and_its_first_reason_are_named() {
        let cpus = [
            CpuView {
                cpu: 0,
                holds: Some(1),
                joined: Some(1),
                ..CpuView::default()
            },
            // Holds domain 2's vCPU but still recorded in domain 1's mask
            // (a switch that joined and never left is fine; one that left
            // the new domain's mask is not).
            CpuView {
                cpu: 1,
                holds: Some(2),
                tables: [Some(2), None, None],
                joined: Some(1),
            },
        ];
        let got = first_missing(cpus, masks(&[(1, 0b11), (2, 0b01)]));
        assert_eq!(
            got,
            Some(Missing {
                cpu: 1,
                dom: 2,
                mask: 0b01,
                why: Reason::HoldsVcpu
            })
        );
        // The joined domain's mask lacking the bit is found too.
        let got = first_missing(cpus, masks(&[(1, 0b01), (2, 0b10)]));
        assert_eq!(
            got.map(|m| (m.cpu, m.dom, m.why)),
            Some((1, 1, Reason::Joined))
        );
    }

    #[test]
    fn a_cpu_a_mask_cannot_name_is_missing() {
        let v = CpuView {
            cpu: 64,
            holds: Some(1),
            ..CpuView::default()
        };
        assert!(first_missing([v], |_| !0).is_some());
        let idle = CpuView {
            cpu: 64,
            ..CpuView::default()
        };
        assert_eq!(first_missing([idle], |_| !0), None);
    }
}
