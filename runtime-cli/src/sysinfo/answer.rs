//! The sysinfo(2) answer a container process gets: the host's, with memory, swap, process
//! count and uptime replaced by what the caller's cgroups and the container's start allow it,
//! as lxcfs computes /proc/meminfo and /proc/uptime (so `free` agrees with /proc/meminfo).

use burrow_sys::cgroup::usage::MemoryFigures;

/// What the answer is made of, read for one call.
pub struct Readings {
    /// The host's own sysinfo(2).
    pub host: libc::sysinfo,
    /// The caller's memory cgroup; None where it could not be read (the host's memory then).
    pub memory: Option<MemoryFigures>,
    /// Tasks in the caller's pids cgroup.
    pub tasks: Option<u64>,
    /// Seconds since boot at which the container's init started.
    pub started: Option<u64>,
}

/// The answer: the host's loads, the container's memory, swap, tasks and uptime, in the host's
/// `mem_unit`.
// c_ulong is u64 here, u32 on 32-bit targets: the casts are for those.
#[allow(clippy::unnecessary_cast)]
pub fn answer(readings: &Readings) -> libc::sysinfo {
    let mut out = readings.host;
    let unit = u64::from(readings.host.mem_unit.max(1));
    let host = |units: libc::c_ulong| units as u64 * unit;
    let in_units = |bytes: u64| (bytes / unit) as libc::c_ulong;
    if let Some(memory) = &readings.memory {
        let total = memory.limit.min(host(readings.host.totalram));
        let used = memory.usage.min(total);
        out.totalram = in_units(total);
        out.freeram = in_units(total - used);
        out.sharedram = in_units(memory.shmem.min(used));
        out.bufferram = 0;
        if let Some((limit, usage)) = memory.swap {
            let total = limit.min(host(readings.host.totalswap));
            out.totalswap = in_units(total);
            out.freeswap = in_units(total - usage.min(total));
        }
    }
    if let Some(tasks) = readings.tasks {
        out.procs = tasks.min(u64::from(u16::MAX)) as u16;
    }
    if let Some(started) = readings.started {
        let uptime = (readings.host.uptime.max(0) as u64).saturating_sub(started);
        out.uptime = uptime as libc::c_long;
    }
    out.totalhigh = 0;
    out.freehigh = 0;
    out
}

/// When the process `stat` describes started, in seconds since boot (field 22 of
/// /proc/PID/stat, in clock ticks of `ticks_per_second`).
pub fn started_from_stat(stat: &str, ticks_per_second: u64) -> Option<u64> {
    let ticks: u64 = burrow_sys::proc_stat::field(stat.as_bytes(), 22)?
        .parse()
        .ok()?;
    Some(ticks / ticks_per_second.max(1))
}

#[cfg(test)]
#[allow(clippy::unnecessary_cast)] // As in `answer`.
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;
    const MIB: u64 = 1 << 20;

    fn host() -> libc::sysinfo {
        // SAFETY: sysinfo is plain integers; all zero is a valid value of it.
        let mut host: libc::sysinfo = unsafe { std::mem::zeroed() };
        host.uptime = 86_400;
        host.loads = [1, 2, 3];
        host.totalram = (24 * GIB) as libc::c_ulong;
        host.freeram = (20 * GIB) as libc::c_ulong;
        host.bufferram = (GIB) as libc::c_ulong;
        host.totalswap = (2 * GIB) as libc::c_ulong;
        host.freeswap = (2 * GIB) as libc::c_ulong;
        host.procs = 900;
        host.mem_unit = 1;
        host
    }

    fn limited(limit: u64, usage: u64) -> MemoryFigures {
        MemoryFigures {
            limit,
            usage,
            cache: 10 * MIB,
            shmem: MIB,
            swap: None,
        }
    }

    #[test]
    fn memory_is_the_cgroups_and_the_loads_the_hosts() {
        let out = answer(&Readings {
            host: host(),
            memory: Some(limited(256 * MIB, 40 * MIB)),
            tasks: Some(7),
            started: Some(86_000),
        });
        assert_eq!(out.totalram as u64, 256 * MIB);
        assert_eq!(out.freeram as u64, 216 * MIB);
        assert_eq!(out.sharedram as u64, MIB);
        assert_eq!(out.bufferram, 0);
        assert_eq!(out.procs, 7);
        assert_eq!(out.uptime, 400);
        assert_eq!(out.loads, [1, 2, 3]);
        // No swap accounting: the host's swap.
        assert_eq!(out.totalswap as u64, 2 * GIB);
    }

    #[test]
    fn no_limit_is_the_hosts_memory_and_usage_above_it_leaves_nothing_free() {
        let out = answer(&Readings {
            host: host(),
            memory: Some(limited(u64::MAX, 3 * GIB)),
            tasks: None,
            started: None,
        });
        assert_eq!(out.totalram as u64, 24 * GIB);
        assert_eq!(out.freeram as u64, 21 * GIB);
        assert_eq!((out.procs, out.uptime), (900, 86_400));
        let full = answer(&Readings {
            host: host(),
            memory: Some(limited(256 * MIB, 300 * MIB)),
            tasks: Some(1 << 20),
            started: Some(90_000),
        });
        assert_eq!(full.freeram, 0);
        assert_eq!(full.procs, u16::MAX);
        assert_eq!(full.uptime, 0, "a start after the host's uptime reads as 0");
    }

    #[test]
    fn swap_is_the_cgroups_where_accounted_and_units_are_kept() {
        let mut host = host();
        host.mem_unit = 4096;
        host.totalram = (24 * GIB / 4096) as libc::c_ulong;
        host.totalswap = (2 * GIB / 4096) as libc::c_ulong;
        let mut memory = limited(GIB, 512 * MIB);
        memory.swap = Some((512 * MIB, 128 * MIB));
        let out = answer(&Readings {
            host,
            memory: Some(memory),
            tasks: None,
            started: None,
        });
        assert_eq!(out.mem_unit, 4096);
        assert_eq!(out.totalram as u64 * 4096, GIB);
        assert_eq!(out.totalswap as u64 * 4096, 512 * MIB);
        assert_eq!(out.freeswap as u64 * 4096, 384 * MIB);
    }

    #[test]
    fn the_start_is_read_after_the_name() {
        let stat = "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 12345 \
            1000 100 18446744073709551615";
        assert_eq!(started_from_stat(stat, 100), Some(123));
        assert_eq!(started_from_stat("4242 (sh) S 1", 100), None);
        assert_eq!(started_from_stat("garbage", 100), None);
    }
}
