//! Taking over a connection the host's own HTTP server accepted, once it has read an upgrade
//! request from it (see [`crate::net::server::Server::adopt`]). The platform-specific part lives
//! here and only here.
//!
//! The descriptor is duplicated, not taken: the host keeps its own copy and closes it when it
//! lets go of its socket, which leaves the connection open on ours (a TCP connection ends when
//! its last descriptor is closed). Nothing here shuts the connection down, since a shutdown
//! would act on the connection itself, for both copies. Before the server treats the copy as a
//! TCP stream it checks that it is one: a connected stream socket of the Internet family.

use crate::error::Error;

fn cannot(reason: impl Into<String>) -> Error {
    Error::CannotAdopt(reason.into())
}

/// Duplicates the host's descriptor of a connected TCP socket into a stream the server owns,
/// non-blocking. The copy is close-on-exec, so a child process the host spawns later does not
/// hold the connection open.
///
/// # Safety
///
/// `fd` must be a descriptor that stays open until this returns: the caller's own socket,
/// which it does not close meanwhile. It is only read and duplicated here, never closed.
#[cfg(unix)]
pub unsafe fn dup_tcp_stream(fd: i32) -> Result<std::net::TcpStream, Error> {
    use std::os::fd::BorrowedFd;

    if fd < 0 {
        return Err(cannot("the socket has no file descriptor"));
    }
    // SAFETY: the caller keeps `fd` open for this call, and the borrow ends with it.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    // `F_DUPFD_CLOEXEC`: a new descriptor for the same open socket.
    let owned = borrowed
        .try_clone_to_owned()
        .map_err(|e| cannot(format!("its file descriptor cannot be duplicated: {e}")))?;
    let socket = socket2::Socket::from(owned);
    match socket.r#type() {
        Ok(t) if t == socket2::Type::STREAM => {}
        Ok(_) => return Err(cannot("its file descriptor is not a stream socket")),
        Err(e) => return Err(cannot(format!("its file descriptor is not a socket: {e}"))),
    }
    if socket.local_addr().ok().and_then(|a| a.as_socket()).is_none() {
        return Err(cannot(
            "its file descriptor is not a TCP socket (a Unix domain socket cannot be adopted)",
        ));
    }
    // A listening socket, or one whose client is already gone.
    if let Err(e) = socket.peer_addr() {
        return Err(cannot(format!("the socket is not connected: {e}")));
    }
    // The flag is the open socket's, shared with the host's copy, which is non-blocking too.
    socket
        .set_nonblocking(true)
        .map_err(|e| cannot(format!("the socket cannot be made non-blocking: {e}")))?;
    Ok(socket.into())
}

/// Elsewhere (Windows) the host's sockets cannot be handed over by descriptor.
///
/// # Safety
///
/// Nothing is done with `fd`; `unsafe` only to keep one signature on every platform.
#[cfg(not(unix))]
pub unsafe fn dup_tcp_stream(_fd: i32) -> Result<std::net::TcpStream, Error> {
    Err(cannot(
        "adopting a connection is supported on Linux and macOS only (not on Windows)",
    ))
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;

    fn pair() -> (std::net::TcpStream, std::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (client, server)
    }

    #[test]
    fn the_copy_outlives_the_hosts_descriptor() {
        let (mut client, host) = pair();
        // SAFETY: `host` is open for the call.
        let mut copy = unsafe { dup_tcp_stream(host.as_raw_fd()) }.unwrap();
        assert_ne!(copy.as_raw_fd(), host.as_raw_fd());
        // The host lets go of its socket: the connection stays open on the copy.
        drop(host);
        client.write_all(b"hello").unwrap();
        copy.set_nonblocking(false).unwrap();
        let mut buf = [0; 5];
        copy.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hello");
        copy.write_all(b"back").unwrap();
        let mut buf = [0; 4];
        client.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"back");
    }

    #[test]
    fn what_is_not_a_connected_tcp_socket_is_refused() {
        // SAFETY: every descriptor passed below is held open by a local for the call.
        let refused = |fd: i32| match unsafe { dup_tcp_stream(fd) } {
            Err(Error::CannotAdopt(reason)) => reason,
            other => panic!("adopted fd {fd}: {other:?}"),
        };
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        assert!(refused(udp.as_raw_fd()).contains("not a stream socket"));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(refused(listener.as_raw_fd()).contains("not connected"));
        let (unix, _other) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(refused(unix.as_raw_fd()).contains("Unix domain"));
        let file = std::fs::File::open("/dev/null").unwrap();
        assert!(refused(file.as_raw_fd()).contains("not a socket"));
        assert!(refused(-1).contains("no file descriptor"));
    }
}
