//! TLS for clients, against Tern and nats-server alike: INFO first then the handshake, the
//! `--tls*` flags and the `tls {}` block, client certificates with `verify`, a plaintext
//! client refused, and the handshake timeout.

mod common;

use common::*;
use std::time::Duration;

impl Pki {
    /// A server configured with a `tls {}` block naming this PKI's server certificate and
    /// key, plus `extra` lines inside the block.
    fn server_with(&self, extra: &str) -> (ConfFile, Server) {
        self.server_with_top(extra, "")
    }

    /// As [`Pki::server_with`], with `top` lines outside the `tls {}` block.
    fn server_with_top(&self, extra: &str, top: &str) -> (ConfFile, Server) {
        // Tests run in parallel: each config gets its own directory.
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let conf = ConfFile::new(
            &format!("tls-conf-{n}"),
            "tls.conf",
            &format!(
                "{top}\ntls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n{extra}}}\n",
                self.cert.display(),
                self.key.display()
            ),
        );
        let s = Server::start(&["-c", conf.arg()]);
        (conf, s)
    }

    /// A server with TLS turned on by the command-line flags.
    fn server_with_flags(&self) -> Server {
        Server::start(&[
            "--tls",
            "--tlscert",
            self.cert.to_str().unwrap(),
            "--tlskey",
            self.key.to_str().unwrap(),
        ])
    }
}

async fn tls_client(
    s: &Server,
    p: &Pki,
    with_client_cert: bool,
) -> Result<async_nats::Client, async_nats::ConnectError> {
    let mut o = async_nats::ConnectOptions::new()
        .require_tls(true)
        .add_root_certificates(p.ca.clone())
        .retry_on_initial_connect();
    o = o.connection_timeout(Duration::from_secs(5));
    if with_client_cert {
        o = o.add_client_certificate(p.client_cert.clone(), p.client_key.clone());
    }
    tokio::time::timeout(
        Duration::from_secs(10),
        o.connect(format!("tls://127.0.0.1:{}", s.port)),
    )
    .await
    .unwrap_or_else(|_| Err(std::io::Error::other("timed out").into()))
}

async fn round_trip(c: &async_nats::Client) {
    use futures::StreamExt;
    let mut sub = c.subscribe("tls.check").await.unwrap();
    c.flush().await.unwrap();
    // async-nats' flush sends no PING; a request round trip makes sure the SUB is in.
    let _ = c.request("tls.nobody", "x".into()).await;
    c.publish("tls.check", vec![b'z'; 20_000].into())
        .await
        .unwrap();
    let m = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("message over TLS")
        .unwrap();
    assert_eq!(m.payload.len(), 20_000);
}

#[tokio::test]
async fn tls_flags_info_first_then_handshake() {
    let p = pki("tlsflags");
    let s = p.server_with_flags();
    // The INFO comes first, in plaintext, and says TLS is required.
    let raw = s.raw();
    assert_eq!(raw.info["tls_required"], true);
    let c = tls_client(&s, &p, false).await.expect("TLS connect");
    round_trip(&c).await;
    // A plaintext client is refused (the handshake fails on its CONNECT).
    let mut plain = s.raw();
    let _ = plain.try_send(b"CONNECT {\"verbose\":false}\r\nPING\r\n");
    let rest = plain.expect_closed();
    assert!(!String::from_utf8_lossy(&rest).contains("PONG"), "{rest:?}");
    round_trip(&c).await;
}

#[tokio::test]
async fn client_certificates_are_required_with_verify() {
    let p = pki("tlsverify");
    let (_conf, s) = p.server_with(&format!(
        "  ca_file: \"{}\"\n  verify: true\n  timeout: 2\n",
        p.ca.display()
    ));
    assert_eq!(s.raw().info["tls_verify"], true);
    let c = tls_client(&s, &p, true)
        .await
        .expect("connect with a client certificate");
    round_trip(&c).await;
    // Without one the handshake fails.
    let no_cert = async_nats::ConnectOptions::new()
        .require_tls(true)
        .add_root_certificates(p.ca.clone())
        .connection_timeout(Duration::from_secs(3))
        .connect(format!("tls://127.0.0.1:{}", s.port));
    let r = tokio::time::timeout(Duration::from_secs(10), no_cert).await;
    assert!(
        !matches!(r, Ok(Ok(_))),
        "a client without a certificate must not get in"
    );
    round_trip(&c).await;
    drop(p.dir);
}

/// nats-server closes a client that never starts the handshake, without an -ERR (the
/// reference's `Secure Connection - TLS Required` is not sent by 2.9.10 or 2.15.1).
#[test]
fn a_silent_client_is_closed_at_the_tls_timeout() {
    let p = pki("tlstimeout");
    let (_conf, s) = p.server_with("  timeout: 0.5\n");
    let mut silent = s.raw();
    let start = std::time::Instant::now();
    assert!(silent.expect_closed().is_empty());
    assert!(
        start.elapsed() >= Duration::from_millis(300),
        "closed before the timeout"
    );
    drop(p.dir);
}

#[tokio::test]
async fn handshake_first_skips_the_plaintext_info() {
    // nats-server learned `handshake_first` in 2.10.
    let probe = Server::start(&[]);
    if probe.raw().info["version"]
        .as_str()
        .is_some_and(|v| v.starts_with("2.9."))
    {
        return;
    }
    drop(probe);
    let p = pki("tlsfirst");
    let (_conf, s) = p.server_with("  handshake_first: true\n");
    // No plaintext INFO: the server waits for the client's handshake.
    let mut raw = std::net::TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    raw.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut b = [0u8; 8];
    let got = std::io::Read::read(&mut raw, &mut b);
    assert!(
        !matches!(got, Ok(n) if n > 0 && b.starts_with(b"INFO")),
        "a plaintext INFO was sent"
    );
    let c = async_nats::ConnectOptions::new()
        .tls_first()
        .add_root_certificates(p.ca.clone())
        .connection_timeout(Duration::from_secs(5))
        .connect(format!("tls://127.0.0.1:{}", s.port))
        .await
        .expect("TLS-first connect");
    round_trip(&c).await;
    drop(p.dir);
}

/// Megabytes through one session in both directions, in order, nothing lost: the record
/// layer's buffering must never drop or reorder protocol bytes, and a message longer than a
/// record (16 KiB) arrives whole.
#[tokio::test]
async fn bulk_traffic_over_tls_arrives_whole_and_in_order() {
    use futures::StreamExt;
    let p = pki("tlsbulk");
    let s = p.server_with_flags();
    let sub_client = tls_client(&s, &p, false).await.expect("TLS connect");
    let pub_client = tls_client(&s, &p, false).await.expect("TLS connect");
    let mut sub = sub_client.subscribe("bulk").await.unwrap();
    // The two connections may sit on different shards, and async-nats' flush sends no PING:
    // publish a marker until the subscription is seen from the publisher's side.
    loop {
        pub_client.publish("bulk", "warm".into()).await.unwrap();
        pub_client.flush().await.unwrap();
        if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(200), sub.next()).await {
            assert_eq!(&m.payload[..], b"warm");
            break;
        }
    }
    let n = 3000u32;
    let len = |i: u32| match i % 50 {
        7 => 40_000 + i as usize,
        _ => 1024 + (i as usize % 7) * 1000,
    };
    let publisher = tokio::spawn(async move {
        for i in 0..n {
            let mut body = vec![(i % 251) as u8; len(i)];
            body[..4].copy_from_slice(&i.to_be_bytes());
            pub_client.publish("bulk", body.into()).await.unwrap();
        }
        pub_client.flush().await.unwrap();
        pub_client
    });
    for i in 0..n {
        let mut m = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .unwrap_or_else(|_| panic!("message {i} never arrived"))
            .unwrap();
        while &m.payload[..] == b"warm" {
            m = sub.next().await.unwrap();
        }
        assert_eq!(&m.payload[..4], &i.to_be_bytes(), "out of order at {i}");
        assert_eq!(m.payload.len(), len(i));
        assert!(m.payload[4..].iter().all(|&b| b == (i % 251) as u8));
    }
    drop(publisher.await.unwrap());
    drop(p.dir);
}

/// `allow_non_tls`: the INFO offers TLS (`tls_available`) without requiring it, and TLS and
/// plaintext clients share the server.
#[tokio::test]
async fn allow_non_tls_serves_tls_and_plaintext_clients() {
    let p = pki("tlsoptional");
    let (_conf, s) = p.server_with_top("", "allow_non_tls: true");
    let mut plain = s.raw();
    assert_eq!(plain.info["tls_available"], true);
    assert!(plain.info.get("tls_required").is_none(), "{}", plain.info);
    plain.send(b"CONNECT {\"verbose\":false}\r\nSUB mixed 1\r\nPING\r\n");
    plain.expect(b"PONG\r\n");
    let c = tls_client(&s, &p, false).await.expect("TLS connect");
    round_trip(&c).await;
    c.publish("mixed", "from tls".into()).await.unwrap();
    c.flush().await.unwrap();
    let m = plain.read_msg();
    assert_eq!(m.payload, b"from tls");
}

/// `verify_and_map`: the client certificate names the user (its e-mail address, or its
/// subject as an RDN sequence); a certificate that names nobody is refused.
#[tokio::test]
async fn verify_and_map_maps_the_certificate_to_a_user() {
    let p = pki("tlsmap");
    let tls = format!(
        "  ca_file: \"{}\"\n  verify_and_map: true\n",
        p.ca.display()
    );
    for user in ["alice@acme.io", "CN=alice,O=Acme,C=US"] {
        let (_conf, s) = p.server_with_top(
            &tls,
            &format!(
                "authorization {{ users: [{{user: \"{user}\"}}, {{user: other, password: pw}}] }}"
            ),
        );
        let c = tls_client(&s, &p, true)
            .await
            .unwrap_or_else(|e| panic!("mapped to {user}: {e}"));
        round_trip(&c).await;
    }
    let (_conf, s) = p.server_with_top(&tls, "authorization { users: [{user: \"bob@acme.io\"}] }");
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        async_nats::ConnectOptions::new()
            .require_tls(true)
            .add_root_certificates(p.ca.clone())
            .add_client_certificate(p.client_cert.clone(), p.client_key.clone())
            .connection_timeout(Duration::from_secs(3))
            .connect(format!("tls://127.0.0.1:{}", s.port)),
    )
    .await;
    assert!(
        !matches!(r, Ok(Ok(_))),
        "a certificate that maps to no user must not get in"
    );
}

/// The suite a rustls client offering `suites` (in that order, TLS 1.3 only) gets: read the
/// plaintext INFO, shake hands, and see a PONG come back through the session.
fn negotiated(s: &Server, p: &Pki, suites: &[rustls::SupportedCipherSuite]) -> rustls::CipherSuite {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    use std::io::{BufRead, Read, Write};
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = suites.to_vec();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(&p.ca).unwrap())
        .unwrap();
    let cfg = rustls::ClientConfig::builder_with_provider(provider.into())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let sock = std::net::TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut info = String::new();
    std::io::BufReader::new(sock.try_clone().unwrap())
        .read_line(&mut info)
        .unwrap();
    assert!(info.starts_with("INFO "), "{info:?}");
    let name = "localhost".try_into().unwrap();
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(cfg), name).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    tls.write_all(b"CONNECT {\"verbose\":false}\r\nPING\r\n")
        .unwrap();
    let mut got = Vec::new();
    let mut b = [0u8; 256];
    while !String::from_utf8_lossy(&got).contains("PONG") {
        let n = tls.read(&mut b).unwrap();
        assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&b[..n]);
    }
    tls.conn.negotiated_cipher_suite().unwrap().suite()
}

/// The server picks the suite as nats-server (Go) does: AES-128-GCM before AES-256-GCM
/// whatever the client's order (where the machine has AES hardware), ChaCha20-Poly1305 for
/// a client that lists it first.
#[test]
fn cipher_suite_is_chosen_as_nats_server_does() {
    use rustls::crypto::ring::cipher_suite::{
        TLS13_AES_128_GCM_SHA256 as AES128, TLS13_AES_256_GCM_SHA384 as AES256,
        TLS13_CHACHA20_POLY1305_SHA256 as CHACHA,
    };
    let p = pki("tlssuites");
    let s = p.server_with_flags();
    #[cfg(target_arch = "x86_64")]
    let aes_hw = std::arch::is_x86_feature_detected!("aes")
        && std::arch::is_x86_feature_detected!("pclmulqdq");
    #[cfg(not(target_arch = "x86_64"))]
    let aes_hw = false;
    if aes_hw {
        for order in [[AES256, AES128, CHACHA], [AES128, AES256, CHACHA]] {
            assert_eq!(negotiated(&s, &p, &order), AES128.suite());
        }
    }
    for order in [[CHACHA, AES256, AES128], [CHACHA, AES128, AES256]] {
        assert_eq!(negotiated(&s, &p, &order), CHACHA.suite());
    }
    // A client offering AES-256 alone still gets it.
    assert_eq!(negotiated(&s, &p, &[AES256]), AES256.suite());
}
