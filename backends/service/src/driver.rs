//! How back-ends plug into the service domain: a [`Driver`] is one kind of
//! device the service serves, built on the split-driver framework
//! (`splitback`). The service calls every driver at fixed points of its
//! loop; [`Io`] gives it the store and the kernel (grant mappings from a
//! bounded slot pool, event channels) as `splitback` wants them.
//!
//! Most back-ends need nothing but [`CmdlineDevices`]: a
//! [`splitback::Backend`] plus a function that turns each `KEY=NAME[:ARG]`
//! entry of the service's command line into a device. A user's own service
//! image adds one without editing this crate:
//!
//! ```ignore
//! fn main(si: &'static StartInfo) {
//!     let counter = service::CmdlineDevices::new(CounterBack, "counter", |_, _arg| Ok((0, 0u64)));
//!     service::run(si, vec![Box::new(counter)]);
//! }
//! ```

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use guest_abi::errno::Errno;
use pv_guest_kernel::gnttab::GrantedPage;
use pv_guest_kernel::{DomId, GrantRef, Port, events, println};
use splitback::{Backend, Devices, Slots};
use xenstore::Xenstore;

use crate::store::Local;

/// The service domain's kernel for `splitback`: grant mappings in
/// pv-guest-kernel's mapping window, event channels that wake the loop.
pub struct KernelPlatform;

impl splitback::Platform for KernelPlatform {
    type Page = GrantedPage;
    fn map_ring(&mut self, dom: u16, gref: u32, slot: u64) -> Result<GrantedPage, String> {
        crate::mapping::map_ring(DomId(dom), GrantRef(gref), slot)
            .ok_or_else(|| format!("no mapping slot {slot}"))?
            .map_err(|e| format!("{e}"))
    }
    fn bind(&mut self, dom: u16, port: u32) -> Result<u32, String> {
        events::bind_interdomain(DomId(dom), Port(port), crate::kick)
            .map(|p| p.0)
            .map_err(|e| format!("{e:?}"))
    }
    fn notify(&mut self, port: u32) {
        let _ = events::send(Port(port));
    }
    fn unbind(&mut self, port: u32) {
        let _ = events::close(Port(port));
    }
    fn log(&mut self, line: core::fmt::Arguments<'_>) {
        println!("{line}");
    }
}

/// The service's own xenstore connection, as `splitback` wants it.
pub struct StoreRef<'a> {
    /// The store.
    pub xs: &'a mut Xenstore,
    /// Our privileged connection to it.
    pub local: &'a mut Local,
}

impl splitback::Store for StoreRef<'_> {
    fn read(&mut self, path: &str) -> Result<Vec<u8>, Errno> {
        self.local.read(self.xs, path)
    }
    fn write(&mut self, path: &str, value: &[u8]) -> Result<(), Errno> {
        self.local.write(self.xs, path, value)
    }
    fn set_perms(&mut self, path: &str, perms: &[u8]) -> Result<(), Errno> {
        self.local.set_perms(self.xs, path, perms)
    }
}

/// What a driver gets at each call.
pub struct Io<'a> {
    /// The store.
    pub store: StoreRef<'a>,
    /// The kernel.
    pub platform: &'a mut KernelPlatform,
    /// Grant-mapping slots, shared by every driver.
    pub slots: &'a mut Slots,
}

/// A domain the service serves.
#[derive(Clone, Debug)]
pub struct Domain {
    /// Its id.
    pub domid: u16,
    /// Its name in the manifest.
    pub name: String,
}

/// What a driver gets at set-up.
pub struct Env<'a> {
    /// The service's command line.
    pub cmdline: &'a str,
    /// The domains served.
    pub domains: &'a [Domain],
    /// Store and kernel.
    pub io: Io<'a>,
}

impl Env<'_> {
    /// The entries of `key=a,b,..` on the command line.
    #[must_use]
    pub fn list(&self, key: &str) -> Vec<String> {
        crate::words_list(self.cmdline, key)
    }

    /// The domain called `name`.
    #[must_use]
    pub fn domain(&self, name: &str) -> Option<&Domain> {
        self.domains.iter().find(|d| d.name == name)
    }
}

/// One kind of device the service domain serves (see the module docs).
/// Every call but [`serve`](Self::serve) runs only when the service's heap
/// can give a handshake step's allocations (the heap gate).
pub trait Driver {
    /// Creates the devices, once, before the loop starts.
    fn setup(&mut self, env: &mut Env<'_>);
    /// At the start of every round (a device interrupt to acknowledge).
    fn poll(&mut self) {}
    /// Whether a device must step without a store change.
    fn wants_step(&self) -> bool;
    /// Follows the handshakes; whether anything changed.
    fn step(&mut self, io: &mut Io<'_>) -> bool;
    /// Serves connected devices once each; whether any wants more soon.
    fn serve(&mut self, io: &mut Io<'_>) -> bool;
    /// Domain `dom` has ended: let go of its devices.
    fn domain_died(&mut self, dom: u16, io: &mut Io<'_>);
    /// Every domain has ended: last log lines.
    fn finish(&mut self) {}
}

/// Makes one device from a command-line entry's argument (the text after
/// `NAME:`, empty if none): its device id and the toolstack's data.
pub type MakeDevice<B> =
    fn(&mut B, &str) -> Result<(u32, <B as Backend<GrantedPage>>::Device), String>;

/// A [`Backend`] whose devices come from `KEY=NAME[:ARG],..` on the
/// service's command line (see the module docs).
pub struct CmdlineDevices<B: Backend<GrantedPage>> {
    devs: Devices<B, GrantedPage>,
    key: &'static str,
    make: MakeDevice<B>,
}

impl<B: Backend<GrantedPage>> CmdlineDevices<B> {
    /// Devices of `backend` for the domains named in `key=` entries, each
    /// made by `make`.
    pub fn new(backend: B, key: &'static str, make: MakeDevice<B>) -> Self {
        Self {
            devs: Devices::new(backend, 0),
            key,
            make,
        }
    }

    /// The devices.
    pub fn devices(&self) -> &Devices<B, GrantedPage> {
        &self.devs
    }

    /// The devices, mutable (for a driver wrapping this one).
    pub fn devices_mut(&mut self) -> &mut Devices<B, GrantedPage> {
        &mut self.devs
    }

    /// Creates the devices the command line names.
    pub fn create(&mut self, env: &mut Env<'_>) {
        let key = self.key;
        for entry in env.list(key) {
            let (name, arg) = entry.split_once(':').unwrap_or((entry.as_str(), ""));
            let Some(dom) = env.domain(name).map(|d| d.domid) else {
                println!("service: {key} for unknown domain '{name}'");
                continue;
            };
            let (devid, data) = match (self.make)(self.devs.backend_mut(), arg) {
                Ok(d) => d,
                Err(why) => {
                    println!("service: {key} for {name}: {why}");
                    continue;
                }
            };
            if let Err(e) = self.devs.add(&mut env.io.store, dom, name, devid, data) {
                println!("service: {key} for {name}: {e:?}");
            }
        }
    }
}

impl<B: Backend<GrantedPage>> Driver for CmdlineDevices<B> {
    fn setup(&mut self, env: &mut Env<'_>) {
        self.create(env);
    }
    fn wants_step(&self) -> bool {
        self.devs.wants_step()
    }
    fn step(&mut self, io: &mut Io<'_>) -> bool {
        self.devs.step(&mut io.store, io.platform, io.slots)
    }
    fn serve(&mut self, io: &mut Io<'_>) -> bool {
        self.devs.serve(io.platform, io.slots)
    }
    fn domain_died(&mut self, dom: u16, io: &mut Io<'_>) {
        self.devs.domain_died(dom, io.platform, io.slots);
    }
}

/// The drivers every service domain has: block (`vbd=`) and echo
/// (`echo=`).
#[must_use]
pub fn builtin() -> Vec<Box<dyn Driver>> {
    let echo = CmdlineDevices::new(echoback::Echo::default(), "echo", |_, _| Ok((0, ())));
    Vec::from([
        Box::new(crate::blk::Disks::default()) as Box<dyn Driver>,
        Box::new(echo),
    ])
}
