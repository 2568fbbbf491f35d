//! What `kvbench walk` reads about the node's process from Linux's `/proc`: its resident
//! memory (`VmRSS` in `/proc/<pid>/status`), and, when no `--pid` is given, which
//! process listens on the node's TCP port.

use std::path::Path;

/// The `VmRSS` line of a `/proc/<pid>/status` text, in KiB.
pub fn parse_vm_rss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut fields = line["VmRSS:".len()..].split_whitespace();
    let value = fields.next()?.parse().ok()?;
    (fields.next() == Some("kB")).then_some(value)
}

/// The resident memory of `pid` now, in KiB.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| anyhow::anyhow!("reading {path}: {e} (has the process exited?)"))?;
    parse_vm_rss_kib(&text).ok_or_else(|| anyhow::anyhow!("{path} has no VmRSS line"))
}

/// The socket inodes of a `/proc/net/tcp` or `/proc/net/tcp6` text that listen
/// (state `0A`) on `port`.
pub fn listening_inodes(table: &str, port: u16) -> Vec<u64> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
            let local = fields.get(1)?;
            let state = fields.get(3)?;
            let inode = fields.get(9)?;
            let local_port = u16::from_str_radix(local.rsplit(':').next()?, 16).ok()?;
            (*state == "0A" && local_port == port)
                .then(|| inode.parse().ok())
                .flatten()
        })
        .filter(|inode| *inode != 0)
        .collect()
}

/// The process that listens on TCP `port` (IPv4 or IPv6), found through the socket's
/// inode among the open files of every process this user may look into.
pub fn pid_listening_on(port: u16) -> anyhow::Result<u32> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(table) {
            inodes.extend(listening_inodes(&text, port));
        }
    }
    if inodes.is_empty() {
        anyhow::bail!("nothing listens on TCP port {port} here (pass the node's --pid)");
    }
    let wanted: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if holds_any(&entry.path().join("fd"), &wanted) {
            return Ok(pid);
        }
    }
    anyhow::bail!("no process of ours holds the socket listening on port {port} (pass --pid)")
}

fn holds_any(fd_dir: &Path, sockets: &[String]) -> bool {
    let Ok(fds) = std::fs::read_dir(fd_dir) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path())
            .ok()
            .and_then(|target| target.to_str().map(|t| sockets.iter().any(|s| s == t)))
            .unwrap_or(false)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_rss_is_read_in_kib() {
        let status = "Name:\tkvstore\nVmPeak:\t  900000 kB\nVmRSS:\t   41236 kB\nThreads:\t9\n";
        assert_eq!(parse_vm_rss_kib(status), Some(41236));
        assert_eq!(parse_vm_rss_kib("Name:\tx\n"), None);
        assert_eq!(parse_vm_rss_kib("VmRSS:\t12 MB\n"), None);
    }

    #[test]
    fn only_listening_sockets_on_the_port_count() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 4343 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:1F91 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4444 1 0000000000000000 100 0 0 10 0
";
        assert_eq!(listening_inodes(table, 8080), vec![4242]);
        assert_eq!(listening_inodes(table, 8081), vec![4444]);
        assert!(listening_inodes(table, 80).is_empty());
    }

    #[test]
    fn a_listener_of_this_process_is_found_by_its_port() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert_eq!(pid_listening_on(port).unwrap(), std::process::id());
        drop(listener);
        assert!(pid_listening_on(port).is_err());
    }

    #[test]
    fn this_process_has_a_resident_size() {
        let kib = rss_kib(std::process::id()).unwrap();
        assert!(kib > 100, "{kib} KiB");
    }
}
