//! The bus contract. What each helper shows to `busctl introspect` is exactly the interface the
//! docs/api.md documents, member by member with its signature; and every call of the contract
//! crate's proxies reaches its method (the bus answers no UnknownMethod, UnknownProperty or
//! InvalidArgs: names and signatures agree on both sides).

use std::collections::BTreeSet;
use std::os::fd::OwnedFd;

use burrow_contract::mount::BuildPlan;
use burrow_contract::proxy::{Dev1Proxy, IdMap1Proxy, Mount1Proxy};
use burrow_tests::{Harness, HarnessOptions};

/// (name, kind, signature, result) of the members of `interface`, as busctl prints them (a
/// property's result column is its current value, left out).
fn members(h: &Harness, service: &str, path: &str, interface: &str) -> BTreeSet<[String; 4]> {
    let out = h.busctl(&["introspect", service, path]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut current = String::new();
    let mut found = BTreeSet::new();
    for line in String::from_utf8_lossy(&out.stdout).lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [name, kind, signature, result, ..] = fields[..] else {
            continue;
        };
        if kind == "interface" {
            current = name.to_string();
            continue;
        }
        if current == interface {
            let result = if kind == "property" { "" } else { result };
            found.insert([name, kind, signature, result].map(String::from));
        }
    }
    found
}

fn expected(rows: &[(&str, &str, &str, &str)]) -> BTreeSet<[String; 4]> {
    rows.iter()
        .map(|(n, k, s, r)| [n, k, s, r].map(|f| f.to_string()))
        .collect()
}

#[test]
fn introspection_is_exactly_the_documented_interface() {
    let h = Harness::start(HarnessOptions::default());
    let idmap = expected(&[
        (".Allocate", "method", "sh", "uuu"),
        (".Join", "method", "ssh", "uuu"),
        (".Release", "method", "s", "-"),
        (".Keep", "method", "s", "-"),
        (".Forget", "method", "s", "-"),
        (".Get", "method", "s", "uuu"),
        (".List", "method", "-", "a(usuuu)"),
        (".AddControlGroup", "method", "sh", "s"),
        (".PoolStart", "property", "u", ""),
        (".PoolEnd", "property", "u", ""),
        (".RangeSize", "property", "u", ""),
        (".InUse", "property", "u", ""),
        (".MaxPerUser", "property", "u", ""),
        (".Allocated", "signal", "usuu", "-"),
        (".Released", "signal", "usu", "-"),
    ]);
    let dev = expected(&[
        (".Create", "method", "ha{sv}", "h"),
        (".AllowedExtra", "property", "as", ""),
    ]);
    let mount = expected(&[
        (".IdmapMount", "method", "hhb", "h"),
        (".BuildRoot", "method", "ha{sv}ah", "h"),
    ]);
    for (service, path, want) in [
        ("org.burrow.IdMap1", "/org/burrow/IdMap1", idmap),
        ("org.burrow.Dev1", "/org/burrow/Dev1", dev),
        ("org.burrow.Mount1", "/org/burrow/Mount1", mount),
    ] {
        assert_eq!(members(&h, service, path, service), want, "{service}");
    }
}

/// An fd that is no namespace, no directory and no pidfd: every helper refuses it by name.
fn not_a_namespace() -> zbus::zvariant::OwnedFd {
    OwnedFd::from(std::fs::File::open("/dev/null").unwrap()).into()
}

/// The bus's own errors: the call did not reach a method of that name and signature.
fn assert_dispatched<T: std::fmt::Debug>(what: &str, result: zbus::Result<T>) {
    if let Err(zbus::Error::MethodError(name, message, _)) = &result {
        assert!(
            !name.as_str().starts_with("org.freedesktop.DBus.Error."),
            "{what}: {name}: {message:?}"
        );
    } else if let Err(e) = &result {
        panic!("{what}: {e}");
    }
}

#[test]
fn every_proxy_call_reaches_its_method() {
    let h = Harness::start(HarnessOptions::default());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let conn = zbus::connection::Builder::address(h.address.as_str())
            .unwrap()
            .build()
            .await
            .unwrap();
        let idmap = IdMap1Proxy::new(&conn).await.unwrap();
        assert_dispatched("Allocate", idmap.allocate("c", not_a_namespace()).await);
        assert_dispatched("Join", idmap.join("c", "d", not_a_namespace()).await);
        assert_dispatched("Release", idmap.release("c").await);
        assert_dispatched("Keep", idmap.keep("c").await);
        assert_dispatched("Forget", idmap.forget("c").await);
        assert_dispatched("Get", idmap.get("c").await);
        assert_dispatched("List", idmap.list().await);
        let cgroup = idmap.add_control_group("c", not_a_namespace()).await;
        assert_dispatched("AddControlGroup", cgroup);
        for (property, value) in [
            ("PoolStart", idmap.pool_start().await),
            ("PoolEnd", idmap.pool_end().await),
            ("RangeSize", idmap.range_size().await),
            ("InUse", idmap.in_use().await),
            ("MaxPerUser", idmap.max_per_user().await),
        ] {
            assert_dispatched(property, value);
        }
        let dev = Dev1Proxy::new(&conn).await.unwrap();
        let options = std::collections::HashMap::new();
        assert_dispatched("Create", dev.create(not_a_namespace(), options).await);
        assert_dispatched("AllowedExtra", dev.allowed_extra().await);
        let mount = Mount1Proxy::new(&conn).await.unwrap();
        let idmapped = mount.idmap_mount(not_a_namespace(), not_a_namespace(), false);
        assert_dispatched("IdmapMount", idmapped.await);
        let plan = BuildPlan::new(0, 1);
        let built = mount.build_root(not_a_namespace(), &plan, vec![]);
        assert_dispatched("BuildRoot", built.await);
    });
}
