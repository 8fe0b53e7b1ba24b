//! Test doubles for host tests of back-ends and front-ends (feature
//! `testing`): the service domain's store ([`MemStore`]) and kernel
//! services ([`SimPlatform`]: grants are a table of plain-memory pages,
//! ports a set of numbers), so [`Devices`](crate::Devices) runs on the host
//! exactly as in the service domain. `splitfront`'s own `testing` module
//! puts a front-end on the other side of the same store and pages.

extern crate std;

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::Cell;

use guest_abi::errno::Errno;
use guest_abi::io::ring::testing::MemPage;
use guest_abi::io::xenbus::XenbusState;

use crate::{Platform, SharedPage, Store};

/// An in-memory xenstore: values and permissions by absolute path. It
/// enforces no permissions (tests check them by reading [`perms`](Self::perms)).
#[derive(Default)]
pub struct MemStore {
    /// Node values.
    pub nodes: BTreeMap<String, Vec<u8>>,
    /// Node permissions as set (wire form).
    pub perms: BTreeMap<String, Vec<u8>>,
    /// Writes under this prefix fail with `ENOSPC`.
    pub refuse: Option<String>,
}

impl Store for MemStore {
    fn read(&mut self, path: &str) -> Result<Vec<u8>, Errno> {
        self.nodes.get(path).cloned().ok_or(Errno::ENOENT)
    }
    fn write(&mut self, path: &str, value: &[u8]) -> Result<(), Errno> {
        if self.refuse.as_deref().is_some_and(|p| path.starts_with(p)) {
            return Err(Errno::ENOSPC);
        }
        self.nodes.insert(path.into(), value.to_vec());
        Ok(())
    }
    fn set_perms(&mut self, path: &str, perms: &[u8]) -> Result<(), Errno> {
        self.perms.insert(path.into(), perms.to_vec());
        Ok(())
    }
}

impl MemStore {
    /// The text of `path`, if present.
    #[must_use]
    pub fn get(&self, path: &str) -> Option<String> {
        self.nodes
            .get(path)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    /// The state in `dir/state` (`Unknown` if absent or not a state).
    #[must_use]
    pub fn state(&self, dir: &str) -> XenbusState {
        self.nodes
            .get(&alloc::format!("{dir}/state"))
            .and_then(|v| XenbusState::parse(v))
            .unwrap_or(XenbusState::Unknown)
    }

    /// Writes `dir/key` = value for each pair (a front-end writing its own
    /// directory).
    pub fn put(&mut self, dir: &str, nodes: &[(&str, &str)]) {
        for (k, v) in nodes {
            self.nodes
                .insert(alloc::format!("{dir}/{k}"), v.as_bytes().to_vec());
        }
    }

    /// Writes `dir/state`.
    pub fn put_state(&mut self, dir: &str, s: XenbusState) {
        self.put(dir, &[("state", s.as_text())]);
    }
}

/// A ring page mapped by [`SimPlatform::map_ring`]; dropping it "unmaps" it
/// (the platform's live count goes down).
pub struct SimPage {
    page: MemPage,
    live: Rc<Cell<usize>>,
    this: Rc<Cell<usize>>,
}

impl Drop for SimPage {
    fn drop(&mut self) {
        self.live.set(self.live.get() - 1);
        self.this.set(self.this.get() - 1);
    }
}

impl SharedPage for SimPage {
    fn load_u32(&self, off: usize) -> u32 {
        self.page.load_u32(off)
    }
    fn store_u32(&self, off: usize, v: u32) {
        self.page.store_u32(off, v);
    }
    fn read_bytes(&self, off: usize, out: &mut [u8]) {
        self.page.read_bytes(off, out);
    }
    fn write_bytes(&self, off: usize, data: &[u8]) {
        self.page.write_bytes(off, data);
    }
    fn fence(&self) {}
}

/// The service domain's kernel, simulated: `grants` holds what front-ends
/// granted (domain, reference) → page; `offered` the unbound ports they
/// allocated for us; `bound` our ports; `notified` every event we sent;
/// `log` every line printed.
#[derive(Default)]
pub struct SimPlatform {
    /// Grants front-ends made to us.
    pub grants: BTreeMap<(u16, u32), MemPage>,
    /// Unbound ports front-ends allocated for us.
    pub offered: BTreeSet<(u16, u32)>,
    /// Our bound ports, with the (domain, port) each is bound to.
    pub bound: BTreeMap<u32, (u16, u32)>,
    /// Events we sent, by our port.
    pub notified: Vec<u32>,
    /// Lines logged.
    pub log: Vec<String>,
    /// Pages mapped now.
    pub live: Rc<Cell<usize>>,
    /// Every slot a page was mapped at, in order.
    pub slots_used: Vec<u64>,
    /// Mappings of each grant now.
    maps: BTreeMap<(u16, u32), Rc<Cell<usize>>>,
    next_port: u32,
}

impl Platform for SimPlatform {
    type Page = SimPage;
    fn map_ring(&mut self, dom: u16, gref: u32, slot: u64) -> Result<SimPage, String> {
        let page = self
            .grants
            .get(&(dom, gref))
            .ok_or_else(|| String::from("status -4"))?
            .clone();
        self.live.set(self.live.get() + 1);
        self.slots_used.push(slot);
        let this = self.maps.entry((dom, gref)).or_default().clone();
        this.set(this.get() + 1);
        Ok(SimPage {
            page,
            live: self.live.clone(),
            this,
        })
    }
    fn bind(&mut self, dom: u16, port: u32) -> Result<u32, String> {
        if !self.offered.remove(&(dom, port)) {
            return Err("EINVAL".into());
        }
        self.next_port += 1;
        self.bound.insert(self.next_port, (dom, port));
        Ok(self.next_port)
    }
    fn notify(&mut self, port: u32) {
        assert!(self.bound.contains_key(&port), "event on a closed port");
        self.notified.push(port);
    }
    fn unbind(&mut self, port: u32) {
        assert!(self.bound.remove(&port).is_some(), "closing a port twice");
    }
    fn log(&mut self, line: core::fmt::Arguments<'_>) {
        let line = alloc::format!("{line}");
        std::println!("(service) {line}");
        self.log.push(line);
    }
}

impl SimPlatform {
    /// Whether a logged line contains `text`.
    #[must_use]
    pub fn logged(&self, text: &str) -> bool {
        self.log.iter().any(|l| l.contains(text))
    }

    /// Whether grant `gref` of `dom` is mapped now.
    #[must_use]
    pub fn is_mapped(&self, dom: u16, gref: u32) -> bool {
        self.maps.get(&(dom, gref)).is_some_and(|c| c.get() > 0)
    }

    /// Whether nothing is mapped or bound.
    #[must_use]
    pub fn holds_nothing(&self) -> bool {
        self.live.get() == 0 && self.bound.is_empty()
    }
}
