//! A TCP connection owned by one shard, split into a read half and a write half so that one
//! task can read while another writes (glommio keeps separate read and write sources per
//! socket, so the two never contend); outgoing connections ([`connect`]); and a listener a
//! shard accepts on by itself ([`Listener`], for ports other than the client port).

use futures_lite::{AsyncRead, AsyncWrite};
use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;

type Stream = glommio::net::TcpStream;

/// An accepted connection, bound to the shard that will serve it.
pub struct Conn {
    stream: Rc<RefCell<Stream>>,
    peer: Option<SocketAddr>,
}

/// The reading half of a [`Conn`].
pub struct ConnReader(Rc<RefCell<Stream>>);
/// The writing half of a [`Conn`].
pub struct ConnWriter(Rc<RefCell<Stream>>);

impl Conn {
    pub(crate) fn new(stream: Stream) -> Conn {
        let _ = stream.set_nodelay(true);
        let peer = stream.peer_addr().ok();
        Conn {
            stream: Rc::new(RefCell::new(stream)),
            peer,
        }
    }

    /// The remote address, if the socket still knows it.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer
    }

    /// Splits the connection into halves usable from two tasks.
    pub fn split(self) -> (ConnReader, ConnWriter) {
        (ConnReader(self.stream.clone()), ConnWriter(self.stream))
    }
}

impl ConnReader {
    /// Reads what is available into `buf`; `Ok(0)` at end of stream.
    pub async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let cell = &self.0;
        futures_lite::future::poll_fn(|cx| Pin::new(&mut *cell.borrow_mut()).poll_read(cx, buf))
            .await
    }
}

impl ConnWriter {
    /// Writes the whole buffer.
    pub async fn write_all(&mut self, mut buf: &[u8]) -> io::Result<()> {
        let cell = &self.0;
        while !buf.is_empty() {
            let n = futures_lite::future::poll_fn(|cx| {
                Pin::new(&mut *cell.borrow_mut()).poll_write(cx, buf)
            })
            .await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            buf = &buf[n..];
        }
        Ok(())
    }

    /// Shuts down both directions of the socket, so the peer sees the close at once even
    /// while the read half is still owned by a task.
    pub fn shutdown(&self) {
        use std::os::unix::io::AsRawFd;
        let fd = self.0.borrow().as_raw_fd();
        // SAFETY: shutdown(2) on a socket we own; it only changes the socket's state.
        unsafe {
            libc::shutdown(fd, libc::SHUT_RDWR);
        }
    }
}

/// Connects to `addr` from the current shard, within `timeout`.
pub async fn connect(addr: SocketAddr, timeout: std::time::Duration) -> io::Result<Conn> {
    let stream = Stream::connect_timeout(addr, timeout)
        .await
        .map_err(io::Error::from)?;
    Ok(Conn::new(stream))
}

/// A listening socket served by one shard (the client port is spread over the shards by
/// the pool instead).
pub struct Listener(glommio::net::TcpListener);

impl Listener {
    /// Takes over a bound, listening socket (see `bind_listener`) on the current shard.
    pub fn from_std(l: std::net::TcpListener) -> io::Result<Listener> {
        use std::os::unix::io::{FromRawFd, IntoRawFd};
        l.set_nonblocking(true)?;
        // SAFETY: the descriptor comes from a listening TcpListener whose ownership moves here.
        Ok(Listener(unsafe {
            glommio::net::TcpListener::from_raw_fd(l.into_raw_fd())
        }))
    }

    /// The next connection.
    pub async fn accept(&self) -> io::Result<Conn> {
        let stream = self.0.accept().await.map_err(io::Error::from)?;
        Ok(Conn::new(stream))
    }
}
