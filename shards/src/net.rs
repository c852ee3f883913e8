//! A TCP connection owned by one shard, split into a read half and a write half so that one
//! task can read while another writes (glommio keeps separate read and write sources per
//! socket, so the two never contend); outgoing connections ([`connect`]); and a listener a
//! shard accepts on by itself ([`Listener`], for ports other than the client port).

use futures_lite::{AsyncRead, AsyncWrite};
use std::cell::RefCell;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::os::unix::io::{AsRawFd, RawFd};
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
pub struct ConnWriter {
    stream: Rc<RefCell<Stream>>,
    /// The last gathered write fell short: the socket's buffer is full, so the next write
    /// goes through glommio's, which waits for room.
    full: bool,
}

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
        let w = ConnWriter {
            stream: self.stream.clone(),
            full: false,
        };
        (ConnReader(self.stream), w)
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
    /// Writes from `bufs`, in order, as much as the socket takes in one system call, and
    /// returns how many bytes it took (at least one; the first buffer must not be empty).
    /// Several buffers go out together in one `sendmsg`, as nats-server's `writev` of its
    /// queued buffers does; a single buffer, or any write after one that found the socket
    /// full, goes through glommio's, which waits for room when there is none.
    pub async fn write_some(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        if bufs.len() > 1 && !self.full {
            let want: usize = bufs.iter().map(|b| b.len()).sum();
            match send_gathered(self.stream.borrow().as_raw_fd(), bufs) {
                Ok(n) if n > 0 => {
                    self.full = n < want;
                    return Ok(n);
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        self.full = false;
        let first = bufs.first().map_or(&[][..], |b| &b[..]);
        let cell = &self.stream;
        let n = futures_lite::future::poll_fn(|cx| {
            Pin::new(&mut *cell.borrow_mut()).poll_write(cx, first)
        })
        .await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        Ok(n)
    }

    /// Shuts down both directions of the socket, so the peer sees the close at once even
    /// while the read half is still owned by a task.
    pub fn shutdown(&self) {
        let fd = self.stream.borrow().as_raw_fd();
        // SAFETY: shutdown(2) on a socket we own; it only changes the socket's state.
        unsafe {
            libc::shutdown(fd, libc::SHUT_RDWR);
        }
    }
}

/// One non-blocking `sendmsg` of `bufs` on `fd`.
fn send_gathered(fd: RawFd, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    // SAFETY: an all-zero msghdr is valid (no name, no control data).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    // IoSlice is guaranteed to have iovec's layout on Unix; sendmsg only reads the buffers.
    msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = bufs.len() as _;
    loop {
        // SAFETY: `msg` points at `bufs`, which outlive the call.
        let r = unsafe { libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
        if r >= 0 {
            return Ok(r as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::time::Duration;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    /// A read that drains the socket puts the next receive in the ring, sized from what
    /// that read brought. What the receive brings beyond a later, smaller buffer must come
    /// out whole and in order, and the end of the stream after it.
    #[test]
    fn a_ring_receive_larger_than_the_reader_s_buffer_comes_out_in_order() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let body = pattern(40_000);
        let sent = body.clone();
        let peer = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.write_all(b"x").unwrap();
            // Wait for the reader to say it got the first byte, so the rest lands in the
            // receive it then queued rather than in its next direct read.
            let mut ack = [0u8; 1];
            s.read_exact(&mut ack).unwrap();
            s.write_all(&sent).unwrap();
        });
        let got = glommio::LocalExecutorBuilder::default()
            .spawn(move || async move {
                let conn = connect(addr, Duration::from_secs(5)).await.unwrap();
                let (mut r, mut w) = conn.split();
                let mut buf = vec![0u8; 64 * 1024];
                assert_eq!(r.read(&mut buf).await.unwrap(), 1);
                assert_eq!(buf[0], b'x');
                w.write_some(&[IoSlice::new(b"k")]).await.unwrap();
                let mut got = Vec::new();
                let mut small = [0u8; 100];
                loop {
                    let n = r.read(&mut small).await.unwrap();
                    if n == 0 {
                        break;
                    }
                    got.extend_from_slice(&small[..n]);
                }
                got
            })
            .unwrap()
            .join()
            .unwrap();
        peer.join().unwrap();
        assert_eq!(got.len(), body.len());
        assert!(got == body, "bytes reordered or changed");
    }

    /// Dropping a connection while its receive is in the ring closes the socket (the peer
    /// sees the end of the stream) and leaves the shard serving other connections.
    #[test]
    fn a_connection_dropped_with_a_receive_in_the_ring_closes() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let peer = std::thread::spawn(move || {
            let mut ends = Vec::new();
            for _ in 0..2 {
                let (mut s, _) = listener.accept().unwrap();
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut rest = Vec::new();
                ends.push(s.read_to_end(&mut rest).map(|_| rest));
            }
            ends
        });
        glommio::LocalExecutorBuilder::default()
            .spawn(move || async move {
                let first = connect(addr, Duration::from_secs(5)).await.unwrap();
                // Its first receive is in the ring from the start; nothing ever arrives.
                glommio::timer::sleep(Duration::from_millis(20)).await;
                drop(first);
                let second = connect(addr, Duration::from_secs(5)).await.unwrap();
                let (_r, mut w) = second.split();
                w.write_some(&[IoSlice::new(b"bye")]).await.unwrap();
                w.shutdown();
            })
            .unwrap()
            .join()
            .unwrap();
        let ends = peer.join().unwrap();
        assert_eq!(ends[0].as_ref().unwrap(), b"");
        assert_eq!(ends[1].as_ref().unwrap(), b"bye");
    }
}
