//! The console back-end (the role of Xen's xenconsoled): drains each
//! guest's console ring page (`struct xencons_interface`: `in[1024]`,
//! `out[2048]`, then `in_cons`, `in_prod`, `out_cons`, `out_prod`) and
//! writes every complete line to the serial console prefixed with the
//! guest's name (unless the manifest shows only the guest's `console_io`
//! copy: its ring is then consumed without being written out); forwards
//! input bytes into one chosen guest's `in` ring.
//! Indices come from the guest and are checked: a producer more than a ring
//! ahead is clamped to one ring of output (as the hypervisor's own drain
//! does), never trusted as a length.

use alloc::string::String;
use alloc::vec::Vec;
use guest_abi::io::console::{
    XENCONS_IN_CONS_OFFSET, XENCONS_IN_OFFSET, XENCONS_IN_PROD_OFFSET, XENCONS_IN_SIZE,
    XENCONS_OUT_CONS_OFFSET, XENCONS_OUT_OFFSET, XENCONS_OUT_PROD_OFFSET, XENCONS_OUT_SIZE,
};
use guest_abi::io::ring::SharedPage;
use guest_abi::types::Port;
use pv_guest_kernel::page::MappedPage;

// Where `struct xencons_interface`'s parts lie in the page (guest-abi's
// `XenconsInterface`, Xen's public io/console.h).
const IN: usize = XENCONS_IN_OFFSET;
const OUT: usize = XENCONS_OUT_OFFSET;
const IN_CONS: usize = XENCONS_IN_CONS_OFFSET;
const IN_PROD: usize = XENCONS_IN_PROD_OFFSET;
const OUT_CONS: usize = XENCONS_OUT_CONS_OFFSET;
const OUT_PROD: usize = XENCONS_OUT_PROD_OFFSET;
const OUT_SIZE: u32 = XENCONS_OUT_SIZE as u32;
const IN_SIZE: u32 = XENCONS_IN_SIZE as u32;
/// A line longer than this is written out in pieces.
const LINE_MAX: usize = 200;

/// Guest bytes shown as text without allocating: valid UTF-8 as is, each
/// invalid sequence as U+FFFD.
struct Lossy<'a>(&'a [u8]);

impl core::fmt::Display for Lossy<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        for chunk in self.0.utf8_chunks() {
            f.write_str(chunk.valid())?;
            if !chunk.invalid().is_empty() {
                f.write_str("\u{fffd}")?;
            }
        }
        Ok(())
    }
}

/// One guest's console.
pub struct Console {
    pub page: MappedPage,
    pub port: Port,
    pub name: String,
    line: Vec<u8>,
    /// Bytes consumed from the ring so far.
    pub bytes: u64,
    /// Whether its lines are written out (false: consumed only).
    shown: bool,
}

impl Console {
    pub fn new(page: MappedPage, port: Port, name: String, shown: bool) -> Self {
        // The line never grows past LINE_MAX (it is written out there), so
        // this is the only allocation a console makes: nothing the guest
        // writes allocates in the service domain.
        Self {
            page,
            port,
            name,
            line: Vec::with_capacity(LINE_MAX),
            bytes: 0,
            shown,
        }
    }

    /// Drains the `out` ring; returns whether anything was consumed (the
    /// guest is then notified).
    pub fn pump(&mut self) -> bool {
        let cons = self.page.load_u32(OUT_CONS);
        let prod = self.page.load_u32(OUT_PROD);
        self.page.read_fence();
        let avail = prod.wrapping_sub(cons).min(OUT_SIZE);
        if avail == 0 {
            return false;
        }
        if self.shown {
            for i in 0..avail {
                let b = self
                    .page
                    .read_u8(OUT + (cons.wrapping_add(i) % OUT_SIZE) as usize);
                self.byte(b);
            }
        }
        self.page.fence();
        self.page.store_u32(OUT_CONS, cons.wrapping_add(avail));
        self.bytes += u64::from(avail);
        true
    }

    fn byte(&mut self, b: u8) {
        match b {
            b'\n' => self.flush(),
            b'\r' => {}
            _ => {
                // Within the capacity reserved at creation: never reallocates.
                if self.line.len() < self.line.capacity() {
                    self.line.push(b);
                }
                if self.line.len() >= LINE_MAX {
                    self.flush();
                }
            }
        }
    }

    /// Writes out a line (a partial one at the guest's death, say).
    pub fn flush(&mut self) {
        if self.shown {
            pv_guest_kernel::println!("[{}] {}", self.name, Lossy(&self.line));
        }
        self.line.clear();
    }

    /// Queues input bytes into the guest's `in` ring (as many as fit);
    /// returns how many were taken.
    pub fn input(&mut self, data: &[u8]) -> usize {
        let p = &self.page;
        let cons = p.load_u32(IN_CONS);
        let prod = p.load_u32(IN_PROD);
        let used = prod.wrapping_sub(cons);
        if used > IN_SIZE {
            return 0;
        }
        let n = data.len().min((IN_SIZE - used) as usize);
        for (i, &b) in data.iter().take(n).enumerate() {
            p.write_u8(IN + (prod.wrapping_add(i as u32) % IN_SIZE) as usize, b);
        }
        p.write_fence();
        p.store_u32(IN_PROD, prod.wrapping_add(n as u32));
        n
    }
}
