//! The protocol's own tests: each step's wait takes what it should and names what it did not;
//! decoding any datagram (with or without fds) gives a message or a named error, never a
//! panic; every message round-trips, fd included, through encode/decode and through a real
//! socket pair.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::unistd::Pid;
use proptest::prelude::*;
use serde_json::{Map, Value};

use super::channel::{pair, ParentChannel, ProtocolError};
use super::message::{DecodeError, Message, ToChild, ToParent};
use super::scm::{self, ReceiveError};

/// A file of its own (its own inode), to tell fds apart after a trip through a socket.
fn memfd() -> OwnedFd {
    rustix::fs::memfd_create("burrow-test", rustix::fs::MemfdFlags::CLOEXEC).unwrap()
}

fn inode(fd: BorrowedFd<'_>) -> (u64, u64) {
    let stat = rustix::fs::fstat(fd).unwrap();
    (stat.st_dev, stat.st_ino)
}

/// What a message is, with its fd as the inode it names: comparable.
#[derive(Debug, PartialEq)]
enum Shape {
    UserNamespace((u64, u64)),
    InitPid(Pid),
    ProcessPid(Pid),
    Console((u64, u64)),
    SysinfoListener((u64, u64)),
    Ready,
    Failed(String),
    Go,
    MountNamespace((u64, u64)),
    State(Map<String, Value>),
}

impl From<&ToParent> for Shape {
    fn from(message: &ToParent) -> Shape {
        match message {
            ToParent::UserNamespace(fd) => Shape::UserNamespace(inode(fd.as_fd())),
            ToParent::InitPid(pid) => Shape::InitPid(*pid),
            ToParent::ProcessPid(pid) => Shape::ProcessPid(*pid),
            ToParent::Console(fd) => Shape::Console(inode(fd.as_fd())),
            ToParent::SysinfoListener(fd) => Shape::SysinfoListener(inode(fd.as_fd())),
            ToParent::Ready => Shape::Ready,
            ToParent::Failed(text) => Shape::Failed(text.clone()),
        }
    }
}

impl From<&ToChild> for Shape {
    fn from(message: &ToChild) -> Shape {
        match message {
            ToChild::Go => Shape::Go,
            ToChild::MountNamespace(fd) => Shape::MountNamespace(inode(fd.as_fd())),
            ToChild::State(state) => Shape::State(state.clone()),
        }
    }
}

fn any_pid() -> impl Strategy<Value = Pid> {
    (1..=i32::MAX).prop_map(Pid::from_raw)
}

/// A message to be made (with a fresh fd where it carries one): strategies give clones.
#[derive(Debug, Clone)]
enum Plan {
    UserNamespace,
    InitPid(Pid),
    ProcessPid(Pid),
    Console,
    SysinfoListener,
    Ready,
    Failed(String),
    Go,
    MountNamespace,
    State(Map<String, Value>),
}

impl Plan {
    fn to_parent(&self) -> ToParent {
        match self {
            Plan::UserNamespace => ToParent::UserNamespace(memfd()),
            Plan::InitPid(pid) => ToParent::InitPid(*pid),
            Plan::ProcessPid(pid) => ToParent::ProcessPid(*pid),
            Plan::Console => ToParent::Console(memfd()),
            Plan::SysinfoListener => ToParent::SysinfoListener(memfd()),
            Plan::Ready => ToParent::Ready,
            Plan::Failed(text) => ToParent::Failed(text.clone()),
            other => panic!("{other:?} goes to a child"),
        }
    }

    fn to_child(&self) -> ToChild {
        match self {
            Plan::Go => ToChild::Go,
            Plan::MountNamespace => ToChild::MountNamespace(memfd()),
            Plan::State(state) => ToChild::State(state.clone()),
            other => panic!("{other:?} goes to the parent"),
        }
    }
}

fn any_to_parent() -> impl Strategy<Value = Plan> {
    prop_oneof![
        Just(Plan::UserNamespace),
        any_pid().prop_map(Plan::InitPid),
        any_pid().prop_map(Plan::ProcessPid),
        Just(Plan::Console),
        Just(Plan::SysinfoListener),
        Just(Plan::Ready),
        ".{0,200}".prop_map(Plan::Failed),
    ]
}

/// A container's state: strings of any text (annotations), numbers, nesting.
fn any_state() -> impl Strategy<Value = Map<String, Value>> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        ".{0,40}".prop_map(Value::from),
    ];
    let value = leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map(".{0,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    });
    prop::collection::btree_map(".{0,12}", value, 0..6).prop_map(|m| m.into_iter().collect())
}

fn any_to_child() -> impl Strategy<Value = Plan> {
    prop_oneof![
        Just(Plan::Go),
        Just(Plan::MountNamespace),
        any_state().prop_map(Plan::State),
    ]
}

/// Any datagram: random bytes, or a known tag with a random payload.
fn any_datagram() -> impl Strategy<Value = Vec<u8>> {
    let tag = prop::sample::select(vec![
        "userns", "init", "pid", "console", "sysinfo", "ready", "error:", "go", "mntns", "state",
        "",
    ]);
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..300),
        (
            tag,
            prop::option::of(prop::collection::vec(any::<u8>(), 0..40))
        )
            .prop_map(|(tag, payload)| {
                let mut bytes = tag.as_bytes().to_vec();
                if let Some(payload) = payload {
                    bytes.push(b' ');
                    bytes.extend(payload);
                }
                bytes
            }),
        (
            prop::sample::select(vec!["init ", "pid "]),
            "[-+0-9 ]{0,12}"
        )
            .prop_map(|(tag, n)| format!("{tag}{n}").into_bytes()),
        ".{0,80}".prop_map(|s| format!("state {s}").into_bytes()),
    ]
}

/// A message decoded from any bytes carries an fd exactly when its kind must.
fn fd_as_required<M: Message>(message: &M) -> bool {
    let carries = message.encode().unwrap().fd.is_some();
    carries
        == matches!(
            message.tag(),
            "userns" | "console" | "sysinfo" | "mntns" | "state"
        )
}

proptest! {
    #![proptest_config(crate::fuzz::cases(1024))]

    /// Decoding any bytes, with or without an fd, gives a message of the right shape or a
    /// named error; a message decoded encodes to bytes that decode to it again.
    #[test]
    fn any_datagram_decodes_or_is_a_named_error(bytes in any_datagram(), with_fd in any::<bool>()) {
        let fd = || with_fd.then(memfd);
        match ToParent::decode(&bytes, fd()) {
            Ok(message) => {
                prop_assert!(fd_as_required(&message));
                let encoded = message.encode().unwrap();
                let again = ToParent::decode(&encoded.bytes, encoded.fd.map(|f| f.as_fd().try_clone_to_owned().unwrap()));
                prop_assert_eq!(Shape::from(&again.unwrap()), Shape::from(&message));
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
        match ToChild::decode(&bytes, fd()) {
            Ok(message) => prop_assert!(fd_as_required(&message)),
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    /// Every message to the CLI round-trips through encode and decode.
    #[test]
    fn messages_to_the_parent_round_trip(plan in any_to_parent()) {
        let message = plan.to_parent();
        let encoded = message.encode().unwrap();
        let fd = encoded.fd.map(|f| f.as_fd().try_clone_to_owned().unwrap());
        let decoded = ToParent::decode(&encoded.bytes, fd).unwrap();
        prop_assert_eq!(Shape::from(&decoded), Shape::from(&message));
    }

    /// Every message to a child round-trips through encode and decode.
    #[test]
    fn messages_to_the_child_round_trip(plan in any_to_child()) {
        let message = plan.to_child();
        let encoded = message.encode().unwrap();
        let fd = encoded.fd.map(|f| f.as_fd().try_clone_to_owned().unwrap());
        let decoded = ToChild::decode(&encoded.bytes, fd).unwrap();
        prop_assert_eq!(Shape::from(&decoded), Shape::from(&message));
    }

    /// ...and through the socket pair, each fd arriving as the same file.
    #[test]
    fn messages_round_trip_through_the_socket_pair(up in any_to_parent(), down in any_to_child()) {
        let (up, down) = (up.to_parent(), down.to_child());
        let (parent, child) = pair().unwrap();
        child.tell(&up).unwrap();
        match parent.recv("test") {
            Ok(received) => prop_assert_eq!(Shape::from(&received), Shape::from(&up)),
            Err(e) => prop_assert!(false, "{e}"),
        }
        parent.send("test", &down).unwrap();
        prop_assert_eq!(Shape::from(&child.recv("test").unwrap()), Shape::from(&down));
    }

    /// Whatever a child sends, with no fd, one or two, the CLI gets a message or a named
    /// error, never a panic.
    #[test]
    fn any_datagram_on_the_socket_is_a_message_or_a_named_error(
        bytes in any_datagram(),
        fds in 0..3usize,
    ) {
        let (parent, child) = raw_pair();
        let files: Vec<OwnedFd> = (0..fds).map(|_| memfd()).collect();
        send_raw(child.as_fd(), &bytes, &files);
        match parent.recv("test") {
            Ok(message) => prop_assert!(fd_as_required(&message) && fds < 2),
            Err(ProtocolError::Receive { source: ReceiveError::TooManyFds, .. }) => prop_assert_eq!(fds, 2),
            Err(ProtocolError::Malformed { .. }) => {}
            Err(ProtocolError::Closed { .. }) => prop_assert!(bytes.is_empty() && fds == 0),
            Err(e) => prop_assert!(false, "unexpected error {e}"),
        }
    }

    /// exec's process is ready whatever the order of the joiner's pid and the process's own
    /// messages.
    #[test]
    fn exec_takes_the_pid_before_during_or_after_the_setup(
        at in 0..4usize,
        console in any::<bool>(),
        sysinfo in any::<bool>(),
        pid in any_pid(),
    ) {
        let (parent, child) = pair().unwrap();
        let mut messages = vec![];
        if console {
            messages.push(ToParent::Console(memfd()));
        }
        if sysinfo {
            messages.push(ToParent::SysinfoListener(memfd()));
        }
        messages.push(ToParent::Ready);
        messages.insert(at.min(messages.len()), ToParent::ProcessPid(pid));
        for message in &messages {
            child.tell(message).unwrap();
        }
        let (got, ready) = parent.wait_for_process("exec").unwrap();
        prop_assert_eq!(got, pid);
        prop_assert_eq!(ready.console.is_some(), console);
        prop_assert_eq!(ready.sysinfo.is_some(), sysinfo);
    }
}

/// A pair of the protocol's kind without the typed ends, for sending anything.
fn raw_pair() -> (ParentChannel, OwnedFd) {
    let (parent, child) = pair().unwrap();
    (parent, child.into_socket())
}

/// Sends `bytes` with any number of fds, as a broken or hostile child could.
fn send_raw(sock: BorrowedFd<'_>, bytes: &[u8], fds: &[OwnedFd]) {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !borrowed.is_empty() {
        assert!(control.push(SendAncillaryMessage::ScmRights(&borrowed)));
    }
    rustix::net::sendmsg(
        sock,
        &[std::io::IoSlice::new(bytes)],
        &mut control,
        SendFlags::empty(),
    )
    .unwrap();
}

fn unexpected(error: ProtocolError) -> (String, String) {
    match error {
        ProtocolError::Unexpected { expected, got, .. } => (expected.to_string(), got),
        other => panic!("not an unexpected-message error: {other}"),
    }
}

/// The bug this module replaced: create's wait for `ready` took any unknown message for a
/// pid. Now a pid there, or any message out of its step, is named.
#[test]
fn a_message_out_of_its_step_is_named_with_what_was_expected() {
    let (parent, child) = pair().unwrap();
    child.tell(&ToParent::ProcessPid(Pid::from_raw(7))).unwrap();
    let e = parent
        .wait_for_ready("setting up the container")
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "setting up the container: expected \"console\", \"sysinfo\" or \"ready\", got \"pid 7\""
    );

    child.tell(&ToParent::Ready).unwrap();
    let (expected, got) = unexpected(parent.wait_for_userns().unwrap_err());
    assert_eq!(
        (expected.as_str(), got.as_str()),
        ("\"userns\" with its fd", "\"ready\"")
    );

    child.tell(&ToParent::UserNamespace(memfd())).unwrap();
    let (_, got) = unexpected(parent.wait_for_init().unwrap_err());
    assert_eq!(got, "\"userns\"");

    parent.send_mount_namespace(memfd()).unwrap();
    let e = child.wait_for_go().unwrap_err();
    assert_eq!(
        e.to_string(),
        "waiting for the ID map: expected \"go\", got \"mntns\""
    );

    // Twice the same message where once is expected.
    for message in [
        ToParent::ProcessPid(Pid::from_raw(3)),
        ToParent::ProcessPid(Pid::from_raw(4)),
    ] {
        child.tell(&message).unwrap();
    }
    let (_, got) = unexpected(parent.wait_for_process("exec").unwrap_err());
    assert_eq!(got, "\"pid 4\"");
}

#[test]
fn a_childs_error_is_its_own_text_and_a_closed_end_names_the_peer() {
    let (parent, child) = pair().unwrap();
    child
        .tell(&ToParent::Failed(
            "createContainer hook \"/bin/false\": ended with 1".into(),
        ))
        .unwrap();
    let e = parent
        .wait_for_ready("setting up the container")
        .unwrap_err();
    assert!(matches!(e, ProtocolError::Failed(_)));
    assert_eq!(
        e.to_string(),
        "createContainer hook \"/bin/false\": ended with 1"
    );
    drop(child);
    assert_eq!(
        parent.wait_for_init().unwrap_err().to_string(),
        "creating the init: the container process died"
    );

    let (parent, child) = pair().unwrap();
    drop(parent);
    assert_eq!(
        child.wait_for_mount_namespace().unwrap_err().to_string(),
        "waiting for the mount namespace: the runtime went away"
    );
}

#[test]
fn fds_go_with_the_messages_that_carry_them_only() {
    let e = ToParent::decode(b"userns", None).unwrap_err();
    assert!(matches!(e, DecodeError::MissingFd("userns")), "{e}");
    let e = ToChild::decode(b"mntns", None).unwrap_err();
    assert!(matches!(e, DecodeError::MissingFd("mntns")), "{e}");
    for bytes in [&b"ready"[..], b"init 5", b"pid 5", b"error: x"] {
        let e = ToParent::decode(bytes, Some(memfd())).unwrap_err();
        assert!(matches!(e, DecodeError::StrayFd(_)), "{e}");
    }
    let e = ToChild::decode(b"go", Some(memfd())).unwrap_err();
    assert!(matches!(e, DecodeError::StrayFd("go")), "{e}");
    let e = ToChild::decode(b"state", None).unwrap_err();
    assert!(matches!(e, DecodeError::MissingFd("state")), "{e}");
    for bytes in [
        &b"init 0"[..],
        b"init -1",
        b"pid +5",
        b"pid 99999999999",
        b"init ",
    ] {
        let e = ToParent::decode(bytes, None).unwrap_err();
        assert!(matches!(e, DecodeError::BadPid { .. }), "{e}");
    }
    // The state is a JSON object: the init sets its status.
    for json in [&b"5"[..], b"[]", b"{"] {
        let fd = memfd();
        rustix::io::write(&fd, json).unwrap();
        rustix::fs::seek(&fd, rustix::fs::SeekFrom::Start(0)).unwrap();
        let e = ToChild::decode(b"state", Some(fd)).unwrap_err();
        assert!(matches!(e, DecodeError::BadState(_)), "{e}");
    }
    // An fd that cannot be read (here a directory) is no state either.
    let directory: OwnedFd = std::fs::File::open("/").unwrap().into();
    let e = ToChild::decode(b"state", Some(directory)).unwrap_err();
    assert!(matches!(e, DecodeError::UnreadableState(_)), "{e}");
    // A payload where none belongs, or none where one does.
    for bytes in [&b"ready "[..], b"go now", b"init", b"state"] {
        assert!(ToParent::decode(bytes, None).is_err() && ToChild::decode(bytes, None).is_err());
    }
}

/// Two fds on one message: refused, and neither stays open in the receiver.
#[test]
fn a_message_with_two_fds_is_refused() {
    let (parent, child) = raw_pair();
    send_raw(child.as_fd(), b"console", &[memfd(), memfd()]);
    let e = parent.recv("test").unwrap_err();
    assert!(
        matches!(
            e,
            ProtocolError::Receive {
                source: ReceiveError::TooManyFds,
                ..
            }
        ),
        "{e}"
    );
}

/// A message longer than the receiver takes is refused, not cut off. The state, whose
/// annotations may be larger than any datagram, goes whole in its memfd.
#[test]
fn a_message_too_long_is_refused_whole_and_a_large_state_goes_whole() {
    let (parent, child) = raw_pair();
    send_raw(child.as_fd(), b"error: twelve bytes", &[]);
    let e = scm::recv_at_most(parent.as_fd(), 8).err().unwrap();
    assert!(matches!(e, ReceiveError::TooLong), "{e}");

    let (parent, child) = pair().unwrap();
    let mut state = Map::new();
    state.insert(
        "annotations".into(),
        "x".repeat(4 * scm::MAX_MESSAGE).into(),
    );
    parent.send_state(state.clone()).unwrap();
    assert_eq!(child.wait_for_state().unwrap(), state);
}

/// The console socket's own protocol (runc's): any name, one fd.
#[test]
fn the_console_goes_as_one_fd() {
    let (a, b) = rustix::net::socketpair(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::STREAM,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )
    .unwrap();
    let master = memfd();
    scm::send(a.as_fd(), b"/dev/ptmx", Some(master.as_fd())).unwrap();
    let received = scm::recv(b.as_fd()).unwrap();
    assert_eq!(received.bytes, b"/dev/ptmx");
    assert_eq!(inode(received.fd.unwrap().as_fd()), inode(master.as_fd()));
}
