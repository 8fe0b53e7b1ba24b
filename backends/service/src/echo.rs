//! Echo back-end glue in the service domain: the tutorial device
//! (`docs/tutorial-frontend.md`), wired in the same way as `blk.rs` but with
//! nothing behind it except `echoback`.
//!
//! With `echo=a,b` on the command line, each named domain gets one echo
//! device: this module creates both xenstore directories (the toolstack's
//! part), follows the xenbus handshake with the front-end, maps the
//! front-end's ring page by grant, binds its event channel and serves the
//! ring with `echoback`. `main.rs` calls in at three points: [`Echoes::setup`]
//! once, [`Echoes::pump`] on every pass of its loop, [`Echoes::domain_died`]
//! when a guest is gone.
//!
//! Everything the front-end writes is hostile: a malformed handshake closes
//! only that device, and so does a ring with broken indices.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use echoback::xenbus::{BackendStep, KEY_EVENT_CHANNEL, KEY_RING_REF};
use echoback::{EchoBack, Features};
use guest_abi::errno::Errno;
use guest_abi::io::xenbus::XenbusState;
use pv_guest_kernel::{StartInfo, events, gnttab, println};
use xenstore::Xenstore;

use crate::store::Local;

/// The device id of a domain's (only) echo device.
const DEVID: u32 = 0;
/// Grant-mapping slots (`gnttab::map_slot_va`) for echo rings start here;
/// the virtual disks use the slots from 64.
const RING_SLOT_BASE: u64 = 128;

/// A connected front-end: its ring, mapped by grant, and its channel.
struct Connected {
    back: EchoBack<gnttab::GrantedPage>,
    port: u32,
}

/// One echo device.
pub struct EchoDev {
    fe_dom: u16,
    name: String,
    be_path: String,
    fe_path: String,
    conn: Option<Connected>,
    /// Where its ring is mapped in our address space.
    ring_slot: u64,
    /// Finished for good (closed by the front-end, or broken).
    closed: bool,
}

impl EchoDev {
    /// The toolstack's part, as `blk::Vbd::create`: the front-end's
    /// `device/echo/0` and our `backend/echo/<dom>/0`, each naming the other
    /// and readable by the other side; our features; then InitWait.
    fn create(
        xs: &mut Xenstore,
        local: &mut Local,
        fe_dom: u16,
        name: &str,
        ring_slot: u64,
    ) -> Result<Self, Errno> {
        let be_path = format!("/local/domain/0/backend/echo/{fe_dom}/{DEVID}");
        let fe_path = format!("/local/domain/{fe_dom}/device/echo/{DEVID}");
        // Owner first (full access), then who else may read.
        let fe_perms = format!("n{fe_dom}\0r0\0");
        let be_perms = format!("n0\0r{fe_dom}\0");
        local.write(xs, &format!("{fe_path}/backend"), be_path.as_bytes())?;
        local.write(xs, &format!("{fe_path}/backend-id"), b"0")?;
        local.write(
            xs,
            &format!("{fe_path}/state"),
            XenbusState::Initialising.as_text().as_bytes(),
        )?;
        for n in ["", "/backend", "/backend-id", "/state"] {
            local.set_perms(xs, &format!("{fe_path}{n}"), fe_perms.as_bytes())?;
        }
        local.set_perms(
            xs,
            &format!("/local/domain/{fe_dom}/device"),
            fe_perms.as_bytes(),
        )?;
        local.set_perms(
            xs,
            &format!("/local/domain/{fe_dom}/device/echo"),
            fe_perms.as_bytes(),
        )?;
        local.write(xs, &format!("{be_path}/frontend"), fe_path.as_bytes())?;
        local.write(
            xs,
            &format!("{be_path}/frontend-id"),
            format!("{fe_dom}").as_bytes(),
        )?;
        let features = echoback::xenbus::backend_nodes(&Features::default());
        for (k, v) in features {
            local.write(xs, &format!("{be_path}/{k}"), v.as_bytes())?;
        }
        // Last: the front-end waits for this state before it reads the rest.
        local.write(
            xs,
            &format!("{be_path}/state"),
            XenbusState::InitWait.as_text().as_bytes(),
        )?;
        let mut nodes: Vec<String> = Vec::from([
            String::new(),
            String::from("/frontend"),
            String::from("/frontend-id"),
            String::from("/state"),
        ]);
        nodes.extend(features.iter().map(|(k, _)| format!("/{k}")));
        for n in nodes {
            local.set_perms(xs, &format!("{be_path}{n}"), be_perms.as_bytes())?;
        }
        Ok(Self {
            fe_dom,
            name: String::from(name),
            be_path,
            fe_path,
            conn: None,
            ring_slot,
            closed: false,
        })
    }

    fn set_state(&self, xs: &mut Xenstore, local: &mut Local, s: XenbusState) {
        let _ = local.write(
            xs,
            &format!("{}/state", self.be_path),
            s.as_text().as_bytes(),
        );
    }

    /// Follows the front-end's state: connects when it is Initialised,
    /// disconnects when it closes. Returns whether something changed.
    fn step(&mut self, xs: &mut Xenstore, local: &mut Local, kick: events::PortHandler) -> bool {
        if self.closed {
            return false;
        }
        let front = local
            .read(xs, &format!("{}/state", self.fe_path))
            .ok()
            .and_then(|t| XenbusState::parse(&t))
            .unwrap_or(XenbusState::Unknown);
        match echoback::xenbus::on_frontend_state(front) {
            BackendStep::Connect if self.conn.is_none() => {
                match self.connect(xs, local, kick) {
                    Ok(()) => {
                        self.set_state(xs, local, XenbusState::Connected);
                        println!("echoback: {} connected", self.name);
                    }
                    Err(why) => {
                        println!("echoback: {}: cannot connect: {why}", self.name);
                        self.set_state(xs, local, XenbusState::Closed);
                        self.closed = true;
                    }
                }
                true
            }
            BackendStep::Disconnect(s) if self.conn.is_some() || s == XenbusState::Closed => {
                self.disconnect();
                self.set_state(xs, local, s);
                self.closed = s == XenbusState::Closed;
                true
            }
            _ => false,
        }
    }

    /// Reads and checks the front-end's nodes, maps its ring page by grant
    /// and binds its event channel.
    fn connect(
        &mut self,
        xs: &mut Xenstore,
        local: &mut Local,
        kick: events::PortHandler,
    ) -> Result<(), String> {
        let nodes =
            crate::store::read_nodes(xs, local, &self.fe_path, &[KEY_RING_REF, KEY_EVENT_CHANNEL]);
        let cfg = echoback::xenbus::parse_frontend(|k| {
            nodes.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str())
        })
        .map_err(|e| format!("{e}"))?;
        let (page, port) = crate::store::attach_ring(
            self.fe_dom,
            cfg.ring_ref.0,
            cfg.event_channel.0,
            self.ring_slot,
            kick,
        )?;
        self.conn = Some(Connected {
            back: EchoBack::new(page, Features::default()),
            port,
        });
        Ok(())
    }

    /// Drops the ring mapping and the event channel.
    fn disconnect(&mut self) {
        if let Some(c) = self.conn.take() {
            let _ = events::close(c.port);
            let s = c.back.stats();
            println!(
                "echoback: {} disconnected: {} requests ({} answered, {} invalid, {} unsupported), {} bytes echoed",
                self.name, s.requests, s.ok, s.invalid, s.unsupported, s.bytes
            );
        }
    }

    /// Serves the ring; returns whether to look again soon.
    fn serve(&mut self, xs: &mut Xenstore, local: &mut Local) -> bool {
        let Some(c) = self.conn.as_mut() else {
            return false;
        };
        match c.back.process() {
            Ok(w) => {
                if w.notify {
                    let _ = events::send(c.port);
                }
                w.more
            }
            Err(fatal) => {
                println!(
                    "echoback: {}: {fatal}; disconnecting this front-end",
                    self.name
                );
                self.disconnect();
                self.set_state(xs, local, XenbusState::Closed);
                self.closed = true;
                false
            }
        }
    }
}

/// Every echo device of the service domain.
pub struct Echoes {
    devs: Vec<EchoDev>,
}

impl Echoes {
    /// With `echo=a,b` on the command line: one echo device for each named
    /// domain. Without it: none, and the other calls do nothing.
    pub fn setup(
        si: &StartInfo,
        xs: &mut Xenstore,
        local: &mut Local,
        guests: &[crate::Guest],
    ) -> Self {
        let mut devs = Vec::new();
        for (i, name) in crate::cmdline_list(si, "echo").iter().enumerate() {
            let Some(g) = guests.iter().find(|g| &g.name == name) else {
                println!("service: echo device for unknown domain '{name}'");
                continue;
            };
            match EchoDev::create(xs, local, g.domid, name, RING_SLOT_BASE + i as u64) {
                Ok(d) => devs.push(d),
                Err(e) => println!("service: echo device for {name}: {e:?}"),
            }
        }
        Self { devs }
    }

    /// Follows every device's handshake and serves every connected ring.
    /// Returns whether anything changed in xenstore or is left to do.
    /// Steps only with `step_room` (the heap can give a step's
    /// allocations); serving allocates nothing.
    pub fn pump(
        &mut self,
        xs: &mut Xenstore,
        local: &mut Local,
        kick: events::PortHandler,
        step_room: &mut crate::Room,
    ) -> bool {
        let mut moved = false;
        for d in self.devs.iter_mut() {
            if step_room.now() {
                moved |= d.step(xs, local, kick);
            }
            // Once per pass: a front-end that refills its ring as fast as it
            // is drained gets one bounded batch, then the others' turn.
            moved |= d.serve(xs, local);
        }
        moved
    }

    /// Lets go of the rings of domain `domid`, which has ended.
    pub fn domain_died(&mut self, domid: u16) {
        for d in self.devs.iter_mut().filter(|d| d.fe_dom == domid) {
            d.disconnect();
            d.closed = true;
        }
    }
}
