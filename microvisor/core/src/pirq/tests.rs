use super::*;

const SVC: u16 = 1;
type Table = PirqTable<48>;

fn req(index: i32) -> MapRequest {
    MapRequest {
        domid: DomId::SELF.0,
        type_: MAP_PIRQ_TYPE_GSI,
        index,
        pirq: -1,
    }
}

/// The machine of the tests: GSIs 0-23 and 32-39.
fn exists(gsi: u32) -> bool {
    gsi < 24 || (32..40).contains(&gsi)
}

#[test]
fn only_the_service_domain_maps_and_only_for_itself() {
    let mut t = Table::new();
    assert_eq!(t.map(2, false, &req(20), exists), Err(Errno::EPERM));
    let other = MapRequest {
        domid: 2,
        ..req(20)
    };
    assert_eq!(t.map(SVC, true, &other, exists), Err(Errno::EPERM));
    let own = MapRequest {
        domid: SVC,
        ..req(20)
    };
    assert_eq!(t.map(SVC, true, &own, exists), Ok(20));
    assert_eq!(t.map(SVC, true, &req(21), exists), Ok(21));
    assert!(t.mapped_for(SVC, 20) && t.mapped_for(SVC, 21));
    assert!(!t.mapped_for(2, 20));
}

#[test]
fn bad_lines_are_einval_and_a_taken_line_eexist() {
    let mut t = Table::new();
    let msi = MapRequest {
        type_: 3,
        ..req(20)
    };
    for (r, why) in [
        (msi, "type"),
        (req(-1), "negative"),
        (req(15), "ISA line"),
        (req(0), "ISA line"),
        (req(24), "no such GSI"),
        (req(48), "beyond the table"),
        (req(i32::MAX), "beyond the table"),
        (
            MapRequest {
                pirq: 21,
                ..req(20)
            },
            "pirq not the GSI",
        ),
    ] {
        assert_eq!(t.map(SVC, true, &r, exists), Err(Errno::EINVAL), "{why}");
    }
    // The table's size bounds the line even if the machine claims more.
    assert_eq!(t.map(SVC, true, &req(48), |_| true), Err(Errno::EINVAL));
    assert!((0..48).all(|g| !t.mapped_for(SVC, g)));
    assert_eq!(
        t.map(
            SVC,
            true,
            &MapRequest {
                pirq: 16,
                ..req(16)
            },
            exists
        ),
        Ok(16)
    );
    assert_eq!(t.map(SVC, true, &req(16), exists), Ok(16), "again");
    assert_eq!(t.map(3, true, &req(16), exists), Err(Errno::EEXIST));
    assert!(t.mapped_for(SVC, 16));
}

#[test]
fn eoi_and_status_need_a_line_mapped_for_the_caller() {
    let mut t = Table::new();
    t.map(SVC, true, &req(33), exists).unwrap();
    assert_eq!(t.eoi(SVC, 33), Ok(false));
    assert_eq!(t.status(SVC, 33), Ok(()));
    assert!(t.bound(33, 7));
    assert_eq!(t.eoi(SVC, 33), Ok(true));
    for (dom, irq) in [(2, 33), (SVC, 34), (SVC, 48), (SVC, u32::MAX)] {
        assert_eq!(t.eoi(dom, irq), Err(Errno::EINVAL));
        assert_eq!(t.status(dom, irq), Err(Errno::EINVAL));
    }
    assert!(!t.bound(48, 1));
}

#[test]
fn a_line_fires_into_its_port_once_mapped_and_bound() {
    let mut t = Table::new();
    assert_eq!(t.fired(20), None);
    t.map(SVC, true, &req(20), exists).unwrap();
    assert_eq!(t.fired(20), None);
    assert!(!t.any_bound());
    t.bound(20, 5);
    assert!(t.any_bound());
    assert_eq!(t.fired(20), Some((SVC, 5)));
    assert_eq!(t.fired(20), Some((SVC, 5)));
    assert_eq!(t.fired(48), None);
    let mut released = vec![];
    t.domain_died(SVC, |g, n| released.push((g, n)));
    assert_eq!(released, [(20, 2)]);
    assert_eq!(t.fired(20), None);
    assert!(!t.any_bound());
}

#[test]
fn closing_a_port_unbinds_only_its_lines() {
    let mut t = Table::new();
    for g in [16, 17, 18] {
        t.map(SVC, true, &req(g), exists).unwrap();
    }
    t.bound(16, 5);
    t.bound(17, 5);
    t.bound(18, 6);
    let mut masked = vec![];
    t.port_closed(2, 5, |g| masked.push(g));
    assert!(masked.is_empty(), "another domain's port");
    t.port_closed(SVC, 5, |g| masked.push(g));
    assert_eq!(masked, [16, 17]);
    assert_eq!(t.eoi(SVC, 16), Ok(false));
    assert_eq!(t.eoi(SVC, 18), Ok(true));
    let ports = t.bound_ports(SVC);
    assert_eq!(ports[18], Some(6));
    assert_eq!(ports.iter().flatten().count(), 1);
    assert_eq!(t.bound_ports(2).iter().flatten().count(), 0);
    assert!(!t.unbind_if(SVC, 18, 5));
    assert!(!t.unbind_if(2, 18, 6));
    assert!(!t.unbind_if(SVC, 48, 6));
    assert!(t.unbind_if(SVC, 18, 6));
    assert!(!t.any_bound());
    // Still mapped: the service domain may bind them again.
    assert!(t.mapped_for(SVC, 16) && t.mapped_for(SVC, 18));
}

#[test]
fn a_dead_domain_frees_its_lines_for_another() {
    let mut t = Table::new();
    t.map(SVC, true, &req(32), exists).unwrap();
    t.map(SVC, true, &req(20), exists).unwrap();
    t.bound(32, 9);
    let mut released = vec![];
    t.domain_died(7, |g, n| released.push((g, n)));
    assert!(released.is_empty());
    t.domain_died(SVC, |g, n| released.push((g, n)));
    assert_eq!(released, [(20, 0), (32, 0)]);
    assert_eq!(t.map(4, true, &req(32), exists), Ok(32));
    assert!(!t.mapped_for(SVC, 32));
}
