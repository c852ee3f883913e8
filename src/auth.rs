//! Client authentication and authorization (nats-server's `auth.go`), sans-IO.
//!
//! This module owns the configured credentials (a token, one user/password, a `users` list
//! with passwords or nkeys, `no_auth_user`), the check of a client's `CONNECT` against them,
//! and the per-user publish/subscribe permissions with nats-server's matching rules. It does
//! not touch sockets: `server` calls [`Auth::check`] when a `CONNECT` arrives (bcrypt, which
//! is slow by design, is run off the shard thread by the caller) and asks a user's
//! [`Permissions`] before it forwards a `PUB` or indexes a `SUB`.
//!
//! Secrets are never logged or put in errors: an [`AuthError`] says what kind of check
//! failed and for which user name, nothing more.

use crate::accounts::{AccId, Accounts, GLOBAL};
use crate::client::ConnectOpts;
use crate::sublist::{is_valid_subject, subject_is_subset, subject_matches};
use base64::Engine;
use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Default time a client has to send `CONNECT` when authentication is required.
pub const DEFAULT_AUTH_TIMEOUT: Duration = Duration::from_secs(2);
/// Entries a connection's publish-permission cache keeps (nats-server: 128).
const PERM_CACHE_MAX: usize = 128;
/// Replies a connection may answer under `allow_responses` before expired ones are pruned
/// (nats-server: 4096).
const REPLY_PERMS_PRUNE: usize = 4096;
/// `allow_responses: true`: one response, within two minutes (nats-server's defaults).
pub const DEFAULT_RESPONSE_PERMISSION: ResponsePermission = ResponsePermission {
    max: 1,
    expires: Duration::from_secs(120),
};

/// `permissions { publish, subscribe }` as configured, before compiling.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PermOptions {
    pub publish: Option<RuleOptions>,
    pub subscribe: Option<RuleOptions>,
    /// `allow_responses`: may publish to the reply subjects of the requests it receives.
    pub allow_responses: Option<ResponsePermission>,
}

/// Responses left for one reply subject, and until when.
type ReplyAllowance = (u32, Instant);

/// How many responses a user may publish to each reply subject it received, and for how
/// long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponsePermission {
    pub max: u32,
    pub expires: Duration,
}

/// One direction's `allow`/`deny` lists. `allow: None` allows everything not denied.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RuleOptions {
    pub allow: Option<Vec<String>>,
    pub deny: Vec<String>,
}

/// One entry of `authorization { users: [...] }`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct UserOptions {
    pub user: Option<String>,
    pub password: Option<String>,
    pub nkey: Option<String>,
    pub permissions: Option<PermOptions>,
    /// The account the user belongs to (`None`: `$G`).
    pub account: Option<String>,
}

/// `authorization { ... }` and `no_auth_user`, as configured.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AuthOptions {
    pub token: Option<String>,
    pub user: Option<String>,
    pub password: Option<String>,
    /// Permissions of the single `user`.
    pub permissions: Option<PermOptions>,
    pub users: Vec<UserOptions>,
    /// Permissions for `users` entries that have none of their own.
    pub default_permissions: Option<PermOptions>,
    pub timeout: Option<Duration>,
    pub no_auth_user: Option<String>,
}

impl AuthOptions {
    /// True when clients must authenticate.
    pub fn is_configured(&self) -> bool {
        self.token.is_some() || self.user.is_some() || !self.users.is_empty()
    }
}

/// A password or token: plain text (compared in constant time) or a bcrypt hash.
#[derive(Clone)]
enum Secret {
    Plain(String),
    Bcrypt(String),
}

impl Secret {
    fn new(s: &str) -> Secret {
        if is_bcrypt(s) {
            Secret::Bcrypt(s.to_string())
        } else {
            Secret::Plain(s.to_string())
        }
    }
}

/// nats-server's test for a bcrypt hash: `^\$2[abxy]\$\d{2}\$.*`.
fn is_bcrypt(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() > 7
        && b.starts_with(b"$2")
        && matches!(b[2], b'a' | b'b' | b'x' | b'y')
        && b[3] == b'$'
        && b[4].is_ascii_digit()
        && b[5].is_ascii_digit()
        && b[6] == b'$'
}

/// Equality that takes the same time wherever the first difference is.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What an authenticated client gets: its account and its permissions (`None` = all).
#[derive(Clone, Default)]
pub struct Grant {
    /// The user name or nkey (`None` for a token).
    pub user: Option<String>,
    pub account: AccId,
    pub perms: Option<Arc<Permissions>>,
}

/// A secret comparison still to be made: plain ones are done at once, bcrypt ones are
/// returned to the caller to run off the shard thread.
pub enum Verdict {
    /// Decided: what the user gets, or why not.
    Done(Result<Grant, AuthError>),
    /// Run [`Pending::verify`] (slow: bcrypt) somewhere that may block, then use its answer.
    Bcrypt(Pending),
}

/// A bcrypt check and what it grants when it passes.
pub struct Pending {
    given: String,
    hash: String,
    user: String,
    grant: Grant,
}

impl Pending {
    /// Runs bcrypt. Blocks for as long as the hash's cost says (tens of milliseconds).
    pub fn verify(self) -> Result<Grant, AuthError> {
        if bcrypt::verify(&self.given, &self.hash).unwrap_or(false) {
            Ok(self.grant)
        } else {
            Err(AuthError::BadCredentials(self.user))
        }
    }
}

/// Why a client was refused. The client always gets `Authorization Violation`; the log gets
/// this, which never contains a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// No credentials, or the wrong kind.
    Missing,
    /// Wrong password or token (for this user name, if any).
    BadCredentials(String),
    /// A user name or nkey that is not configured.
    UnknownUser(String),
    /// An nkey signature that does not verify over the nonce.
    BadSignature(String),
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthError::Missing => f.write_str("authentication error: no credentials"),
            AuthError::BadCredentials(u) if u.is_empty() => {
                f.write_str("authentication error: bad token")
            }
            AuthError::BadCredentials(u) => write!(f, "authentication error - User {u:?}"),
            AuthError::UnknownUser(u) => write!(f, "authentication error - unknown user {u:?}"),
            AuthError::BadSignature(k) => {
                write!(
                    f,
                    "authentication error - signature does not verify for nkey {k:?}"
                )
            }
        }
    }
}

impl std::error::Error for AuthError {}

/// The compiled authentication setup of a server.
pub struct Auth {
    token: Option<Secret>,
    users: HashMap<String, (Secret, Grant)>,
    nkeys: HashMap<String, Grant>,
    no_auth_user: Option<String>,
    pub timeout: Duration,
}

impl Auth {
    /// Compiles the options; `Ok(None)` when no authentication is configured. Errors are
    /// configuration mistakes nats-server also refuses.
    pub fn new(o: &AuthOptions, accounts: &Accounts) -> Result<Option<Auth>, String> {
        if !o.is_configured() {
            if o.no_auth_user.is_some() {
                return Err(no_auth_user_missing(o));
            }
            return Ok(None);
        }
        if o.token.is_some() && (o.user.is_some() || !o.users.is_empty()) {
            return Err("can not have a token and a users array".to_string());
        }
        if o.user.is_some() && !o.users.is_empty() {
            return Err("can not have a single user/pass and a users array".to_string());
        }
        let compile = |p: &Option<PermOptions>| -> Result<Option<Arc<Permissions>>, String> {
            p.as_ref()
                .map(|p| Permissions::new(p).map(Arc::new))
                .transpose()
        };
        let mut users = HashMap::new();
        let mut nkeys = HashMap::new();
        if let Some(u) = &o.user {
            let pass = Secret::new(o.password.as_deref().unwrap_or(""));
            let grant = Grant {
                user: Some(u.clone()),
                account: GLOBAL,
                perms: compile(&o.permissions)?,
            };
            users.insert(u.clone(), (pass, grant));
        }
        for u in &o.users {
            let perms = compile(
                u.permissions
                    .as_ref()
                    .map_or(&o.default_permissions, |_| &u.permissions),
            )?;
            let account = match &u.account {
                None => GLOBAL,
                Some(name) => accounts
                    .id(name)
                    .ok_or_else(|| format!("unknown account {name:?} for user"))?,
            };
            let grant = Grant {
                user: u.nkey.clone().or_else(|| u.user.clone()),
                account,
                perms,
            };
            match (&u.nkey, &u.user) {
                (Some(k), _) => {
                    if nkeys::KeyPair::from_public_key(k).is_err() || !k.starts_with('U') {
                        return Err(format!("not a valid public nkey for a user: {k:?}"));
                    }
                    if nkeys.insert(k.clone(), grant).is_some() {
                        return Err(format!("Duplicate nkey {k:?} detected"));
                    }
                }
                (None, Some(name)) => {
                    let pass = Secret::new(u.password.as_deref().unwrap_or(""));
                    if users.insert(name.clone(), (pass, grant)).is_some() {
                        return Err(format!("Duplicate user {name:?} detected"));
                    }
                }
                (None, None) => return Err("a users entry needs user or nkey".to_string()),
            }
        }
        if let Some(n) = &o.no_auth_user {
            if !users.contains_key(n) && !nkeys.contains_key(n) {
                return Err(no_auth_user_missing(o));
            }
        }
        Ok(Some(Auth {
            token: o.token.as_deref().map(Secret::new),
            users,
            nkeys,
            no_auth_user: o.no_auth_user.clone(),
            timeout: o.timeout.unwrap_or(DEFAULT_AUTH_TIMEOUT),
        }))
    }

    /// Whether INFO must carry a nonce (nkey users sign it).
    pub fn needs_nonce(&self) -> bool {
        !self.nkeys.is_empty()
    }

    /// Whether plaintext passwords are configured (nats-server warns about them).
    pub fn has_plaintext(&self) -> bool {
        self.users
            .values()
            .any(|(s, _)| matches!(s, Secret::Plain(p) if !p.is_empty()))
    }

    /// Who a client that passed [`Auth::check`] with these `CONNECT` options is: its nkey,
    /// its user name, or `no_auth_user`; `None` for a token (which names nobody).
    pub fn identity(&self, c: &ConnectOpts) -> Option<String> {
        if let Some(k) = &c.nkey {
            return Some(k.clone());
        }
        if self.token.is_some() {
            return None;
        }
        c.user.clone().or_else(|| self.no_auth_user.clone())
    }

    /// What user or nkey `id` gets, or `None` if this configuration has no such user (after
    /// a reload removed it).
    pub fn lookup(&self, id: &str) -> Option<Grant> {
        self.users
            .get(id)
            .map(|(_, g)| g.clone())
            .or_else(|| self.nkeys.get(id).cloned())
    }

    /// `verify_and_map`: the user a verified client certificate names, trying its
    /// `identities` in order (see `tls::cert_identities`); a user given as a distinguished
    /// name also matches the certificate's subject with its attributes in another order.
    pub fn check_mapped(&self, identities: &[String]) -> Result<Grant, AuthError> {
        for id in identities {
            if let Some((_, grant)) = self.users.get(id) {
                return Ok(grant.clone());
            }
        }
        if let Some(subject) = identities.last() {
            let found = self
                .users
                .iter()
                .find(|(name, _)| crate::tls::same_dn(name, subject));
            if let Some((_, (_, grant))) = found {
                return Ok(grant.clone());
            }
        }
        Err(AuthError::UnknownUser(
            identities.last().cloned().unwrap_or_default(),
        ))
    }

    /// Checks a client's `CONNECT` against the configuration. `nonce` is what this
    /// connection's INFO carried.
    pub fn check(&self, c: &ConnectOpts, nonce: &str) -> Verdict {
        use Verdict::Done;
        if let Some(key) = &c.nkey {
            let Some(grant) = self.nkeys.get(key) else {
                return Done(Err(AuthError::UnknownUser(key.clone())));
            };
            let sig = c.sig.as_deref().unwrap_or("");
            let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(sig)
                .or_else(|_| base64::engine::general_purpose::STANDARD.decode(sig));
            let ok = match (raw, nkeys::KeyPair::from_public_key(key)) {
                (Ok(raw), Ok(kp)) => kp.verify(nonce.as_bytes(), &raw).is_ok(),
                _ => false,
            };
            return Done(if ok {
                Ok(grant.clone())
            } else {
                Err(AuthError::BadSignature(key.clone()))
            });
        }
        if let Some(token) = &self.token {
            let given = c.auth_token.as_deref().unwrap_or("");
            return match token {
                Secret::Plain(t) => Done(if constant_time_eq(t.as_bytes(), given.as_bytes()) {
                    Ok(Grant::default())
                } else {
                    Err(AuthError::BadCredentials(String::new()))
                }),
                Secret::Bcrypt(h) => Verdict::Bcrypt(Pending {
                    given: given.to_string(),
                    hash: h.clone(),
                    user: String::new(),
                    grant: Grant::default(),
                }),
            };
        }
        let no_credentials = c.user.is_none() && c.auth_token.is_none() && c.pass.is_none();
        let name = match (&c.user, &self.no_auth_user) {
            (Some(u), _) => u.clone(),
            (None, Some(n)) if no_credentials => {
                return Done(Ok(self.lookup(n).unwrap_or_default()));
            }
            _ => return Done(Err(AuthError::Missing)),
        };
        let Some((secret, grant)) = self.users.get(&name) else {
            return Done(Err(AuthError::UnknownUser(name)));
        };
        let given = c.pass.as_deref().unwrap_or("");
        match secret {
            Secret::Plain(p) => Done(if constant_time_eq(p.as_bytes(), given.as_bytes()) {
                Ok(grant.clone())
            } else {
                Err(AuthError::BadCredentials(name))
            }),
            Secret::Bcrypt(h) => Verdict::Bcrypt(Pending {
                given: given.to_string(),
                hash: h.clone(),
                user: name,
                grant: grant.clone(),
            }),
        }
    }
}

fn no_auth_user_missing(o: &AuthOptions) -> String {
    format!(
        "no_auth_user: {:?} not present as user or nkey in authorization block or account configuration",
        o.no_auth_user.as_deref().unwrap_or("")
    )
}

/// A random nonce for INFO, as nats-server makes them (base64url, no padding).
pub fn nonce() -> String {
    use rand::RngCore;
    let mut b = [0u8; 11];
    rand::thread_rng().fill_bytes(&mut b);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

// ---------------------------------------------------------------------------
// Permissions
// ---------------------------------------------------------------------------

/// A permission entry: a subject filter and, for subscriptions, an optional queue filter
/// (`"subject queue"`).
#[derive(Debug, Clone, PartialEq)]
struct Filter {
    subject: Vec<u8>,
    queue: Option<Vec<u8>>,
}

impl Filter {
    fn parse(entry: &str) -> Result<Filter, String> {
        let mut parts = entry.split_whitespace();
        let subject = parts.next().unwrap_or("");
        if !is_valid_subject(subject.as_bytes()) {
            return Err(format!("invalid subject {entry:?} in permissions"));
        }
        let queue = parts.next().map(|q| q.as_bytes().to_vec());
        if parts.next().is_some() {
            return Err(format!("invalid permission entry {entry:?}"));
        }
        Ok(Filter {
            subject: subject.as_bytes().to_vec(),
            queue,
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Rule {
    allow: Option<Vec<Filter>>,
    deny: Vec<Filter>,
}

impl Rule {
    fn new(o: &RuleOptions) -> Result<Rule, String> {
        let list = |v: &[String]| {
            v.iter()
                .map(|e| Filter::parse(e))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Rule {
            allow: o.allow.as_deref().map(list).transpose()?,
            deny: list(&o.deny)?,
        })
    }
}

/// A user's compiled permissions.
#[derive(Debug, Clone, PartialEq)]
pub struct Permissions {
    publish: Option<Rule>,
    subscribe: Option<Rule>,
    responses: Option<ResponsePermission>,
}

fn queue_matches(filter: &Option<Vec<u8>>, queue: Option<&[u8]>) -> bool {
    match (filter, queue) {
        (None, _) => true,
        (Some(f), Some(q)) => f == q || subject_matches(f, q),
        (Some(_), None) => false,
    }
}

impl Permissions {
    pub fn new(o: &PermOptions) -> Result<Permissions, String> {
        // allow_responses without publish rules denies every other publish.
        let deny_all = RuleOptions {
            allow: Some(Vec::new()),
            deny: Vec::new(),
        };
        let publish = match (&o.publish, &o.allow_responses) {
            (None, Some(_)) => Some(&deny_all),
            (p, _) => p.as_ref(),
        };
        Ok(Permissions {
            publish: publish.map(Rule::new).transpose()?,
            subscribe: o.subscribe.as_ref().map(Rule::new).transpose()?,
            responses: o.allow_responses,
        })
    }

    /// Whether received reply subjects must be remembered (`allow_responses`).
    pub fn tracks_replies(&self) -> bool {
        self.responses.is_some()
    }

    /// May this user publish to `subject` (a literal subject)?
    pub fn can_publish(&self, subject: &[u8]) -> bool {
        let Some(r) = &self.publish else {
            return true;
        };
        let allowed = r
            .allow
            .as_ref()
            .is_none_or(|a| a.iter().any(|f| subject_matches(&f.subject, subject)));
        allowed && !r.deny.iter().any(|f| subject_matches(&f.subject, subject))
    }

    /// May this user subscribe to `subject` (wildcards allowed) in `queue`? An allow entry
    /// must cover every subject the subscription can match; a deny entry refuses the ones it
    /// matches. A wildcard subscription that only overlaps a deny entry is allowed, and the
    /// denied subjects are filtered at delivery ([`Permissions::deny_delivery`]).
    pub fn can_subscribe(&self, subject: &[u8], queue: Option<&[u8]>) -> bool {
        let Some(r) = &self.subscribe else {
            return true;
        };
        let allowed = r.allow.as_ref().is_none_or(|a| {
            a.iter()
                .any(|f| subject_is_subset(&f.subject, subject) && queue_matches(&f.queue, queue))
        });
        let denied = r.deny.iter().any(|f| {
            subject_matches(&f.subject, subject)
                && match (&f.queue, queue) {
                    (None, _) => true,
                    (Some(_), None) => false,
                    (Some(_), Some(q)) => queue_matches(&f.queue, Some(q)),
                }
        });
        allowed && !denied
    }

    /// Whether any subscribe deny entries exist (deliveries must then be filtered).
    pub fn has_sub_deny(&self) -> bool {
        self.subscribe.as_ref().is_some_and(|r| !r.deny.is_empty())
    }

    /// Must a message on `subject` be withheld from this user's subscriptions?
    pub fn deny_delivery(&self, subject: &[u8]) -> bool {
        self.subscribe.as_ref().is_some_and(|r| {
            r.deny
                .iter()
                .any(|f| f.queue.is_none() && subject_matches(&f.subject, subject))
        })
    }
}

/// A connection's view of its permissions, with nats-server's small per-connection cache of
/// publish decisions so that the hot path is one hash lookup per new subject.
pub struct ClientPerms {
    pub perms: Arc<Permissions>,
    pub_cache: RefCell<HashMap<Box<[u8]>, bool>>,
    /// `allow_responses`: reply subjects received, with the responses left and the deadline.
    replies: RefCell<HashMap<Box<[u8]>, ReplyAllowance>>,
}

impl ClientPerms {
    pub fn new(perms: Arc<Permissions>) -> ClientPerms {
        ClientPerms {
            perms,
            pub_cache: RefCell::new(HashMap::new()),
            replies: RefCell::new(HashMap::new()),
        }
    }

    /// Remembers a reply subject of a message delivered to this user, which it may then
    /// answer (`allow_responses`).
    pub fn track_reply(&self, reply: &[u8], now: Instant) {
        let Some(rp) = self.perms.responses else {
            return;
        };
        let mut replies = self.replies.borrow_mut();
        if replies.len() >= REPLY_PERMS_PRUNE {
            replies.retain(|_, (_, deadline)| *deadline > now);
        }
        replies.insert(Box::from(reply), (rp.max, now + rp.expires));
    }

    /// May this user publish to `subject` now: by its rules, or as a response it may still
    /// send (which uses it up)?
    pub fn may_publish(&self, subject: &[u8]) -> bool {
        if self.can_publish(subject) {
            return true;
        }
        let mut replies = self.replies.borrow_mut();
        if replies.is_empty() {
            return false;
        }
        let now = Instant::now();
        let Some((left, deadline)) = replies.get_mut(subject) else {
            return false;
        };
        if *deadline <= now {
            replies.remove(subject);
            return false;
        }
        *left = left.saturating_sub(1);
        if *left == 0 {
            replies.remove(subject);
        }
        true
    }

    pub fn can_publish(&self, subject: &[u8]) -> bool {
        if let Some(&ok) = self.pub_cache.borrow().get(subject) {
            return ok;
        }
        let ok = self.perms.can_publish(subject);
        let mut cache = self.pub_cache.borrow_mut();
        if cache.len() >= PERM_CACHE_MAX {
            cache.clear();
        }
        cache.insert(Box::from(subject), ok);
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(allow: Option<&[&str]>, deny: &[&str]) -> Option<RuleOptions> {
        Some(RuleOptions {
            allow: allow.map(|a| a.iter().map(|s| s.to_string()).collect()),
            deny: deny.iter().map(|s| s.to_string()).collect(),
        })
    }

    fn connect(json: &str) -> ConnectOpts {
        ConnectOpts::parse(json.as_bytes()).unwrap()
    }

    fn compile(o: &AuthOptions) -> Result<Option<Auth>, String> {
        Auth::new(o, &Accounts::default())
    }

    fn done(v: Verdict) -> Result<Grant, AuthError> {
        match v {
            Verdict::Done(r) => r,
            Verdict::Bcrypt(p) => p.verify(),
        }
    }

    #[test]
    fn publish_permissions() {
        let p = Permissions::new(&PermOptions {
            publish: rule(Some(&["orders.>", "status"]), &["orders.secret"]),
            subscribe: None,
            allow_responses: None,
        })
        .unwrap();
        assert!(p.can_publish(b"orders.new"));
        assert!(p.can_publish(b"status"));
        assert!(!p.can_publish(b"orders.secret"));
        assert!(!p.can_publish(b"other"));
        let c = ClientPerms::new(Arc::new(p));
        for _ in 0..2 {
            assert!(c.can_publish(b"orders.x") && !c.can_publish(b"nope"));
        }
    }

    #[test]
    fn response_permissions() {
        let p = Permissions::new(&PermOptions {
            allow_responses: Some(ResponsePermission {
                max: 2,
                expires: Duration::from_secs(60),
            }),
            ..Default::default()
        })
        .unwrap();
        let c = ClientPerms::new(Arc::new(p));
        assert!(
            !c.may_publish(b"anything"),
            "allow_responses alone denies publish"
        );
        c.track_reply(b"_INBOX.1", Instant::now());
        c.track_reply(b"_INBOX.2", Instant::now() - Duration::from_secs(61));
        assert!(c.may_publish(b"_INBOX.1") && c.may_publish(b"_INBOX.1"));
        assert!(!c.may_publish(b"_INBOX.1"), "max responses used");
        assert!(!c.may_publish(b"_INBOX.2"), "expired");
    }

    #[test]
    fn subscribe_permissions() {
        let p = Permissions::new(&PermOptions {
            publish: None,
            subscribe: rule(
                Some(&["feed.>", "jobs.* workers"]),
                &["feed.private", "feed.q.x q1"],
            ),
            allow_responses: None,
        })
        .unwrap();
        assert!(p.can_subscribe(b"feed.a", None));
        assert!(p.can_subscribe(b"feed.*", None));
        assert!(p.can_subscribe(b"feed.>", None));
        assert!(!p.can_subscribe(b">", None));
        assert!(!p.can_subscribe(b"feed.private", None));
        // Overlapping a deny entry is allowed; deliveries are filtered.
        assert!(p.can_subscribe(b"feed.*", None));
        assert!(p.deny_delivery(b"feed.private") && !p.deny_delivery(b"feed.a"));
        assert!(p.can_subscribe(b"jobs.run", Some(b"workers")));
        assert!(!p.can_subscribe(b"jobs.run", Some(b"others")));
        assert!(!p.can_subscribe(b"jobs.run", None));
        assert!(!p.can_subscribe(b"feed.q.x", Some(b"q1")));
        assert!(p.can_subscribe(b"feed.q.x", Some(b"q2")));
        assert!(p.can_subscribe(b"feed.q.x", None));
    }

    #[test]
    fn covers_is_subset() {
        assert!(subject_is_subset(b">", b"a.*"));
        assert!(subject_is_subset(b"a.*", b"a.b"));
        assert!(subject_is_subset(b"a.*", b"a.*"));
        assert!(!subject_is_subset(b"a.*", b"a.>"));
        assert!(!subject_is_subset(b"a.b", b"a.*"));
        assert!(subject_is_subset(b"a.>", b"a.b.>"));
        assert!(!subject_is_subset(b"a.b", b"a.b.c"));
    }

    #[test]
    fn users_tokens_and_no_auth_user() {
        let o = AuthOptions {
            users: vec![
                UserOptions {
                    user: Some("alice".into()),
                    password: Some("s3cret".into()),
                    ..Default::default()
                },
                UserOptions {
                    user: Some("bob".into()),
                    // bcrypt of "pw" with cost 4.
                    password: Some(bcrypt::hash("pw", 4).unwrap()),
                    ..Default::default()
                },
            ],
            no_auth_user: Some("alice".into()),
            ..Default::default()
        };
        let a = Auth::new(&o, &Accounts::default()).unwrap().unwrap();
        assert!(a.has_plaintext());
        assert!(done(a.check(&connect(r#"{"user":"alice","pass":"s3cret"}"#), "n")).is_ok());
        assert_eq!(
            done(a.check(&connect(r#"{"user":"alice","pass":"nope"}"#), "n")).err(),
            Some(AuthError::BadCredentials("alice".into()))
        );
        assert!(matches!(
            a.check(&connect(r#"{"user":"bob","pass":"pw"}"#), "n"),
            Verdict::Bcrypt(_)
        ));
        assert!(done(a.check(&connect(r#"{"user":"bob","pass":"pw"}"#), "n")).is_ok());
        assert!(done(a.check(&connect(r#"{"user":"bob","pass":"px"}"#), "n")).is_err());
        assert_eq!(
            done(a.check(&connect(r#"{"user":"carol","pass":"x"}"#), "n")).err(),
            Some(AuthError::UnknownUser("carol".into()))
        );
        // No credentials at all: logged in as no_auth_user.
        assert!(done(a.check(&connect("{}"), "n")).is_ok());
        let e = AuthError::BadCredentials("alice".into()).to_string();
        assert!(!e.contains("s3cret") && !e.contains("nope"));

        let t = compile(&AuthOptions {
            token: Some("tok".into()),
            ..Default::default()
        })
        .unwrap()
        .unwrap();
        assert!(done(t.check(&connect(r#"{"auth_token":"tok"}"#), "n")).is_ok());
        assert!(done(t.check(&connect(r#"{"auth_token":"tik"}"#), "n")).is_err());
        assert!(done(t.check(&connect("{}"), "n")).is_err());

        assert!(compile(&AuthOptions {
            no_auth_user: Some("ghost".into()),
            ..o.clone()
        })
        .is_err());
        assert!(Auth::new(&AuthOptions::default(), &Accounts::default())
            .unwrap()
            .is_none());
    }

    #[test]
    fn nkey_signatures() {
        let kp = nkeys::KeyPair::new_user();
        let a = compile(&AuthOptions {
            users: vec![UserOptions {
                nkey: Some(kp.public_key()),
                ..Default::default()
            }],
            ..Default::default()
        })
        .unwrap()
        .unwrap();
        assert!(a.needs_nonce());
        let nonce = nonce();
        let sig = kp.sign(nonce.as_bytes()).unwrap();
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&sig);
        let c = connect(&format!(
            r#"{{"nkey":"{}","sig":"{b64}"}}"#,
            kp.public_key()
        ));
        assert!(done(a.check(&c, &nonce)).is_ok());
        assert!(done(a.check(&c, "another nonce")).is_err());
        let std = base64::engine::general_purpose::STANDARD.encode(&sig);
        let c = connect(&format!(
            r#"{{"nkey":"{}","sig":"{std}"}}"#,
            kp.public_key()
        ));
        assert!(done(a.check(&c, &nonce)).is_ok());
    }

    #[test]
    fn bcrypt_detection() {
        assert!(is_bcrypt("$2a$11$abcdefghijklmnopqrstuv"));
        assert!(!is_bcrypt("$2z$11$x"));
        assert!(!is_bcrypt("plain"));
    }
}
