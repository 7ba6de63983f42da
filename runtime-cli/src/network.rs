//! A pod network namespace adopted: the interfaces CNI put into the namespace containerd made
//! (owned by the host's user namespace) move into the container's own network namespace (owned
//! by the container's user namespace), with their addresses and routes, and its loopback comes
//! up. The container's root then has `CAP_NET_ADMIN` over the namespace its processes see (an
//! inner dockerd makes its bridge and NAT there), and the pod IP CNI reported is the same.
//!
//! Moving a link to another namespace drops its addresses and routes, so they are read first
//! and added again. Kernel-made routes (those of an address's prefix, IPv6 link-local) come
//! back by themselves. What else CNI set in its namespace (sysctls, firewall rules) is not
//! carried over: see docs/kubernetes.md.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::packet_route::route::{RouteAttribute, RouteHeader, RouteMessage, RouteProtocol};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("entering a network namespace to talk netlink there: {0}")]
    Enter(#[source] nix::Error),
    #[error("opening {what}: {source}")]
    Open {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("netlink: {what}: {source}")]
    Netlink {
        what: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("the interface {0} did not arrive in the container's network namespace")]
    Lost(String),
}

fn netlink(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetworkError {
    let what = what.into();
    move |source| NetworkError::Netlink { what, source }
}

/// One interface of the pod namespace, with what moving it drops.
struct Interface {
    name: String,
    index: u32,
    addresses: Vec<(std::net::IpAddr, u8)>,
    routes: Vec<RouteMessage>,
}

/// Moves every interface but `lo` of the pod network namespace `pod` into the network
/// namespace of the container's init `init_pid` (the CLI's child, not yet running anything of
/// the container's), restores their addresses and routes, and brings `lo` up there.
pub fn adopt(
    rt: &tokio::runtime::Runtime,
    pod: BorrowedFd<'_>,
    init_pid: i32,
) -> Result<(), NetworkError> {
    let open = |path: String| {
        std::fs::File::open(&path)
            .map(OwnedFd::from)
            .map_err(|source| NetworkError::Open { what: path, source })
    };
    let own = open("/proc/self/ns/net".into())?;
    let container = open(format!("/proc/{init_pid}/ns/net"))?;
    // The sockets need the runtime's reactor; each belongs to the namespace it was made in.
    let _context = rt.enter();
    let from = connect_in(pod, own.as_fd())?;
    let into = connect_in(container.as_fd(), own.as_fd())?;
    rt.block_on(async {
        let interfaces = list_interfaces(&from).await?;
        for interface in &interfaces {
            move_interface(&from, &into, interface, container.as_fd()).await?;
        }
        set_up(&into, "lo").await?;
        for interface in &interfaces {
            restore(&into, interface).await?;
        }
        crate::log::debug(format!(
            "moved {:?} from the pod network namespace into the container's",
            interfaces.iter().map(|i| &i.name).collect::<Vec<_>>()
        ));
        Ok(())
    })
}

/// A netlink connection in the network namespace `ns`; this thread is back in `own` after.
fn connect_in(ns: BorrowedFd<'_>, own: BorrowedFd<'_>) -> Result<Handle, NetworkError> {
    use nix::sched::{setns, CloneFlags};
    setns(ns, CloneFlags::CLONE_NEWNET).map_err(NetworkError::Enter)?;
    let connection = rtnetlink::new_connection();
    let back = setns(own, CloneFlags::CLONE_NEWNET);
    // Staying in the pod's namespace would make every later socket of the CLI's its.
    back.map_err(NetworkError::Enter)?;
    let (connection, handle, _) = connection.map_err(|source| NetworkError::Open {
        what: "a netlink socket".into(),
        source,
    })?;
    tokio::spawn(connection);
    Ok(handle)
}

fn name_of(link: &LinkMessage) -> Option<String> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(name) => Some(name.clone()),
        _ => None,
    })
}

async fn list_interfaces(pod: &Handle) -> Result<Vec<Interface>, NetworkError> {
    let links: Vec<LinkMessage> = pod
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(netlink("listing the pod's interfaces"))?;
    let mut interfaces = vec![];
    for link in links {
        let Some(name) = name_of(&link).filter(|name| name != "lo") else {
            continue;
        };
        let index = link.header.index;
        interfaces.push(Interface {
            addresses: addresses_of(pod, index).await?,
            routes: routes_of(pod, index).await?,
            name,
            index,
        });
    }
    Ok(interfaces)
}

/// The interface's addresses but IPv6 link-local ones (the kernel makes those).
async fn addresses_of(
    pod: &Handle,
    index: u32,
) -> Result<Vec<(std::net::IpAddr, u8)>, NetworkError> {
    let messages: Vec<AddressMessage> = pod
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .map_err(netlink("listing the pod's addresses"))?;
    Ok(messages
        .iter()
        .filter(|m| m.header.scope != AddressScope::Link)
        .filter_map(|m| {
            let local = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            });
            let address = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            });
            local.or(address).map(|ip| (ip, m.header.prefix_len))
        })
        .collect())
}

/// The main table's routes through the interface that the kernel did not make, routes without
/// a gateway first (a gateway must be reachable when its route is added).
async fn routes_of(pod: &Handle, index: u32) -> Result<Vec<RouteMessage>, NetworkError> {
    let mut routes = vec![];
    for family in [
        RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
        RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
    ] {
        let found: Vec<RouteMessage> = pod
            .route()
            .get(family)
            .execute()
            .try_collect()
            .await
            .map_err(netlink("listing the pod's routes"))?;
        routes.extend(found.into_iter().filter(|r| {
            r.header.table == RouteHeader::RT_TABLE_MAIN
                && r.header.protocol != RouteProtocol::Kernel
                && r.attributes.contains(&RouteAttribute::Oif(index))
        }));
    }
    routes.sort_by_key(|r| {
        r.attributes
            .iter()
            .any(|a| matches!(a, RouteAttribute::Gateway(_)))
    });
    Ok(routes)
}

async fn move_interface(
    from: &Handle,
    into: &Handle,
    interface: &Interface,
    container: BorrowedFd<'_>,
) -> Result<(), NetworkError> {
    let what = format!(
        "moving {} into the container's network namespace",
        interface.name
    );
    from.link()
        .set(
            LinkUnspec::new_with_index(interface.index)
                .setns_by_fd(container.as_raw_fd())
                .build(),
        )
        .execute()
        .await
        .map_err(netlink(what))?;
    set_up(into, &interface.name).await
}

async fn index_of(handle: &Handle, name: &str) -> Result<u32, NetworkError> {
    let found: Vec<LinkMessage> = handle
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_collect()
        .await
        .map_err(|_| NetworkError::Lost(name.to_string()))?;
    found
        .first()
        .map(|l| l.header.index)
        .ok_or_else(|| NetworkError::Lost(name.to_string()))
}

async fn set_up(handle: &Handle, name: &str) -> Result<(), NetworkError> {
    let index = index_of(handle, name).await?;
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(netlink(format!("bringing {name} up")))
}

/// The interface's addresses and routes, added again in the container's namespace (where its
/// index may differ).
async fn restore(into: &Handle, interface: &Interface) -> Result<(), NetworkError> {
    let index = index_of(into, &interface.name).await?;
    for (ip, prefix) in &interface.addresses {
        into.address()
            .add(index, *ip, *prefix)
            .execute()
            .await
            .map_err(netlink(format!(
                "adding {ip}/{prefix} to {}",
                interface.name
            )))?;
    }
    for route in &interface.routes {
        let mut route = route.clone();
        route.attributes.retain(|a| {
            matches!(
                a,
                RouteAttribute::Destination(_)
                    | RouteAttribute::Gateway(_)
                    | RouteAttribute::PrefSource(_)
                    | RouteAttribute::Priority(_)
                    | RouteAttribute::Table(_)
                    | RouteAttribute::Metrics(_)
                    | RouteAttribute::Preference(_)
            )
        });
        route.attributes.push(RouteAttribute::Oif(index));
        let family = route.header.address_family;
        into.route()
            .add(route)
            .execute()
            .await
            .map_err(netlink(format!(
                "adding a route ({}) through {}",
                if family == AddressFamily::Inet6 {
                    "IPv6"
                } else {
                    "IPv4"
                },
                interface.name
            )))?;
    }
    Ok(())
}
