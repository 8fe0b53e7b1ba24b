use super::*;
use proptest::prelude::*;
use std::collections::BTreeMap;

/// Physical memory made of byte runs at addresses.
#[derive(Default)]
struct Mem(BTreeMap<u64, std::vec::Vec<u8>>);

impl PhysRead for Mem {
    fn read(&self, pa: u64, out: &mut [u8]) -> bool {
        for (&at, bytes) in &self.0 {
            if pa >= at && pa + out.len() as u64 <= at + bytes.len() as u64 {
                let o = (pa - at) as usize;
                out.copy_from_slice(&bytes[o..o + out.len()]);
                return true;
            }
        }
        false
    }
}

fn fix_checksum(t: &mut [u8], at: usize, over: usize) {
    t[at] = 0;
    let s = t[..over].iter().fold(0u8, |a, &b| a.wrapping_add(b));
    t[at] = 0u8.wrapping_sub(s);
}

fn header(sig: &[u8; 4], body: &[u8]) -> std::vec::Vec<u8> {
    let mut t = std::vec::Vec::new();
    t.extend_from_slice(sig);
    t.extend_from_slice(&((36 + body.len()) as u32).to_le_bytes());
    t.extend_from_slice(&[1, 0]);
    t.extend_from_slice(b"MVTEST");
    t.extend_from_slice(&[0; 8 + 4 + 4 + 4]);
    t.extend_from_slice(body);
    let n = t.len();
    fix_checksum(&mut t, 9, n);
    t
}

fn rsdp(rev: u8, rsdt: u32, xsdt: u64) -> std::vec::Vec<u8> {
    let mut r = std::vec::Vec::new();
    r.extend_from_slice(b"RSD PTR ");
    r.push(0);
    r.extend_from_slice(b"MVTEST");
    r.push(rev);
    r.extend_from_slice(&rsdt.to_le_bytes());
    r.extend_from_slice(&36u32.to_le_bytes());
    r.extend_from_slice(&xsdt.to_le_bytes());
    r.extend_from_slice(&[0; 4]);
    fix_checksum(&mut r, 8, 20);
    fix_checksum(&mut r, 32, 36);
    r
}

/// A MADT body: local APIC address, flags, then the entries.
fn madt(entries: &[std::vec::Vec<u8>]) -> std::vec::Vec<u8> {
    let mut b = std::vec::Vec::new();
    b.extend_from_slice(&0xfee0_0000u32.to_le_bytes());
    b.extend_from_slice(&1u32.to_le_bytes());
    for e in entries {
        b.extend_from_slice(e);
    }
    header(b"APIC", &b)
}

fn lapic(uid: u8, id: u8, flags: u32) -> std::vec::Vec<u8> {
    let mut e = vec![0u8, 8, uid, id];
    e.extend_from_slice(&flags.to_le_bytes());
    e
}

fn x2apic(id: u32, flags: u32) -> std::vec::Vec<u8> {
    let mut e = vec![9u8, 16, 0, 0];
    e.extend_from_slice(&id.to_le_bytes());
    e.extend_from_slice(&flags.to_le_bytes());
    e.extend_from_slice(&0u32.to_le_bytes());
    e
}

/// A machine like QEMU's: RSDP in the BIOS area, an RSDT (revision 0) or
/// an XSDT (revision 2) naming another table and the MADT.
fn machine(rev: u8, entries: &[std::vec::Vec<u8>]) -> Mem {
    let mut m = Mem::default();
    let facp = header(b"FACP", &[0; 8]);
    m.0.insert(0x7ff_0000, facp);
    m.0.insert(0x7ff_1000, madt(entries));
    if rev >= 2 {
        let mut body = std::vec::Vec::new();
        body.extend_from_slice(&0x7ff_0000u64.to_le_bytes());
        body.extend_from_slice(&0x7ff_1000u64.to_le_bytes());
        m.0.insert(0x7ff_2000, header(b"XSDT", &body));
        m.0.insert(0xf_5a40, rsdp(2, 0, 0x7ff_2000));
    } else {
        let mut body = std::vec::Vec::new();
        body.extend_from_slice(&0x7ff_0000u32.to_le_bytes());
        body.extend_from_slice(&0x7ff_1000u32.to_le_bytes());
        m.0.insert(0x7ff_2000, header(b"RSDT", &body));
        m.0.insert(0xf_5a40, rsdp(0, 0x7ff_2000, 0));
    }
    m
}

fn cpus(m: &Mem, hint: u64) -> Result<std::vec::Vec<u32>, AcpiError> {
    let r = find_rsdp(m, hint)?;
    let mut buf = vec![0u8; 64 * 1024];
    madt_apic_ids(m, r, &mut buf).map(|v| v.to_vec())
}

#[test]
fn finds_enabled_cpus_through_rsdt_and_xsdt() {
    let entries = [
        lapic(0, 0, 1),
        lapic(1, 1, 1),
        lapic(2, 4, 0),
        x2apic(300, 1),
        x2apic(1, 1),
    ];
    for rev in [0, 2] {
        let m = machine(rev, &entries);
        // Found by scanning (no hint), and at a hint.
        assert_eq!(cpus(&m, 0), Ok(vec![0, 1, 300]), "revision {rev}");
        assert_eq!(cpus(&m, 0xf_5a40), Ok(vec![0, 1, 300]), "revision {rev}");
    }
}

#[test]
fn refuses_what_is_broken() {
    let mut m = machine(0, &[lapic(0, 0, 1)]);
    // A bad MADT checksum.
    m.0.get_mut(&0x7ff_1000).unwrap()[12] ^= 1;
    assert_eq!(cpus(&m, 0), Err(AcpiError::Checksum("MADT")));
    // No RSDP anywhere.
    let empty = Mem::default();
    assert_eq!(cpus(&empty, 0x1000), Err(AcpiError::NoRsdp));
    // An RSDT naming no MADT.
    let mut m = machine(0, &[lapic(0, 0, 1)]);
    m.0.remove(&0x7ff_1000);
    m.0.insert(0x7ff_1000, header(b"HPET", &[0; 4]));
    assert_eq!(cpus(&m, 0), Err(AcpiError::NoMadt));
    // A truncated entry ends the list (what came before stays).
    let mut bad = lapic(1, 1, 1);
    bad[1] = 200;
    let m = machine(2, &[lapic(0, 0, 1), bad]);
    assert_eq!(cpus(&m, 0), Ok(vec![0]));
    // Too many CPUs.
    let many: std::vec::Vec<_> = (0..=MAX_CPUS as u32).map(|i| x2apic(i, 1)).collect();
    let m = machine(2, &many);
    assert_eq!(cpus(&m, 0), Err(AcpiError::TooManyCpus));
}

proptest! {
    /// Any bytes where the tables should be: an answer or an error, never
    /// a panic, never more than MAX_CPUS ids.
    #[test]
    fn any_bytes_are_decided(madt_body in proptest::collection::vec(any::<u8>(), 0..600), root in proptest::collection::vec(any::<u8>(), 0..80), fix in any::<bool>()) {
        let mut m = machine(2, &[lapic(0, 0, 1)]);
        let mut t = header(b"APIC", &madt_body);
        if !fix {
            t[9] = t[9].wrapping_add(1);
        }
        m.0.insert(0x7ff_1000, t);
        if !root.is_empty() {
            m.0.insert(0x7ff_2000, header(b"XSDT", &root));
        }
        if let Ok(ids) = cpus(&m, 0) {
            prop_assert!(ids.len() <= MAX_CPUS);
        }
    }
}
