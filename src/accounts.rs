//! Accounts (nats-server's `accounts.go`), sans-IO.
//!
//! This module owns the configured accounts: their names and numbers, their stream and
//! service exports, the imports other accounts take from them, and the subject rewriting an
//! import implies (a `prefix`, or a `to` subject whose wildcards take the matched tokens in
//! order). It checks an import against the exporter's exports as nats-server does, with its
//! error texts. It does not deliver anything: `server` keeps one subject index per account and
//! asks [`Account::stream_routes`] and [`Account::service_route`] where a publish also goes.
//!
//! Account 0 is `$G`, where clients of a server without accounts, or users that name none,
//! live. The system account (`$SYS` unless `system_account` names another) always exists,
//! as in nats-server, unless `no_system_account` is set.

use crate::sublist::{is_valid_subject, subject_is_subset, subject_matches};
use std::collections::HashMap;
use std::time::Duration;

/// An account's number: the index of its subject index on every shard.
pub type AccId = u32;
/// The global account, `$G`.
pub const GLOBAL: AccId = 0;
/// The global account's name.
pub const GLOBAL_NAME: &str = "$G";
/// The system account's name when `system_account` names none.
pub const DEFAULT_SYSTEM_ACCOUNT: &str = "$SYS";
/// How long a service import waits for a response before forgetting the request
/// (nats-server's default `response_threshold`).
pub const DEFAULT_RESPONSE_THRESHOLD: Duration = Duration::from_secs(120);

/// Stream or service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Stream,
    Service,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Stream => "stream",
            Kind::Service => "service",
        }
    }
}

/// How many responses a service request may get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ResponseType {
    /// One response, then the reply mapping is gone.
    #[default]
    Singleton,
    /// Any number of responses until the threshold.
    Stream,
    /// Any number of responses (chunks of one) until the threshold.
    Chunked,
}

impl ResponseType {
    /// The name `/accountz` gives it.
    pub fn label(self) -> &'static str {
        match self {
            ResponseType::Singleton => "Singleton",
            ResponseType::Stream => "Streamed",
            ResponseType::Chunked => "Chunked",
        }
    }
}

/// One entry of an account's `exports`.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportOptions {
    pub kind: Kind,
    pub subject: String,
    /// The accounts allowed to import it; empty means every account.
    pub accounts: Vec<String>,
    pub response_type: ResponseType,
    pub response_threshold: Option<Duration>,
}

/// One entry of an account's `imports`.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportOptions {
    pub kind: Kind,
    /// The exporting account.
    pub account: String,
    /// The subject in the exporter's namespace.
    pub subject: String,
    /// Streams: the subject seen here; services: the subject published here.
    pub to: Option<String>,
    /// Streams only: prepended (with a `.`) to the subject.
    pub prefix: Option<String>,
}

/// One entry of `accounts { ... }` (its users go to the authorization setup).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AccountOptions {
    pub name: String,
    pub exports: Vec<ExportOptions>,
    pub imports: Vec<ImportOptions>,
}

/// The accounts part of the configuration.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AccountsOptions {
    pub accounts: Vec<AccountOptions>,
    /// `system_account`: the name of the system account.
    pub system_account: Option<String>,
    /// `no_system_account`: no system account at all.
    pub no_system_account: bool,
}

/// A subject rewrite from a source pattern to a target.
#[derive(Debug, Clone, PartialEq)]
enum Transform {
    Identity,
    /// `prefix.subject`.
    Prefix(Vec<u8>),
    /// The target's tokens: literals, and the source's wildcards in order (`None` for `>`).
    Tokens {
        source: Vec<Vec<u8>>,
        target: Vec<Tok>,
    },
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Lit(Vec<u8>),
    /// The n-th `*` of the source.
    Star(usize),
    /// What the source's `>` matched.
    Tail,
}

impl Transform {
    /// A rewrite from subjects matching `source` to `target`, which must use the same
    /// wildcards (as many `*`, and a `>` only if the source has one).
    fn new(source: &str, target: &str) -> Result<Transform, String> {
        if source == target {
            return Ok(Transform::Identity);
        }
        let src: Vec<Vec<u8>> = source.split('.').map(|t| t.as_bytes().to_vec()).collect();
        let stars = src.iter().filter(|t| t.as_slice() == b"*").count();
        let tail = src.last().is_some_and(|t| t.as_slice() == b">");
        let mut n = 0;
        let mut target_toks = Vec::new();
        for t in target.split('.') {
            target_toks.push(match t {
                "*" => {
                    n += 1;
                    Tok::Star(n - 1)
                }
                ">" => Tok::Tail,
                t => Tok::Lit(t.as_bytes().to_vec()),
            });
        }
        let target_tail = target_toks.last() == Some(&Tok::Tail);
        if n != stars || target_tail != tail {
            return Err(format!(
                "subject {target:?} must use the same wildcards as {source:?}"
            ));
        }
        Ok(Transform::Tokens {
            source: src,
            target: target_toks,
        })
    }

    /// Rewrites `subject`, which matches the source pattern.
    fn apply(&self, subject: &[u8]) -> Vec<u8> {
        match self {
            Transform::Identity => subject.to_vec(),
            Transform::Prefix(p) => {
                let mut v = Vec::with_capacity(p.len() + 1 + subject.len());
                v.extend_from_slice(p);
                v.push(b'.');
                v.extend_from_slice(subject);
                v
            }
            Transform::Tokens { source, target } => {
                let mut stars: Vec<&[u8]> = Vec::new();
                let mut tail: &[u8] = b"";
                let mut rest = subject;
                for s in source {
                    if s.as_slice() == b">" {
                        tail = rest;
                        break;
                    }
                    let (tok, after) = match rest.iter().position(|&b| b == b'.') {
                        Some(i) => (&rest[..i], &rest[i + 1..]),
                        None => (rest, &b""[..]),
                    };
                    if s.as_slice() == b"*" {
                        stars.push(tok);
                    }
                    rest = after;
                }
                let mut out = Vec::with_capacity(subject.len() + 16);
                for (i, t) in target.iter().enumerate() {
                    if i > 0 {
                        out.push(b'.');
                    }
                    match t {
                        Tok::Lit(l) => out.extend_from_slice(l),
                        Tok::Star(n) => {
                            out.extend_from_slice(stars.get(*n).copied().unwrap_or(b""))
                        }
                        Tok::Tail => out.extend_from_slice(tail),
                    }
                }
                out
            }
        }
    }
}

/// A stream another account imports from this one.
#[derive(Debug, Clone)]
pub struct StreamRoute {
    /// The importing account.
    pub to: AccId,
    /// The imported subjects, in this (the exporter's) namespace.
    filter: Vec<u8>,
    map: Transform,
}

/// A service this account imports: publishing to `local` here sends a request there.
#[derive(Debug, Clone)]
pub struct ServiceRoute {
    /// The exporting account.
    pub to: AccId,
    local: Vec<u8>,
    map: Transform,
    pub response: ResponseType,
    pub threshold: Duration,
}

impl StreamRoute {
    /// The imported subjects, in the exporter's namespace.
    pub fn filter(&self) -> &[u8] {
        &self.filter
    }

    /// The subject seen in the importing account, if `subject` is imported.
    pub fn map(&self, subject: &[u8]) -> Option<Vec<u8>> {
        subject_matches(&self.filter, subject).then(|| self.map.apply(subject))
    }
}

impl ServiceRoute {
    /// The subject in the exporter's namespace for a request published to `subject`.
    pub fn map(&self, subject: &[u8]) -> Vec<u8> {
        self.map.apply(subject)
    }
}

/// One compiled account.
#[derive(Debug, Clone)]
pub struct Account {
    pub name: String,
    /// As configured, for `/accountz`.
    pub exports: Vec<ExportOptions>,
    pub imports: Vec<ImportOptions>,
    /// Streams other accounts import from this one.
    stream_out: Vec<StreamRoute>,
    /// Services this account imports.
    service_in: Vec<ServiceRoute>,
    /// Some account imports a service of this one, so responses (to `_R_.` subjects)
    /// published here may have to be carried back.
    pub exports_services: bool,
}

impl Account {
    fn new(name: &str) -> Account {
        Account {
            name: name.to_string(),
            exports: Vec::new(),
            imports: Vec::new(),
            stream_out: Vec::new(),
            service_in: Vec::new(),
            exports_services: false,
        }
    }

    /// The streams other accounts import from this one (empty for most accounts).
    pub fn stream_routes(&self) -> &[StreamRoute] {
        &self.stream_out
    }

    /// The service import a publish to `subject` in this account goes through, if any.
    pub fn service_route(&self, subject: &[u8]) -> Option<&ServiceRoute> {
        if self.service_in.is_empty() {
            return None;
        }
        self.service_in
            .iter()
            .find(|r| r.local == subject)
            .or_else(|| {
                self.service_in
                    .iter()
                    .find(|r| subject_matches(&r.local, subject))
            })
    }
}

/// Every account of a server, numbered.
#[derive(Debug, Clone)]
pub struct Accounts {
    pub list: Vec<Account>,
    names: HashMap<String, AccId>,
    /// The system account, unless `no_system_account`.
    pub system: Option<AccId>,
}

impl Default for Accounts {
    fn default() -> Self {
        Accounts::new(&AccountsOptions::default()).expect("no accounts is a valid setup")
    }
}

impl Accounts {
    /// Compiles the accounts, checking every import against the exporter's exports with
    /// nats-server's error texts.
    pub fn new(o: &AccountsOptions) -> Result<Accounts, String> {
        let mut list = vec![Account::new(GLOBAL_NAME)];
        let mut names = HashMap::from([(GLOBAL_NAME.to_string(), GLOBAL)]);
        for a in &o.accounts {
            if a.name.is_empty() {
                return Err("account name can not be empty".to_string());
            }
            let id = match names.get(&a.name) {
                Some(&id) => id,
                None => {
                    list.push(Account::new(&a.name));
                    names.insert(a.name.clone(), (list.len() - 1) as AccId);
                    (list.len() - 1) as AccId
                }
            };
            for e in &a.exports {
                if !is_valid_subject(e.subject.as_bytes()) {
                    return Err(format!(
                        "Error adding {} export {:?}: subject is not valid",
                        e.kind.name(),
                        e.subject
                    ));
                }
            }
            let acc = &mut list[id as usize];
            acc.exports.extend(a.exports.iter().cloned());
            acc.imports.extend(a.imports.iter().cloned());
        }
        let system = if o.no_system_account {
            None
        } else {
            let name = o
                .system_account
                .clone()
                .unwrap_or_else(|| DEFAULT_SYSTEM_ACCOUNT.to_string());
            // nats-server creates a named system account that no block defines.
            match names.get(&name) {
                Some(&id) => Some(id),
                None => {
                    list.push(Account::new(&name));
                    names.insert(name, (list.len() - 1) as AccId);
                    Some((list.len() - 1) as AccId)
                }
            }
        };
        let mut accounts = Accounts {
            list,
            names,
            system,
        };
        for importer in 0..accounts.list.len() {
            let imports = accounts.list[importer].imports.clone();
            for i in &imports {
                accounts.add_import(importer as AccId, i)?;
            }
        }
        Ok(accounts)
    }

    /// The number of an account by name.
    pub fn id(&self, name: &str) -> Option<AccId> {
        self.names.get(name).copied()
    }

    /// The account numbered `id`.
    pub fn get(&self, id: AccId) -> &Account {
        &self.list[id as usize]
    }

    /// Whether there is more than `$G` (and the system account) to keep apart.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Never true: `$G` always exists.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    fn add_import(&mut self, importer: AccId, i: &ImportOptions) -> Result<(), String> {
        let kind = i.kind.name();
        let Some(exporter) = self.id(&i.account) else {
            return Err(format!(
                "{:?} account not defined for {kind} import",
                i.account
            ));
        };
        if !is_valid_subject(i.subject.as_bytes()) {
            return Err(format!(
                "Error adding {kind} import {:?}: subject is not valid",
                i.subject
            ));
        }
        let importer_name = self.list[importer as usize].name.clone();
        let export = self.list[exporter as usize]
            .exports
            .iter()
            .find(|e| {
                e.kind == i.kind
                    && subject_is_subset(e.subject.as_bytes(), i.subject.as_bytes())
                    && (e.accounts.is_empty() || e.accounts.contains(&importer_name))
            })
            .cloned();
        let Some(export) = export else {
            return Err(format!(
                "Error adding {kind} import {:?}: {kind} import not authorized",
                i.subject
            ));
        };
        match i.kind {
            Kind::Stream => {
                let map = match (&i.prefix, &i.to) {
                    (Some(p), _) => Transform::Prefix(p.as_bytes().to_vec()),
                    (None, Some(to)) => Transform::new(&i.subject, to)?,
                    (None, None) => Transform::Identity,
                };
                self.list[exporter as usize].stream_out.push(StreamRoute {
                    to: importer,
                    filter: i.subject.as_bytes().to_vec(),
                    map,
                });
            }
            Kind::Service => {
                let local = i.to.clone().unwrap_or_else(|| i.subject.clone());
                if !is_valid_subject(local.as_bytes()) {
                    return Err(format!(
                        "Error adding service import {local:?}: subject is not valid"
                    ));
                }
                let acc = &self.list[importer as usize];
                if let Some(prev) = acc.service_in.iter().find(|r| r.local == local.as_bytes()) {
                    let prev_import = acc
                        .imports
                        .iter()
                        .find(|p| {
                            p.kind == Kind::Service
                                && p.to.as_deref().unwrap_or(&p.subject) == local
                        })
                        .map_or(String::new(), |p| p.subject.clone());
                    return Err(format!(
                        "Duplicate service import subject {local:?}, previously used in import for account {:?}, subject {prev_import:?}",
                        self.list[prev.to as usize].name
                    ));
                }
                let route = ServiceRoute {
                    to: exporter,
                    map: Transform::new(&local, &i.subject).map_err(|_| {
                        format!(
                            "Error adding service import {:?}: failed to create mapping transform for service import subject {local:?} to {:?}: invalid subject",
                            i.subject, i.subject
                        )
                    })?,
                    local: local.into_bytes(),
                    response: export.response_type,
                    threshold: export
                        .response_threshold
                        .unwrap_or(DEFAULT_RESPONSE_THRESHOLD),
                };
                self.list[importer as usize].service_in.push(route);
                self.list[exporter as usize].exports_services = true;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn export(kind: Kind, subject: &str, accounts: &[&str]) -> ExportOptions {
        ExportOptions {
            kind,
            subject: subject.to_string(),
            accounts: accounts.iter().map(|s| s.to_string()).collect(),
            response_type: ResponseType::Singleton,
            response_threshold: None,
        }
    }

    fn import(kind: Kind, account: &str, subject: &str, to: Option<&str>) -> ImportOptions {
        ImportOptions {
            kind,
            account: account.to_string(),
            subject: subject.to_string(),
            to: to.map(str::to_string),
            prefix: None,
        }
    }

    fn setup(a: AccountOptions, b: AccountOptions) -> Result<Accounts, String> {
        Accounts::new(&AccountsOptions {
            accounts: vec![a, b],
            ..Default::default()
        })
    }

    fn exporter(exports: Vec<ExportOptions>) -> AccountOptions {
        AccountOptions {
            name: "A".into(),
            exports,
            imports: vec![],
        }
    }

    fn importer(imports: Vec<ImportOptions>) -> AccountOptions {
        AccountOptions {
            name: "B".into(),
            exports: vec![],
            imports,
        }
    }

    #[test]
    fn global_and_system_accounts_always_exist() {
        let a = Accounts::default();
        assert_eq!(a.id("$G"), Some(GLOBAL));
        assert_eq!(a.system, a.id("$SYS"));
        assert!(a.system.is_some());
        let none = Accounts::new(&AccountsOptions {
            no_system_account: true,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(none.len(), 1);
        let named = Accounts::new(&AccountsOptions {
            system_account: Some("SYS".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(named.system, named.id("SYS"));
        assert_eq!(named.id("$SYS"), None);
    }

    #[test]
    fn stream_import_with_prefix_and_to() {
        let mut i = import(Kind::Stream, "A", "news.>", None);
        i.prefix = Some("an".into());
        let a = setup(
            exporter(vec![export(Kind::Stream, "news.>", &[])]),
            importer(vec![
                i,
                import(Kind::Stream, "A", "news.*.x", Some("local.*.y")),
            ]),
        )
        .unwrap();
        let routes = a.get(a.id("A").unwrap()).stream_routes();
        assert_eq!(routes.len(), 2);
        assert_eq!(routes[0].to, a.id("B").unwrap());
        assert_eq!(routes[0].map(b"news.sports").unwrap(), b"an.news.sports");
        assert_eq!(routes[0].map(b"other"), None);
        assert_eq!(routes[1].map(b"news.q.x").unwrap(), b"local.q.y");
        assert_eq!(routes[1].map(b"news.q.z"), None);
    }

    #[test]
    fn imports_must_be_exported_to_the_importer() {
        let e = setup(
            exporter(vec![export(Kind::Stream, "priv.>", &["C"])]),
            importer(vec![import(Kind::Stream, "A", "priv.>", None)]),
        )
        .unwrap_err();
        assert_eq!(
            e,
            "Error adding stream import \"priv.>\": stream import not authorized"
        );
        let e = setup(
            exporter(vec![export(Kind::Stream, "x.>", &[])]),
            importer(vec![import(Kind::Stream, "A", "y.>", None)]),
        )
        .unwrap_err();
        assert!(e.contains("not authorized"), "{e}");
        let e = setup(
            exporter(vec![export(Kind::Stream, "x.>", &[])]),
            importer(vec![import(Kind::Service, "A", "x.y", None)]),
        )
        .unwrap_err();
        assert_eq!(
            e,
            "Error adding service import \"x.y\": service import not authorized"
        );
        let e = setup(
            exporter(vec![]),
            importer(vec![import(Kind::Stream, "Z", "x", None)]),
        )
        .unwrap_err();
        assert_eq!(e, "\"Z\" account not defined for stream import");
    }

    #[test]
    fn service_import_maps_the_local_subject() {
        let a = setup(
            exporter(vec![export(Kind::Service, "svc.*", &[])]),
            importer(vec![
                import(Kind::Service, "A", "svc.echo", Some("echo")),
                import(Kind::Service, "A", "svc.*", Some("s.*")),
            ]),
        )
        .unwrap();
        assert!(a.get(a.id("A").unwrap()).exports_services);
        let b = a.get(a.id("B").unwrap());
        let r = b.service_route(b"echo").unwrap();
        assert_eq!(r.to, a.id("A").unwrap());
        assert_eq!(r.map(b"echo"), b"svc.echo");
        assert_eq!(
            b.service_route(b"s.time").unwrap().map(b"s.time"),
            b"svc.time"
        );
        assert!(b.service_route(b"svc.echo").is_none());
    }

    #[test]
    fn duplicate_service_import_subject_is_refused() {
        let e = setup(
            exporter(vec![export(Kind::Service, "s.*", &[])]),
            importer(vec![
                import(Kind::Service, "A", "s.x", Some("t")),
                import(Kind::Service, "A", "s.y", Some("t")),
            ]),
        )
        .unwrap_err();
        assert_eq!(
            e,
            "Duplicate service import subject \"t\", previously used in import for account \"A\", subject \"s.x\""
        );
    }

    #[test]
    fn transforms_need_matching_wildcards() {
        assert!(Transform::new("a.*", "b.>").is_err());
        assert!(Transform::new("a.*.*", "b.*").is_err());
        let t = Transform::new("a.*.>", "b.*.c.>").unwrap();
        assert_eq!(t.apply(b"a.1.2.3"), b"b.1.c.2.3");
    }
}
