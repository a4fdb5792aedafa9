//! Reaching into another network namespace from the daemon.
//!
//! Every instance listens on the same port inside a network namespace of
//! its own, so the daemon cannot reach it through its own loopback. A
//! socket belongs to the namespace of the thread that created it, for its
//! whole life, whichever thread uses it later; setns(CLONE_NEWNET) changes
//! only the calling thread. So a helper thread enters the namespace and
//! creates the socket there, and the caller connects it on its own thread:
//! a slow connect to one port never holds up another caller.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use rustix::net::{AddressFamily, SocketFlags, SocketType};
use rustix::thread::LinkNameSpaceType;

/// Helper threads only make a few system calls.
const HELPER_STACK: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum NetNsError {
    #[error("open the network namespace of pid {pid} (/proc/{pid}/ns/net): {error}")]
    Open { pid: u32, error: io::Error },
    #[error("enter the network namespace of pid {pid}: {error}")]
    Enter { pid: u32, error: io::Error },
    #[error("start a helper thread for the network namespace of pid {pid}: {error}")]
    Thread { pid: u32, error: io::Error },
    #[error("the helper thread for the network namespace of pid {pid} panicked")]
    ThreadPanicked { pid: u32 },
    #[error("the connector thread for the network namespace of pid {pid} has stopped")]
    ConnectorStopped { pid: u32 },
    #[error("create a socket in the network namespace of pid {pid}: {error}")]
    Socket { pid: u32, error: io::Error },
    #[error("connect to 127.0.0.1:{port} in the network namespace of pid {pid}: {error}")]
    Connect {
        pid: u32,
        port: u16,
        error: io::Error,
    },
}

impl NetNsError {
    /// The underlying error's kind, so that a health check can tell a
    /// refused connection (nothing listens yet) from a timeout.
    pub fn io_kind(&self) -> Option<io::ErrorKind> {
        match self {
            NetNsError::Open { error, .. }
            | NetNsError::Enter { error, .. }
            | NetNsError::Thread { error, .. }
            | NetNsError::Socket { error, .. }
            | NetNsError::Connect { error, .. } => Some(error.kind()),
            NetNsError::ThreadPanicked { .. } | NetNsError::ConnectorStopped { .. } => None,
        }
    }
}

/// Makes `cmd` start in the network namespace at `path` (such as
/// /proc/PID/ns/net): its child enters it between fork and exec. Unlike
/// wrapping the command in nsenter, this keeps the command itself, with
/// what it hands its child (the sandbox's seccomp memfd).
#[allow(unsafe_code)]
pub fn enter_in_child(cmd: &mut std::process::Command, path: &std::path::Path) -> io::Result<()> {
    use std::os::unix::process::CommandExt as _;
    let ns: OwnedFd = std::fs::File::open(path)?.into();
    // SAFETY: the closure runs in the forked child before exec, where only
    // async-signal-safe work is allowed: one setns system call through
    // rustix on an fd the closure owns (opened close-on-exec before the
    // fork), whose error becomes an io::Error without allocating.
    unsafe {
        cmd.pre_exec(move || {
            rustix::thread::move_into_link_name_space(
                ns.as_fd(),
                Some(LinkNameSpaceType::Network),
            )?;
            Ok(())
        })
    };
    Ok(())
}

/// A handle on a network namespace, kept open by fd: the namespace stays
/// the same one even when the process it was taken from exits and its pid
/// is reused.
#[derive(Debug)]
pub struct NetNs {
    fd: OwnedFd,
    /// The process it was taken from, for messages.
    pid: u32,
    dev: u64,
    ino: u64,
}

impl NetNs {
    pub fn of_pid(pid: u32) -> Result<NetNs, NetNsError> {
        let open = |error| NetNsError::Open { pid, error };
        let file = std::fs::File::open(format!("/proc/{pid}/ns/net")).map_err(open)?;
        let meta = file.metadata().map_err(open)?;
        Ok(NetNs {
            fd: file.into(),
            pid,
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }

    /// Another handle on the same namespace.
    pub fn try_clone(&self) -> Result<NetNs, NetNsError> {
        let fd = self.fd.try_clone().map_err(|error| NetNsError::Open {
            pid: self.pid,
            error,
        })?;
        Ok(NetNs { fd, ..*self })
    }

    /// The pid this handle was taken from.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether `pid` is (still) a member of this namespace; false when it
    /// is gone.
    pub fn contains_pid(&self, pid: u32) -> bool {
        std::fs::metadata(format!("/proc/{pid}/ns/net"))
            .map(|m| (m.dev(), m.ino()) == (self.dev, self.ino))
            .unwrap_or(false)
    }

    /// Opens a TCP connection to 127.0.0.1:`port` inside the namespace.
    /// Costs a short-lived thread; use a [`Connector`] for many
    /// connections.
    pub fn connect(&self, port: u16, timeout: Duration) -> Result<TcpStream, NetNsError> {
        let pid = self.pid;
        let fd = self.fd.as_fd();
        let socket = std::thread::scope(|scope| {
            let helper = std::thread::Builder::new()
                .name(format!("kiln-netns-{pid}"))
                .stack_size(HELPER_STACK)
                .spawn_scoped(scope, move || socket_in(fd, pid))
                .map_err(|error| NetNsError::Thread { pid, error })?;
            helper
                .join()
                .map_err(|_| NetNsError::ThreadPanicked { pid })?
        })?;
        connect_socket(socket, port, timeout).map_err(|error| NetNsError::Connect {
            pid,
            port,
            error,
        })
    }

    /// A thread that stays in the namespace and creates sockets for
    /// [`Connector::connect`]; it ends when the last clone is dropped.
    pub fn connector(&self) -> Result<Connector, NetNsError> {
        let pid = self.pid;
        let fd = self
            .fd
            .try_clone()
            .map_err(|error| NetNsError::Open { pid, error })?;
        let (entered_tx, entered_rx) = mpsc::sync_channel(1);
        let (spares, ready) = mpsc::sync_channel::<io::Result<OwnedFd>>(SPARE_SOCKETS);
        std::thread::Builder::new()
            .name(format!("kiln-netns-{pid}"))
            .stack_size(HELPER_STACK)
            .spawn(move || {
                let entered = enter(fd.as_fd(), pid);
                drop(fd);
                let failed = entered.is_err();
                // The receiver waits for exactly this message.
                let _ = entered_tx.send(entered);
                if failed {
                    return;
                }
                // Blocks while the spares are full; ends when the last
                // Connector is dropped.
                while spares.send(new_socket().map_err(Into::into)).is_ok() {}
            })
            .map_err(|error| NetNsError::Thread { pid, error })?;
        entered_rx
            .recv()
            .map_err(|_| NetNsError::ThreadPanicked { pid })??;
        Ok(Connector {
            pid,
            ready: Arc::new(Mutex::new(ready)),
        })
    }
}

/// Sockets a connector's thread keeps made ahead, so that a connect
/// usually takes one without waiting for the thread to wake up.
const SPARE_SOCKETS: usize = 4;

/// Connects to ports inside one network namespace with sockets made by a
/// thread that lives there. Cheap to clone; all clones share the thread.
#[derive(Debug, Clone)]
pub struct Connector {
    pid: u32,
    ready: Arc<Mutex<mpsc::Receiver<io::Result<OwnedFd>>>>,
}

impl Connector {
    pub fn connect(&self, port: u16, timeout: Duration) -> Result<TcpStream, NetNsError> {
        let pid = self.pid;
        let socket = self
            .ready
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .recv()
            .map_err(|_| NetNsError::ConnectorStopped { pid })?
            .map_err(|error| NetNsError::Socket { pid, error })?;
        connect_socket(socket, port, timeout).map_err(|error| NetNsError::Connect {
            pid,
            port,
            error,
        })
    }
}

fn enter(fd: BorrowedFd<'_>, pid: u32) -> Result<(), NetNsError> {
    rustix::thread::move_into_link_name_space(fd, Some(LinkNameSpaceType::Network)).map_err(|e| {
        NetNsError::Enter {
            pid,
            error: e.into(),
        }
    })
}

fn socket_in(fd: BorrowedFd<'_>, pid: u32) -> Result<OwnedFd, NetNsError> {
    enter(fd, pid)?;
    new_socket().map_err(|e| NetNsError::Socket {
        pid,
        error: e.into(),
    })
}

/// Non-blocking so that the connect can be bounded by a timeout.
fn new_socket() -> rustix::io::Result<OwnedFd> {
    rustix::net::socket_with(
        AddressFamily::INET,
        SocketType::STREAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )
}

/// Connects a non-blocking socket within `timeout` and hands it back
/// blocking, as std's own streams are.
fn connect_socket(socket: OwnedFd, port: u16, timeout: Duration) -> io::Result<TcpStream> {
    if timeout.is_zero() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "connect timeout is zero",
        ));
    }
    let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
    match rustix::net::connect(&socket, &addr) {
        Ok(()) => {}
        Err(Errno::INPROGRESS) => {
            let deadline = Instant::now() + timeout;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no answer within {timeout:?}"),
                    ));
                }
                let left = Timespec::try_from(left).unwrap_or(Timespec {
                    tv_sec: i64::MAX,
                    tv_nsec: 0,
                });
                let mut fds = [PollFd::new(&socket, PollFlags::OUT)];
                match rustix::event::poll(&mut fds, Some(&left)) {
                    Ok(0) | Err(Errno::INTR) => continue,
                    Ok(_) => break,
                    Err(e) => return Err(e.into()),
                }
            }
            rustix::net::sockopt::socket_error(&socket)??;
        }
        Err(e) => return Err(e.into()),
    }
    let stream = TcpStream::from(socket);
    stream.set_nonblocking(false)?;
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    fn own() -> NetNs {
        NetNs::of_pid(std::process::id()).unwrap()
    }

    #[test]
    fn connects_in_own_namespace_through_both_paths() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            for _ in 0..2 {
                let (mut s, _) = listener.accept().unwrap();
                s.write_all(b"hello").unwrap();
            }
        });
        let ns = own();
        let mut buf = String::new();
        ns.connect(port, Duration::from_secs(5))
            .unwrap()
            .read_to_string(&mut buf)
            .unwrap();
        assert_eq!(buf, "hello");
        let connector = ns.connector().unwrap();
        buf.clear();
        connector
            .clone()
            .connect(port, Duration::from_secs(5))
            .unwrap()
            .read_to_string(&mut buf)
            .unwrap();
        assert_eq!(buf, "hello");
        server.join().unwrap();
    }

    #[test]
    fn refused_connection_names_port_and_pid() {
        // Bound but not listening: nothing else can take the port meanwhile.
        let socket = new_socket().unwrap();
        rustix::net::bind(&socket, &SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = match rustix::net::getsockname(&socket).unwrap().try_into() {
            Ok(std::net::SocketAddr::V4(a)) => a.port(),
            other => panic!("{other:?}"),
        };
        let err = own().connect(port, Duration::from_secs(5)).unwrap_err();
        assert_eq!(err.io_kind(), Some(io::ErrorKind::ConnectionRefused));
        let text = err.to_string();
        assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
        assert!(text.contains(&std::process::id().to_string()), "{text}");
    }

    #[test]
    fn missing_pid_is_named() {
        let err = NetNs::of_pid(u32::MAX).unwrap_err();
        assert!(err.to_string().contains(&u32::MAX.to_string()), "{err}");
    }

    #[test]
    fn contains_pid_compares_namespaces() {
        let ns = own();
        assert!(ns.contains_pid(std::process::id()));
        assert!(!ns.contains_pid(u32::MAX));
    }
}
