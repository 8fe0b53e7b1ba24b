//! A front-end and a real `splitback` back-end in one host process
//! (feature `testing`): [`Loopback`] holds the back-end's devices over an
//! in-memory store and simulated platform; [`LoopStore`] is the front-end
//! domain's xenstore connection to that store and [`LoopKernel`] its
//! kernel, whose pages are the pages the back-end maps. The back-end runs
//! whenever the front-end waits (for a watch or an event), as it would on
//! one CPU, so a driver's `connect`, requests and `close` run on the host
//! exactly as in a guest, against its real back-end.
//!
//! ```ignore
//! let lo = Loopback::new(my_backend, 1);
//! lo.add("alice", 0, device_data);
//! let (core, link) = splitfront::connect::<MyFront<_>, _, _>(
//!     &mut lo.store(), lo.kernel(), Which::First)?;
//! ```

extern crate std;

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::RefCell;

use guest_abi::errno::Errno;
use guest_abi::io::ring::testing::MemPage;
use pv_guest_kernel::xenbus::Store;
use pv_guest_kernel::xenstore::WatchEvent;
use splitback::testing::{MemStore, SimPage, SimPlatform};
use splitback::{Backend, Devices, Slots};

use crate::Kernel;

/// Waits in a row that find the back-end with nothing to do before a test
/// is failed (a front-end waiting for a back-end that will never act).
const STUCK: usize = 1000;

/// Everything both sides share.
pub struct World<B: Backend<SimPage>> {
    /// The xenstore.
    pub store: MemStore,
    /// The back-end's kernel.
    pub platform: SimPlatform,
    /// The back-end's grant-mapping slots.
    pub slots: Slots,
    /// The back-end's devices.
    pub devs: Devices<B, SimPage>,
    fe_dom: u16,
    frames: BTreeMap<u64, MemPage>,
    next_frame: u64,
    next_gref: u32,
    next_port: u32,
    idle_waits: usize,
}

impl<B: Backend<SimPage>> World<B> {
    /// Runs the back-end until it has nothing left to do (bounded).
    /// Returns whether it did anything.
    pub fn run_backend(&mut self) -> bool {
        let mut any = false;
        for _ in 0..64 {
            let stepped = self
                .devs
                .step(&mut self.store, &mut self.platform, &mut self.slots);
            let served = self.devs.serve(&mut self.platform, &mut self.slots);
            let notified = !self.platform.notified.is_empty();
            self.platform.notified.clear();
            if !(stepped || served || notified) {
                break;
            }
            any = true;
        }
        if any {
            self.idle_waits = 0;
        } else {
            self.idle_waits += 1;
            assert!(
                self.idle_waits < STUCK,
                "the front-end waits for a back-end that has nothing to do"
            );
        }
        any
    }
}

/// The shared world (see the module docs).
pub struct Loopback<B: Backend<SimPage>>(Rc<RefCell<World<B>>>);

impl<B: Backend<SimPage>> Clone for Loopback<B> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<B: Backend<SimPage>> Loopback<B> {
    /// A back-end `backend` in domain 0 and a front-end domain `fe_dom`.
    pub fn new(backend: B, fe_dom: u16) -> Self {
        Self(Rc::new(RefCell::new(World {
            store: MemStore::default(),
            platform: SimPlatform::default(),
            slots: Slots::new(64, 16),
            devs: Devices::new(backend, 0),
            fe_dom,
            frames: BTreeMap::new(),
            next_frame: 0x1000,
            next_gref: 8,
            next_port: 10,
            idle_waits: 0,
        })))
    }

    /// The toolstack adds device `devid` for the front-end domain.
    ///
    /// # Panics
    /// If the store refuses (it does not).
    pub fn add(&self, name: &str, devid: u32, data: B::Device) {
        let mut w = self.0.borrow_mut();
        let w = &mut *w;
        let dom = w.fe_dom;
        w.devs.add(&mut w.store, dom, name, devid, data).unwrap();
    }

    /// The front-end domain's xenstore connection.
    #[must_use]
    pub fn store(&self) -> LoopStore<B> {
        LoopStore(self.clone())
    }

    /// The front-end domain's kernel.
    #[must_use]
    pub fn kernel(&self) -> LoopKernel<B> {
        LoopKernel(self.clone())
    }

    /// Runs `f` on the shared world (to inspect or tamper).
    pub fn with<R>(&self, f: impl FnOnce(&mut World<B>) -> R) -> R {
        f(&mut self.0.borrow_mut())
    }

    /// Runs the back-end until it is idle.
    pub fn run_backend(&self) -> bool {
        self.0.borrow_mut().run_backend()
    }
}

/// The front-end domain's xenstore connection (relative paths resolve
/// against its home).
pub struct LoopStore<B: Backend<SimPage>>(Loopback<B>);

impl<B: Backend<SimPage>> LoopStore<B> {
    fn abs(&self, path: &str) -> String {
        if path.starts_with('/') {
            String::from(path)
        } else {
            let dom = self.0.0.borrow().fe_dom;
            format!("/local/domain/{dom}/{path}")
        }
    }
}

impl<B: Backend<SimPage>> Store for LoopStore<B> {
    fn read(&mut self, _tx: u32, path: &str) -> Result<Vec<u8>, Errno> {
        let p = self.abs(path);
        self.0
            .0
            .borrow()
            .store
            .nodes
            .get(&p)
            .cloned()
            .ok_or(Errno::ENOENT)
    }
    fn write(&mut self, _tx: u32, path: &str, value: &[u8]) -> Result<(), Errno> {
        let p = self.abs(path);
        self.0.0.borrow_mut().store.nodes.insert(p, value.to_vec());
        Ok(())
    }
    fn mkdir(&mut self, tx: u32, path: &str) -> Result<(), Errno> {
        if self.read(tx, path).is_err() {
            self.write(tx, path, b"")?;
        }
        Ok(())
    }
    fn rm(&mut self, _tx: u32, path: &str) -> Result<(), Errno> {
        let p = self.abs(path);
        let prefix = format!("{p}/");
        self.0
            .0
            .borrow_mut()
            .store
            .nodes
            .retain(|k, _| *k != p && !k.starts_with(&prefix));
        Ok(())
    }
    fn directory(&mut self, _tx: u32, path: &str) -> Result<Vec<String>, Errno> {
        let prefix = format!("{}/", self.abs(path));
        let w = self.0.0.borrow();
        let mut names: Vec<String> = w
            .store
            .nodes
            .keys()
            .filter_map(|k| k.strip_prefix(&prefix))
            .map(|rest| String::from(rest.split('/').next().unwrap_or("")))
            .collect();
        names.dedup();
        if names.is_empty() {
            return Err(Errno::ENOENT);
        }
        Ok(names)
    }
    fn watch(&mut self, _path: &str, _token: &str) -> Result<(), Errno> {
        Ok(())
    }
    fn unwatch(&mut self, _path: &str, _token: &str) -> Result<(), Errno> {
        Ok(())
    }
    fn wait_watch_event(&mut self, token: &str) -> Result<WatchEvent, Errno> {
        self.0.run_backend();
        Ok(WatchEvent {
            path: String::new(),
            token: String::from(token),
        })
    }
    fn transaction_start(&mut self) -> Result<u32, Errno> {
        Ok(1)
    }
    fn transaction_end(&mut self, _tx: u32, _commit: bool) -> Result<(), Errno> {
        Ok(())
    }
}

/// The front-end domain's kernel: its pages are the ones the back-end maps
/// by grant; its ports the ones the back-end binds.
pub struct LoopKernel<B: Backend<SimPage>>(Loopback<B>);

impl<B: Backend<SimPage>> Clone for LoopKernel<B> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<B: Backend<SimPage>> Kernel for LoopKernel<B> {
    type Page = MemPage;
    fn alloc_page(&mut self) -> Result<(MemPage, u64), Errno> {
        let mut w = self.0.0.borrow_mut();
        let frame = w.next_frame;
        w.next_frame += 1;
        let page = MemPage::filled(0);
        w.frames.insert(frame, page.clone());
        Ok((page, frame))
    }
    fn grant(&mut self, dom: u16, frame: u64, _readonly: bool) -> Result<u32, Errno> {
        let mut w = self.0.0.borrow_mut();
        let page = w.frames.get(&frame).ok_or(Errno::EINVAL)?.clone();
        assert_eq!(dom, 0, "granted to a domain other than the back-end's");
        let gref = w.next_gref;
        w.next_gref += 1;
        let fe = w.fe_dom;
        w.platform.grants.insert((fe, gref), page);
        Ok(gref)
    }
    fn end_grant(&mut self, gref: u32) -> Result<(), Errno> {
        let mut w = self.0.0.borrow_mut();
        let fe = w.fe_dom;
        if w.platform.is_mapped(fe, gref) {
            return Err(Errno::EBUSY);
        }
        w.platform
            .grants
            .remove(&(fe, gref))
            .map(drop)
            .ok_or(Errno::EINVAL)
    }
    fn alloc_port(&mut self, _dom: u16) -> Result<u32, Errno> {
        let mut w = self.0.0.borrow_mut();
        let port = w.next_port;
        w.next_port += 1;
        let fe = w.fe_dom;
        w.platform.offered.insert((fe, port));
        Ok(port)
    }
    fn close_port(&mut self, port: u32) {
        let mut w = self.0.0.borrow_mut();
        let fe = w.fe_dom;
        w.platform.offered.remove(&(fe, port));
    }
    fn notify(&mut self, _port: u32) {}
    fn wait(&mut self, _port: u32, ready: &mut dyn FnMut() -> bool) {
        if !ready() {
            self.0.run_backend();
        }
    }
}
