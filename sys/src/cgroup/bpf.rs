//! A `BPF_PROG_TYPE_CGROUP_DEVICE` program that allows exactly a [`DevicePolicy`], assembled
//! here and loaded with bpf(2).
//!
//! Written by hand rather than with a crate: the program is a fixed shape of a few instructions
//! per allowed device (the shape runc's and youki's device filters have), and the maintained BPF
//! crates need a C or nightly BPF toolchain (libbpf-sys builds libbpf against libelf; aya
//! compiles programs with bpf-linker) to load what is here a plain array of instructions.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use super::devices::DevicePolicy;

// From <linux/bpf.h>.
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;
const BPF_DEVCG_DEV_CHAR: i32 = 2;
const BPF_DEVCG_ACC_READ: i32 = 2;
const BPF_DEVCG_ACC_WRITE: i32 = 4;

/// One BPF instruction, as the kernel reads it.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    code: u8,
    /// dst register in the low nibble, src in the high one.
    regs: u8,
    off: i16,
    imm: i32,
}

// Opcodes (class | size/op | source).
const LDX_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
const MOV64_K: u8 = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K
const MOV64_X: u8 = 0xbf; // BPF_ALU64 | BPF_MOV | BPF_X
const AND64_K: u8 = 0x57; // BPF_ALU64 | BPF_AND | BPF_K
const RSH64_K: u8 = 0x77; // BPF_ALU64 | BPF_RSH | BPF_K
const JNE_K: u8 = 0x55; // BPF_JMP | BPF_JNE | BPF_K
const EXIT: u8 = 0x95; // BPF_JMP | BPF_EXIT

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: dst | (src << 4),
        off,
        imm,
    }
}

// Registers: r1 holds the context (struct bpf_cgroup_dev_ctx { u32 access_type; u32 major;
// u32 minor; }, access_type = access << 16 | type); the program keeps the device type in r3,
// the requested access in r4, major in r5 and minor in r6.
const CTX: u8 = 1;
const TYPE: u8 = 3;
const ACCESS: u8 = 4;
const MAJOR: u8 = 5;
const MINOR: u8 = 6;

/// The program for `policy`: answers 1 (allow) for a character device in it asked for read
/// and/or write, 0 (deny, EPERM) for anything else. What every device shares (a character
/// device, nothing asked but read and write) is tested once, first; then each device is a
/// major (and minor) test. Fewer branches are less for the verifier to walk: it took 0.7-0.8 ms
/// per load with the shared tests repeated in each device's block.
pub fn assemble(policy: &DevicePolicy) -> Vec<Insn> {
    let mut devices = Vec::new();
    for device in policy.allowed() {
        // Each test jumps past the rest of this device's block when it fails.
        let mut tests = vec![(MAJOR, device.major as i32)];
        if let Some(minor) = device.minor {
            tests.push((MINOR, minor as i32));
        }
        let block_len = tests.len() + 2;
        for (i, (register, value)) in tests.iter().enumerate() {
            let rest = (block_len - i - 1) as i16;
            devices.push(insn(JNE_K, *register, 0, rest, *value));
        }
        devices.extend([insn(MOV64_K, 0, 0, 0, 1), insn(EXIT, 0, 0, 0, 0)]);
    }
    let past_devices = devices.len() as i16;
    // Never mknod, nor anything else but read and write.
    let not_read_write = !(BPF_DEVCG_ACC_READ | BPF_DEVCG_ACC_WRITE) & 0xffff;
    let mut program = vec![
        insn(LDX_W, TYPE, CTX, 0, 0),
        insn(MOV64_X, ACCESS, TYPE, 0, 0),
        insn(AND64_K, TYPE, 0, 0, 0xffff),
        insn(RSH64_K, ACCESS, 0, 0, 16),
        insn(AND64_K, ACCESS, 0, 0, not_read_write),
        insn(LDX_W, MAJOR, CTX, 4, 0),
        insn(LDX_W, MINOR, CTX, 8, 0),
        // Both jump to the denial after the devices' blocks.
        insn(JNE_K, TYPE, 0, past_devices + 1, BPF_DEVCG_DEV_CHAR),
        insn(JNE_K, ACCESS, 0, past_devices, 0),
    ];
    program.extend(devices);
    program.extend([insn(MOV64_K, 0, 0, 0, 0), insn(EXIT, 0, 0, 0, 0)]);
    program
}

#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    #[error("bpf(BPF_PROG_LOAD): {source}; verifier: {log}")]
    Load { source: std::io::Error, log: String },
    #[error("bpf(BPF_PROG_ATTACH): {0}")]
    Attach(#[source] std::io::Error),
}

/// `union bpf_attr` for BPF_PROG_LOAD, up to the fields used; the rest stays zero.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// `union bpf_attr` for BPF_PROG_ATTACH.
#[repr(C)]
struct ProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

fn bpf<T>(command: libc::c_long, attr: &T) -> std::io::Result<i32> {
    // SAFETY: `attr` is a live, initialized bpf_attr prefix of the size passed; the kernel
    // zero-checks the tail it does not get and reads nothing beyond `size_of::<T>()`.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            command,
            attr as *const T,
            std::mem::size_of::<T>(),
        )
    };
    if ret < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(ret as i32)
    }
}

/// A loaded device program, held by fd until it is attached.
pub struct DeviceProgram {
    fd: OwnedFd,
}

impl DeviceProgram {
    /// Loads the program for `policy`. Without the verifier's log first, which costs several
    /// milliseconds even when it passes; with it only to explain a refusal.
    pub fn load(policy: &DevicePolicy) -> Result<Self, BpfError> {
        let program = assemble(policy);
        match Self::load_logged(&program, &mut []) {
            Ok(loaded) => Ok(loaded),
            Err(_) => {
                let mut log = vec![0u8; 64 * 1024];
                Self::load_logged(&program, &mut log).map_err(|source| {
                    let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
                    BpfError::Load {
                        source,
                        log: String::from_utf8_lossy(&log[..end]).trim().to_string(),
                    }
                })
            }
        }
    }

    /// BPF_PROG_LOAD of `program`, with the verifier's log in `log` unless it is empty.
    fn load_logged(program: &[Insn], log: &mut [u8]) -> std::io::Result<Self> {
        let mut name = [0u8; 16];
        name[..13].copy_from_slice(b"burrow_device");
        let attr = ProgLoadAttr {
            prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
            insn_cnt: program.len() as u32,
            insns: program.as_ptr() as u64,
            license: c"Apache-2.0".as_ptr() as u64,
            log_level: u32::from(!log.is_empty()),
            log_size: log.len() as u32,
            // Null without a log: the kernel refuses a buffer with log level 0.
            log_buf: if log.is_empty() {
                0
            } else {
                log.as_mut_ptr() as u64
            },
            prog_name: name,
            expected_attach_type: BPF_CGROUP_DEVICE,
            ..Default::default()
        };
        let fd = bpf(BPF_PROG_LOAD, &attr)?;
        // SAFETY: BPF_PROG_LOAD returned a new fd that nothing else owns.
        Ok(DeviceProgram {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Attaches the program to the cgroup2 directory `cgroup`, beside any its ancestors carry.
    /// It stays attached as long as the cgroup exists.
    pub fn attach(&self, cgroup: BorrowedFd<'_>) -> Result<(), BpfError> {
        let attr = ProgAttachAttr {
            target_fd: cgroup.as_raw_fd() as u32,
            attach_bpf_fd: self.fd.as_raw_fd() as u32,
            attach_type: BPF_CGROUP_DEVICE,
            attach_flags: BPF_F_ALLOW_MULTI,
            replace_bpf_fd: 0,
        };
        bpf(BPF_PROG_ATTACH, &attr)
            .map(drop)
            .map_err(BpfError::Attach)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the program on one access, the way the kernel would: a tiny interpreter of exactly
    /// the instructions `assemble` emits.
    fn run(program: &[Insn], dev_type: i32, access: i32, major: u32, minor: u32) -> u64 {
        let mut r = [0u64; 11];
        let ctx = [((access << 16) | dev_type) as u32, major, minor];
        let mut pc = 0usize;
        loop {
            let i = program[pc];
            let (dst, src) = ((i.regs & 0xf) as usize, (i.regs >> 4) as usize);
            pc += 1;
            match i.code {
                LDX_W => r[dst] = u64::from(ctx[(i.off / 4) as usize]),
                MOV64_K => r[dst] = i.imm as i64 as u64,
                MOV64_X => r[dst] = r[src],
                AND64_K => r[dst] &= i.imm as i64 as u64,
                RSH64_K => r[dst] >>= i.imm,
                JNE_K if r[dst] != i.imm as i64 as u64 => pc += i.off as usize,
                JNE_K => {}
                EXIT => return r[0],
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
    }

    const BLOCK: i32 = 1;
    const MKNOD: i32 = 1;
    const RW: i32 = BPF_DEVCG_ACC_READ | BPF_DEVCG_ACC_WRITE;

    #[test]
    fn allows_exactly_the_policy() {
        let program = assemble(&DevicePolicy::standard().with(10, 229));
        let char_rw = |major, minor| run(&program, BPF_DEVCG_DEV_CHAR, RW, major, minor);
        for (major, minor) in [
            (1, 3),
            (1, 9),
            (5, 0),
            (5, 2),
            (136, 0),
            (143, 77),
            (10, 229),
        ] {
            assert_eq!(char_rw(major, minor), 1, "c {major}:{minor}");
        }
        for (major, minor) in [(1, 1), (1, 2), (1, 4), (1, 11), (5, 1), (10, 200), (144, 0)] {
            assert_eq!(char_rw(major, minor), 0, "c {major}:{minor}");
        }
        assert_eq!(run(&program, BPF_DEVCG_DEV_CHAR, 2, 1, 3), 1, "read only");
        assert_eq!(run(&program, BLOCK, RW, 1, 3), 0, "block 1:3");
        assert_eq!(run(&program, BLOCK, RW, 7, 0), 0, "a loop device");
        assert_eq!(run(&program, BPF_DEVCG_DEV_CHAR, MKNOD, 1, 3), 0, "mknod");
        assert_eq!(run(&program, BPF_DEVCG_DEV_CHAR, RW | MKNOD, 1, 3), 0);
    }

    #[test]
    fn the_kernel_verifier_accepts_it() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        DeviceProgram::load(&DevicePolicy::standard()).unwrap();
    }
}
