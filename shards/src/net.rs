//! A TCP connection owned by one shard, split into a read half and a write half so that one
//! task can read while another writes (glommio keeps separate read and write sources per
//! socket, so the two never contend); outgoing connections ([`connect`]); and a listener a
//! shard accepts on by itself ([`Listener`], for ports other than the client port).

use bytes::BytesMut;
use futures_lite::AsyncRead;
use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::os::unix::io::AsRawFd;
use std::pin::Pin;
use std::rc::{Rc, Weak};

type Stream = glommio::net::TcpStream;

/// A send made by [`ConnWriter::send`]: a future of its result and its buffers (what its
/// hook left of them). It does not borrow the writer; dropping it cancels the send.
pub type Sending<T> = glommio::net::SendOwned<T>;

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
}

/// Looks at how far the peer has read what a [`ConnWriter`] sent, without keeping its
/// socket open.
pub struct SendProbe(Weak<RefCell<Stream>>);

impl SendProbe {
    /// The bytes the peer has acknowledged so far (`TCP_INFO`'s `tcpi_bytes_acked`): it
    /// grows as the peer reads, and stands still while the peer's window is closed. `None`
    /// once the connection is gone, or if the kernel does not say.
    pub fn bytes_acked(&self) -> Option<u64> {
        let stream = self.0.upgrade()?;
        let fd = stream.borrow().as_raw_fd();
        // SAFETY: tcp_info is plain data, so all zeros is a valid value.
        let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `info`, which is that large, on
        // a socket this connection still owns (the upgrade above keeps it open).
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                (&mut info as *mut libc::tcp_info).cast(),
                &mut len,
            )
        };
        let end = std::mem::offset_of!(libc::tcp_info, tcpi_bytes_acked) + 8;
        (rc == 0 && len as usize >= end).then_some(info.tcpi_bytes_acked)
    }
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

    /// Appends what is available, up to `max` bytes, to `buf`; `Ok(0)` at end of stream.
    /// The bytes land straight in `buf`'s spare room, which is not zeroed first (a fill
    /// that cost 3-6 % of a reading shard at 64 KiB reads).
    pub async fn read_into(&mut self, buf: &mut BytesMut, max: usize) -> io::Result<usize> {
        buf.reserve(max);
        let cell = &self.0;
        let spare = &mut buf.spare_capacity_mut()[..max];
        let n = futures_lite::future::poll_fn(|cx| cell.borrow_mut().poll_read_uninit(cx, spare))
            .await?;
        assert!(n <= max, "a read returned more than it was given room for");
        // SAFETY: the read initialised the first `n` bytes of the spare room (the contract of
        // glommio's `poll_read_uninit`), and `n <= max` lies within the capacity reserved.
        unsafe { buf.set_len(buf.len() + n) };
        Ok(n)
    }
}

impl ConnWriter {
    /// A [`SendProbe`] on this connection's socket.
    pub fn probe(&self) -> SendProbe {
        SendProbe(Rc::downgrade(&self.stream))
    }

    /// Sends `bufs` in order, the first from byte `skip`; the future hands them back with
    /// how many bytes the socket took: at least one, fewer than all when it had room for
    /// only part. The send is one request in the shard's ring (a `sendmsg` for several
    /// buffers: nats-server's `writev` of its queued buffers), submitted at once in one
    /// `io_uring_enter` with the connection's next receive, which the reader queued before
    /// it. When the socket is full the kernel waits for room.
    ///
    /// `on_done` runs on the result and the buffers as soon as the shard sees the send
    /// complete, whether or not anyone polls the future, so a writer with nothing more to
    /// send need not wake up for it (it can take the buffers, say). It must not start I/O,
    /// and it returns whether it woke a task: the shard then runs that task before it
    /// sleeps (a wake it does not report may wait for the shard's next event).
    /// The future does not borrow the writer; dropping it cancels the send.
    pub fn send<T, F>(&self, bufs: Vec<T>, skip: usize, on_done: F) -> Sending<T>
    where
        T: AsRef<[u8]> + 'static,
        F: FnOnce(&io::Result<usize>, &mut Vec<T>) -> bool + 'static,
    {
        self.stream.borrow().send_owned(bufs, skip, on_done)
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
    use std::future::Future;
    use std::io::{Read, Write};
    use std::task::Poll;
    use std::time::Duration;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    /// A peer that sends `x`, waits for one byte back, then sends `body` and closes. The
    /// wait makes `body` land in the receive the reader queued after reading `x`, rather
    /// than in its next direct read.
    fn x_then_after_ack(body: Vec<u8>) -> (SocketAddr, std::thread::JoinHandle<()>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let peer = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.write_all(b"x").unwrap();
            let mut ack = [0u8; 1];
            s.read_exact(&mut ack).unwrap();
            s.write_all(&body).unwrap();
        });
        (addr, peer)
    }

    /// Runs `f` on a glommio executor of its own with a connection to `addr`, split.
    fn with_conn<F, Fut, T>(addr: SocketAddr, f: F) -> T
    where
        F: FnOnce(ConnReader, ConnWriter) -> Fut + Send + 'static,
        Fut: Future<Output = T>,
        T: Send + 'static,
    {
        glommio::LocalExecutorBuilder::default()
            .spawn(move || async move {
                let conn = connect(addr, Duration::from_secs(5)).await.unwrap();
                let (r, w) = conn.split();
                f(r, w).await
            })
            .unwrap()
            .join()
            .unwrap()
    }

    /// A read that drains the socket puts the next receive in the ring, sized from what
    /// that read brought. What the receive brings beyond a later, smaller buffer must come
    /// out whole and in order, and the end of the stream after it.
    #[test]
    fn a_ring_receive_larger_than_the_reader_s_buffer_comes_out_in_order() {
        let body = pattern(40_000);
        let (addr, peer) = x_then_after_ack(body.clone());
        let got = with_conn(addr, |mut r, w| async move {
            let mut buf = vec![0u8; 64 * 1024];
            assert_eq!(r.read(&mut buf).await.unwrap(), 1);
            assert_eq!(buf[0], b'x');
            w.send(vec![b"k"], 0, |_, _| false).await.0.unwrap();
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
        });
        peer.join().unwrap();
        assert_eq!(got.len(), body.len());
        assert!(got == body, "bytes reordered or changed");
    }

    /// `read_into` appends to what the buffer holds, up to `max` bytes at a time, from every
    /// place a read takes bytes from (a direct receive, a completed ring receive, the rest of
    /// one kept from an earlier read), and then reports the end of the stream.
    #[test]
    fn read_into_appends_every_byte_in_order() {
        let body = pattern(40_000);
        let (addr, peer) = x_then_after_ack(body.clone());
        let got = with_conn(addr, |mut r, w| async move {
            let mut buf = BytesMut::from(&b"prefix:"[..]);
            assert_eq!(r.read_into(&mut buf, 1).await.unwrap(), 1);
            w.send(vec![b"k"], 0, |_, _| false).await.0.unwrap();
            for max in [100, 7, 4096, 1, 65536].into_iter().cycle() {
                let before = buf.len();
                let n = r.read_into(&mut buf, max).await.unwrap();
                assert!(n <= max, "{n} > {max}");
                assert_eq!(buf.len(), before + n);
                if n == 0 {
                    break;
                }
            }
            buf
        });
        peer.join().unwrap();
        assert_eq!(&got[..8], b"prefix:x");
        assert_eq!(got.len(), 8 + body.len());
        assert!(got[8..] == body[..], "bytes reordered or changed");
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
                let (_r, w) = second.split();
                w.send(vec![b"bye"], 0, |_, _| false).await.0.unwrap();
                w.shutdown();
            })
            .unwrap()
            .join()
            .unwrap();
        let ends = peer.join().unwrap();
        assert_eq!(ends[0].as_ref().unwrap(), b"");
        assert_eq!(ends[1].as_ref().unwrap(), b"bye");
    }

    /// Bytes that arrive while the connection's receive waits in the ring's queue (the ring
    /// then arms it on a socket that is already readable) are read, and a send queued behind
    /// that receive goes to the kernel ahead of it and arrives.
    #[test]
    fn bytes_arriving_while_the_receive_is_queued_are_read_and_a_later_send_arrives() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let (sent_tx, sent_rx) = std::sync::mpsc::channel::<()>();
        let peer = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            go_rx.recv().unwrap();
            s.write_all(b"ping").unwrap();
            sent_tx.send(()).unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).unwrap();
            got
        });
        let got = glommio::LocalExecutorBuilder::default()
            .spawn(move || async move {
                let conn = connect(addr, Duration::from_secs(5)).await.unwrap();
                let (mut r, w) = conn.split();
                let mut buf = [0u8; 64];
                let n = {
                    let mut read = std::pin::pin!(r.read(&mut buf));
                    // Nothing has arrived: the read queues its receive and waits.
                    let first = std::future::poll_fn(|cx| Poll::Ready(read.as_mut().poll(cx)));
                    assert!(first.await.is_pending());
                    // The peer's bytes land in the socket before this turn ends, so before
                    // the ring takes the receive.
                    go_tx.send(()).unwrap();
                    sent_rx.recv().unwrap();
                    let send = w.send(vec![b"pong"], 0, |_, _| false);
                    let n = read.await.unwrap();
                    send.await.0.unwrap();
                    n
                };
                w.shutdown();
                buf[..n].to_vec()
            })
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(got, b"ping");
        assert_eq!(peer.join().unwrap(), b"pong");
    }

    /// A peer that accepts one connection and, after `delay`, reads it to its end.
    fn reading_peer(delay: Duration) -> (SocketAddr, std::thread::JoinHandle<Vec<u8>>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let peer = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            std::thread::sleep(delay);
            let mut got = Vec::new();
            s.read_to_end(&mut got).unwrap();
            got
        });
        (addr, peer)
    }

    /// Sends everything in `blocks` (the first from byte `skip`) through `w`, handing the
    /// unsent rest back to the next send, as the server's writer does.
    async fn send_all(w: &ConnWriter, mut blocks: Vec<Vec<u8>>, mut skip: usize) {
        while !blocks.is_empty() {
            let (r, mut back) = w.send(blocks, skip, |_, _| false).await;
            let mut n = r.unwrap() + skip;
            while back.first().is_some_and(|b| b.len() <= n) {
                n -= back.remove(0).len();
            }
            blocks = back;
            skip = n;
        }
    }

    /// Gathered sends from the ring, the first block from an offset, some filling the
    /// socket so that the kernel waits for room and sends fall short: the peer gets every
    /// byte once, in order.
    #[test]
    fn gathered_sends_in_the_ring_arrive_whole_and_in_order() {
        // Let the sender fill the socket before reading anything.
        let (addr, peer) = reading_peer(Duration::from_millis(100));
        let body = pattern(3 * 1024 * 1024 + 7);
        let expect = body[5..].to_vec();
        glommio::LocalExecutorBuilder::default()
            .spawn(move || async move {
                let conn = connect(addr, Duration::from_secs(5)).await.unwrap();
                let (_r, w) = conn.split();
                // Blocks of uneven sizes, sixteen at a time, as the writer gathers them.
                let mut blocks: Vec<Vec<u8>> = Vec::new();
                let mut rest = &body[..];
                let mut size = 10;
                while !rest.is_empty() {
                    let n = size.min(rest.len());
                    blocks.push(rest[..n].to_vec());
                    rest = &rest[n..];
                    size = size * 3 % 100_003 + 1;
                }
                let mut skip = 5;
                for group in blocks.chunks(16) {
                    send_all(&w, group.to_vec(), skip).await;
                    skip = 0;
                }
                w.shutdown();
            })
            .unwrap()
            .join()
            .unwrap();
        let got = peer.join().unwrap();
        assert_eq!(got.len(), expect.len());
        assert!(got == expect, "bytes reordered or changed");
    }

    /// A send waiting in the kernel for room (the peer reads nothing) that is given up, as a
    /// write deadline does, leaves the shard serving other connections, and the waiting
    /// connection closes.
    #[test]
    fn a_send_given_up_while_it_waits_for_room_leaves_the_shard_serving() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (stuck_tx, stuck_rx) = std::sync::mpsc::channel::<()>();
        let peer = std::thread::spawn(move || {
            let (mut stuck, _) = listener.accept().unwrap();
            let (mut s, _) = listener.accept().unwrap();
            let mut bye = Vec::new();
            s.read_to_end(&mut bye).unwrap();
            // Only now read the first connection: it must end, after some of its bytes.
            stuck_rx.recv().unwrap();
            let mut got = Vec::new();
            stuck.read_to_end(&mut got).unwrap();
            (bye, got)
        });
        let sent = glommio::LocalExecutorBuilder::default()
            .spawn(move || async move {
                let first = connect(addr, Duration::from_secs(5)).await.unwrap();
                let (_r1, w1) = first.split();
                let big = vec![vec![7u8; 64 * 1024]; 16];
                let mut sent = 0;
                // Fill the socket until a send waits for room, then give that send up.
                loop {
                    let send = w1.send(big.clone(), 0, |_, _| false);
                    let timed = glommio::timer::timeout(Duration::from_millis(50), async {
                        Ok(send.await)
                    });
                    match timed.await {
                        Ok((r, _)) => sent += r.unwrap(),
                        Err(_) => break,
                    }
                    assert!(sent < 1 << 30, "the socket never filled");
                }
                w1.shutdown();
                let second = connect(addr, Duration::from_secs(5)).await.unwrap();
                let (_r, w) = second.split();
                w.send(vec![b"bye"], 0, |_, _| false).await.0.unwrap();
                w.shutdown();
                sent
            })
            .unwrap()
            .join()
            .unwrap();
        stuck_tx.send(()).unwrap();
        let (bye, got) = peer.join().unwrap();
        assert_eq!(bye, b"bye");
        // What the completed sends took arrives, then the end of the stream.
        assert!(got.len() >= sent, "{} of {sent} bytes", got.len());
        assert!(got.iter().all(|&b| b == 7));
    }

    /// A probe sees the peer's acknowledged bytes stand still while it does not read and grow
    /// once it does, and nothing once the connection is gone.
    #[test]
    fn a_send_probe_sees_whether_the_peer_reads() {
        let (addr, peer) = reading_peer(Duration::from_millis(1000));
        let (still, later, gone) = glommio::LocalExecutorBuilder::default()
            .spawn(move || async move {
                let conn = connect(addr, Duration::from_secs(5)).await.unwrap();
                let (r, w) = conn.split();
                let probe = w.probe();
                // Falls short once both sockets' buffers are full: the peer's window is shut.
                let (sent, _) = w.send(vec![vec![7u8; 32 << 20]], 0, |_, _| false).await;
                assert!(sent.unwrap() < 32 << 20);
                // Acknowledgements of what its buffer took trail in (delayed ACKs) first.
                glommio::timer::sleep(Duration::from_millis(100)).await;
                let a = probe.bytes_acked().unwrap();
                glommio::timer::sleep(Duration::from_millis(100)).await;
                let b = probe.bytes_acked().unwrap();
                // The peer starts reading 1 s after it accepted.
                glommio::timer::sleep(Duration::from_millis(1200)).await;
                let c = probe.bytes_acked().unwrap();
                w.shutdown();
                drop((r, w));
                ((a, b), (b, c), probe.bytes_acked())
            })
            .unwrap()
            .join()
            .unwrap();
        peer.join().unwrap();
        assert_eq!(
            still.0, still.1,
            "acknowledged more while the peer was not reading"
        );
        assert!(
            later.1 > later.0,
            "acknowledged nothing more once the peer read"
        );
        assert_eq!(gone, None);
    }

    /// A task that a send's hook wakes runs at once, though the shard has nothing else to
    /// do and would otherwise go on to sleep until its next event (a timer 10 s away).
    #[test]
    fn a_task_a_send_s_hook_wakes_runs_before_the_shard_sleeps() {
        use std::cell::Cell;
        use std::rc::Rc;
        use std::task::{Poll, Waker};
        // The peer reads nothing for 200 ms, so the second send waits in the kernel for room
        // and completes while the shard has nothing to do.
        let (addr, peer) = reading_peer(Duration::from_millis(200));
        // The completion comes in while the shard spins (as Tern's shards do before they
        // park), where a wake that is not reported let it go on spinning and then sleep.
        // glommio only spins on an executor bound to a core.
        let (first, took) = glommio::LocalExecutorBuilder::new(glommio::Placement::Fixed(0))
            .spin_before_park(Duration::from_secs(1))
            .spawn(move || async move {
                let conn = connect(addr, Duration::from_secs(5)).await.unwrap();
                let (_r, w) = conn.split();
                let big = vec![7u8; 32 << 20];
                let (r, _) = w.send(vec![big.clone()], 0, |_, _| false).await;
                let first = r.unwrap();
                let waiter: Rc<Cell<Option<Waker>>> = Rc::default();
                let done = Rc::new(Cell::new(false));
                let (hook_waiter, hook_done) = (waiter.clone(), done.clone());
                let start = std::time::Instant::now();
                let send = w.send(vec![big], first, move |_, _| {
                    hook_done.set(true);
                    hook_waiter.take().map(Waker::wake).is_some()
                });
                let woken = std::future::poll_fn(|cx| {
                    if done.get() {
                        Poll::Ready(())
                    } else {
                        waiter.set(Some(cx.waker().clone()));
                        Poll::Pending
                    }
                });
                let far = glommio::timer::sleep(Duration::from_secs(10));
                futures_lite::future::or(woken, far).await;
                let took = start.elapsed();
                drop(send);
                w.shutdown();
                (first, took)
            })
            .unwrap()
            .join()
            .unwrap();
        assert!(peer.join().unwrap().len() > first);
        assert!(took < Duration::from_secs(5), "woken after {took:?}");
    }

    /// A send's hook runs when the shard sees the send complete, though nobody polls its
    /// future, and can take the buffers; the future then hands back what the hook left.
    #[test]
    fn a_send_s_hook_runs_without_the_future_being_polled() {
        let (addr, peer) = reading_peer(Duration::ZERO);
        let (seen, left) = glommio::LocalExecutorBuilder::default()
            .spawn(move || async move {
                let conn = connect(addr, Duration::from_secs(5)).await.unwrap();
                let (_r, w) = conn.split();
                let seen = std::rc::Rc::new(std::cell::Cell::new(None));
                let hook = seen.clone();
                let send = w.send(
                    vec![b"hello ".to_vec(), b"world".to_vec()],
                    2,
                    move |r, bufs| {
                        hook.set(Some(*r.as_ref().unwrap()));
                        bufs.clear();
                        false
                    },
                );
                // Not polled: the send goes out and completes with nobody waiting on it.
                glommio::timer::sleep(Duration::from_millis(20)).await;
                let seen = seen.get();
                let (r, left) = send.await;
                assert_eq!(r.unwrap(), 9);
                w.shutdown();
                (seen, left)
            })
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(peer.join().unwrap(), b"llo world");
        assert_eq!(seen, Some(9));
        assert!(left.is_empty());
    }
}
